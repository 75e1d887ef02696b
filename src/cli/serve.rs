//! `irsa-secrets serve`.

use std::process::ExitCode;

use clap::Args;

use super::signals::Signals;
use super::{RuntimeArgs, ServedArgs};
use crate::front::limits::DEFAULT_SHUTDOWN_TIMEOUT;
use crate::front::socket::{self, SocketOptions};
use crate::provider::Provider;

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Socket to listen on: unix:///PATH.
    #[arg(long, env = "IRSA_SECRETS_LISTEN", value_name = "unix:///PATH")]
    pub listen: String,

    #[command(flatten)]
    pub socket: SocketArgs,

    #[command(flatten)]
    pub served: ServedArgs,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Who may connect to the helper's socket.
#[derive(Debug, Clone, Args)]
pub struct SocketArgs {
    /// The socket's file mode, in octal. Whoever can connect can read every secret served.
    #[arg(long, default_value = "600", value_parser = parse_mode, env = "IRSA_SECRETS_SOCKET_MODE")]
    pub socket_mode: u32,

    /// Group (name or gid) to own the socket, for a mode such as 660.
    #[arg(long, env = "IRSA_SECRETS_SOCKET_GROUP")]
    pub socket_group: Option<String>,
}

impl SocketArgs {
    /// The options for [`socket::bind`].
    pub fn options(&self) -> SocketOptions {
        SocketOptions {
            mode: self.socket_mode,
            group: self.socket_group.clone(),
        }
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 600 or 660"))
}

pub(super) async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let signals = Signals::install()?;
    let serving = args.served.asked().serving()?;
    let aws = args.served.own_aws(&serving)?;
    let provider = Provider::new(args.served.sources(&serving, aws.as_ref())?);
    let path = socket::parse_unix_address(&args.listen).map_err(anyhow::Error::msg)?;
    let bound = socket::bind(&path, &args.socket.options(), DEFAULT_SHUTDOWN_TIMEOUT)
        .await
        .map_err(anyhow::Error::msg)?;
    crate::front::secrets::run(provider, bound, signals.stopped(None)).await?;
    Ok(ExitCode::SUCCESS)
}
