//! `irsa-secrets probe`: what would a build get? Asks a running helper over its socket.

use std::process::ExitCode;

use clap::Args;

use crate::client;

/// Flags of `probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The helper's socket: unix:///PATH.
    #[arg(long, env = "IRSA_SECRETS_LISTEN", value_name = "unix:///PATH")]
    pub socket: String,

    /// Secret ids to ask for.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
}

pub(super) async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let path = crate::socket::parse_unix_address(&args.socket).map_err(anyhow::Error::msg)?;
    let mut secrets = client::secrets(&path).await?;
    let mut failed = false;
    for id in &args.ids {
        match client::get_secret(&mut secrets, id).await {
            Ok(value) => println!(
                "{id}: {} bytes, sha256 {}",
                value.len(),
                client::fingerprint(&value)
            ),
            Err(status) => {
                failed = true;
                println!("{id}: {:?}: {}", status.code(), status.message());
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
