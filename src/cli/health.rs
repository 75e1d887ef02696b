//! `irsa-secrets health`: the liveness check for the container image's `HEALTHCHECK` and for
//! Kubernetes exec probes, run by the binary itself because the image has no shell or curl.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// Flags of `health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The helper's socket: unix:///PATH.
    #[arg(long, env = "IRSA_SECRETS_LISTEN", value_name = "unix:///PATH")]
    pub socket: String,

    /// Give up after this long (e.g. 3s).
    #[arg(long, default_value = "3s", value_parser = crate::bound::duration)]
    pub timeout: Duration,
}

/// Healthy means the helper's socket accepts a connection: the process is up and listening.
/// It says nothing about the daemon behind it, so a daemon restart does not restart the helper.
pub(super) async fn run(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let path =
        crate::front::socket::parse_unix_address(&args.socket).map_err(anyhow::Error::msg)?;
    match tokio::time::timeout(args.timeout, tokio::net::UnixStream::connect(&path)).await {
        Ok(Ok(_)) => {
            println!("ok: {} accepts connections", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(e)) => anyhow::bail!(
            "{} does not accept connections: {e}; is the helper running with --listen unix://{}?",
            path.display(),
            path.display()
        ),
        Err(_) => anyhow::bail!(
            "{} did not accept a connection within {}",
            path.display(),
            humantime::format_duration(args.timeout)
        ),
    }
}
