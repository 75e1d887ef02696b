//! `irsa-secrets proxy`.

use std::process::ExitCode;

use clap::Args;

use super::serve::SocketArgs;
use super::IdentityArgs;
use crate::provider::Provider;
use crate::proxy::Upstream;
use crate::socket;

/// Flags of `proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Socket to listen on; point DOCKER_HOST at it: unix:///PATH.
    #[arg(long, env = "IRSA_SECRETS_LISTEN", value_name = "unix:///PATH")]
    pub listen: String,

    /// The Docker daemon to forward to.
    #[arg(
        long,
        default_value = "unix:///var/run/docker.sock",
        env = "IRSA_SECRETS_UPSTREAM",
        value_name = "unix:///PATH|tcp://HOST:PORT"
    )]
    pub upstream: Upstream,

    #[command(flatten)]
    pub socket: SocketArgs,

    #[command(flatten)]
    pub identity: IdentityArgs,
}

pub(super) async fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let provider = Provider::new(args.identity.sources()?);
    let path = socket::parse_unix_address(&args.listen).map_err(anyhow::Error::msg)?;
    let bound = socket::bind(&path, &args.socket.options()).map_err(anyhow::Error::msg)?;
    tracing::info!(
        socket = %bound.file.path().display(),
        upstream = %args.upstream,
        ids = ?provider.ids(),
        "proxying; point DOCKER_HOST at unix://{}",
        bound.file.path().display()
    );
    crate::proxy::run(
        bound.listener,
        args.upstream,
        provider,
        crate::serve::shutdown_signal(),
    )
    .await;
    drop(bound.file);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
