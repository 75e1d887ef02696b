//! `irsa-secrets probe`: what would a build get? Asks a running helper (`proxy` or `serve`) over
//! its socket; on a `proxy` listener the answer follows that listener's policy and is audited as
//! a build's would be.

use std::process::ExitCode;

use clap::Args;

use crate::wire::client;

/// Flags of `probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The helper's socket (a `proxy` listener or `serve`): unix:///PATH.
    #[arg(long, env = "IRSA_SECRETS_LISTEN", value_name = "unix:///PATH")]
    pub socket: String,

    /// Secret ids to ask for.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
}

pub(super) async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let path =
        crate::front::socket::parse_unix_address(&args.socket).map_err(anyhow::Error::msg)?;
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
                match std::error::Error::source(&status) {
                    // Made on this side (the peer sent no status): the transport says only
                    // "transport error" or "operation was canceled"; say who broke off.
                    Some(cause) => println!(
                        "{id}: {} gave no gRPC answer: {}; is it the helper's socket?",
                        path.display(),
                        crate::wire::h2::chain(cause)
                    ),
                    _ => println!("{id}: {:?}: {}", status.code(), status.message()),
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
