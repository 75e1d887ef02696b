//! The `--secret` parser (buildx's CSV syntax): any text parses or is refused with a message.
#![no_main]

use irsa_secrets::source::static_secret::{SecretSpec, Static};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Several declarations, one a line, as the flag may repeat.
    let specs: Vec<SecretSpec> = text.lines().filter_map(|l| l.parse().ok()).collect();
    let _ = Static::new(specs);
});
