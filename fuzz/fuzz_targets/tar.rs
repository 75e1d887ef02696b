//! The tar reader of `scan`: extension headers (GNU long names, PAX) applied within bounds,
//! paths that climb out refused, every error worded without the archive's bytes.
#![no_main]

use std::io::Read;

use irsa_secrets::scan::tarx;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (watched, seen) = tarx::watch(data);
    let mut archive = tar::Archive::new(watched);
    let Ok(entries) = archive.entries() else {
        return;
    };
    let result = tarx::for_each(entries.raw(true), &seen, "fuzz", 64 << 10, |meta, _, entry| {
        let _ = (meta.path.len(), meta.link.as_ref().map(Vec::len), meta.size);
        let _ = meta.pax_values.iter().map(Vec::len).sum::<usize>();
        let mut sink = Vec::new();
        let _ = entry.take(1 << 20).read_to_end(&mut sink);
        Ok(())
    });
    if let Err(e) = result {
        let _ = e.to_string();
    }
});
