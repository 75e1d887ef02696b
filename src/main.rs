//! The `irsa-secrets` binary: parse, set up logging, run, exit. All logic lives in the library.

use std::process::ExitCode;

use clap::Parser;
use irsa_secrets::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    irsa_secrets::logging::init(cli.log_format);
    match cli.run().await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
