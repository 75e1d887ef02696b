//! `irsa-secrets proxy`.

use std::process::ExitCode;

use clap::Args;

use super::serve::SocketArgs;
use super::IdentityArgs;
use crate::provider::Provider;
use crate::proxy::tls::TlsArgs;
use crate::proxy::{Daemon, Upstream, UpstreamKind};
use crate::socket;

/// Flags of `proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Socket to listen on; point DOCKER_HOST, buildctl --addr or the buildx remote driver at it.
    #[arg(long, env = "IRSA_SECRETS_LISTEN", value_name = "unix:///PATH")]
    pub listen: String,

    /// The daemon to forward to: dockerd (e.g. unix:///var/run/docker.sock) or buildkitd
    /// (e.g. unix:///run/buildkit/buildkitd.sock).
    #[arg(
        long,
        default_value = "unix:///var/run/docker.sock",
        env = "IRSA_SECRETS_UPSTREAM",
        value_name = "unix:///PATH|tcp://HOST:PORT"
    )]
    pub upstream: Upstream,

    /// What the upstream is; auto asks it (GET /_ping).
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "IRSA_SECRETS_UPSTREAM_KIND"
    )]
    pub upstream_kind: UpstreamKind,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub socket: SocketArgs,

    #[command(flatten)]
    pub identity: IdentityArgs,
}

pub(super) async fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let provider = Provider::new(args.identity.sources()?);
    let tls = args
        .tls
        .load(args.upstream.host())
        .map_err(anyhow::Error::msg)?;
    let path = socket::parse_unix_address(&args.listen).map_err(anyhow::Error::msg)?;
    let bound = socket::bind(&path, &args.socket.options()).map_err(anyhow::Error::msg)?;
    tracing::info!(
        socket = %bound.file.path().display(),
        upstream = %args.upstream,
        ids = ?provider.ids(),
        "proxying: point DOCKER_HOST, buildctl --addr or the buildx remote driver at unix://{}",
        bound.file.path().display()
    );
    let daemon = Daemon::new(args.upstream, tls, args.upstream_kind);
    crate::proxy::run(
        bound.listener,
        daemon,
        provider,
        crate::serve::shutdown_signal(),
    )
    .await;
    drop(bound.file);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
