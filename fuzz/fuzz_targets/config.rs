//! The `--config` parser: any file turns into flags or a located, worded error, with the
//! schema of the real `proxy` command.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use clap::CommandFactory;
use irsa_secrets::cli::config::Schema;
use libfuzzer_sys::fuzz_target;

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let proxy = irsa_secrets::cli::Cli::command()
            .find_subcommand("proxy")
            .expect("a proxy command")
            .clone();
        Schema::new(proxy.clone(), proxy)
    })
}

fuzz_target!(|data: &[u8]| {
    // The parser reads a file: one per process, rewritten for each input.
    static FILE: OnceLock<std::path::PathBuf> = OnceLock::new();
    let path = FILE.get_or_init(|| {
        std::env::temp_dir().join(format!(
            "irsa-secrets-fuzz-config-{}.toml",
            std::process::id()
        ))
    });
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    drop(f);
    if let Err(e) = schema().load(path) {
        let _ = e.to_string();
    }
});
