//! The front doors: accept build clients on the helper's socket, connect them to the daemon,
//! and put every build session through the splice.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::audit::{Caller, Peer};
use crate::provider::Provider;
use crate::session::SessionInfo;
use sniff::Protocol;

pub use daemon::{Daemon, Upstream, UpstreamKind};

pub mod daemon;
pub mod docker;
pub mod grpc;
pub mod sniff;
pub mod tls;

/// How long in-flight connections may run after a shutdown signal before they are cut.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream to or from a peer (unix or TCP).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Who may use a listener, and how much: peer credential allowlists (`SO_PEERCRED`) and a
/// ceiling on concurrent sessions.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    allow_uids: Vec<u32>,
    allow_gids: Vec<u32>,
    sessions: Option<(usize, Arc<tokio::sync::Semaphore>)>,
}

impl Gate {
    /// Admits peers whose uid is in `uids` or whose gid is in `gids` (everyone when both are
    /// empty), and at most `max_sessions` sessions at once.
    pub fn new(uids: Vec<u32>, gids: Vec<u32>, max_sessions: Option<usize>) -> Self {
        Self {
            allow_uids: uids,
            allow_gids: gids,
            sessions: max_sessions.map(|n| (n, Arc::new(tokio::sync::Semaphore::new(n)))),
        }
    }

    /// Checks a connecting peer against the allowlists.
    pub fn admits(&self, peer: Option<Peer>) -> Result<(), String> {
        if self.allow_uids.is_empty() && self.allow_gids.is_empty() {
            return Ok(());
        }
        match peer {
            Some(p) if self.allow_uids.contains(&p.uid) || self.allow_gids.contains(&p.gid) => Ok(()),
            Some(p) => Err(format!(
                "irsa-secrets: uid {} gid {} may not use this socket; ask for your uid or gid in the listener's --allow-uid/--allow-gid (allow_uid/allow_gid in the config file)",
                p.uid, p.gid
            )),
            None => Err("irsa-secrets: the peer's credentials are unknown and this socket has an allowlist".into()),
        }
    }

    /// A place for one more session, held until the returned permit is dropped.
    pub fn session(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, String> {
        let Some((max, sem)) = &self.sessions else {
            return Ok(None);
        };
        Arc::clone(sem).try_acquire_owned().map(Some).map_err(|_| {
            // The docker CLI shows only the first 24 bytes of a refused session upgrade's body
            // ("bogus greeting"), so the reason comes first.
            format!("max_sessions {max} full: irsa-secrets refused this build session; retry when one ends")
        })
    }
}

/// What a front door needs to know about the connection it serves.
#[derive(Debug, Clone)]
pub struct Context {
    /// The listener's secrets, policy and observers.
    pub provider: Provider,
    /// The listener's admission rules.
    pub gate: Gate,
    /// The connecting process.
    pub peer: Option<Peer>,
}

impl Context {
    /// A context with no admission rules and no known peer (in-process use, tests).
    pub fn new(provider: Provider) -> Self {
        Self {
            provider,
            gate: Gate::default(),
            peer: None,
        }
    }

    /// Admits a new session or says why not; the permit must live as long as the session.
    pub fn admit_session(
        &self,
        info: &SessionInfo,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, String> {
        self.gate.session().inspect_err(|why| {
            tracing::warn!(listener = self.provider.listener(), session = %info.id, "{why}");
            self.provider
                .audit()
                .connection_denied(self.provider.listener(), &info.caller(), why);
        })
    }
}

/// Accepts clients on `listener` until `shutdown` resolves; then waits up to ten seconds for
/// open connections before cutting them.
pub async fn run(
    listener: UnixListener,
    daemon: Daemon,
    provider: Provider,
    gate: Gate,
    shutdown: impl Future<Output = ()>,
) {
    let daemon = Arc::new(daemon);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let peer = Peer::of(&stream);
                    let ctx = Context { provider: provider.clone(), gate: gate.clone(), peer };
                    connections.spawn(serve_client(stream, Arc::clone(&daemon), ctx));
                }
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(open = connections.len(), "draining connections");
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "cutting connections still open after the drain timeout"
        );
        connections.shutdown().await;
    }
}

/// One client: HTTP/2 clients get the BuildKit API (and probes their answer, with the daemon up
/// or down), HTTP/1.1 clients the Docker API.
async fn serve_client(stream: UnixStream, daemon: Arc<Daemon>, ctx: Context) {
    let (protocol, stream) = match sniff::sniff(stream).await {
        Ok(pair) => pair,
        Err(e) => return tracing::debug!(error = %e, "client dropped before its first request"),
    };
    if let Err(why) = ctx.gate.admits(ctx.peer) {
        let listener = ctx.provider.listener();
        tracing::warn!(listener, peer = ?ctx.peer, "connection refused: {why}");
        let caller = Caller {
            session: None,
            peer: ctx.peer,
            probe: false,
        };
        ctx.provider
            .audit()
            .connection_denied(listener, &caller, &why);
        return match protocol {
            Protocol::Http2 => grpc::refuse(stream, tonic::Status::permission_denied(why)).await,
            Protocol::Http1 => docker::refuse(stream, http::StatusCode::FORBIDDEN, why).await,
        };
    }
    match protocol {
        Protocol::Http2 => match daemon.connect_grpc().await {
            Ok(upstream) => grpc::serve(stream, upstream, ctx).await,
            Err(e) => {
                let message = format!(
                    "irsa-secrets: the daemon at {} is unreachable: {e}; check that it is running \
                     and that --upstream points at it",
                    daemon.upstream
                );
                tracing::warn!(upstream = %daemon.upstream, error = %e, "daemon unreachable");
                ctx.provider
                    .metrics()
                    .upstream_error(ctx.provider.listener());
                let status = tonic::Status::unavailable(message);
                grpc::serve_without_daemon(stream, status, ctx).await
            }
        },
        Protocol::Http1 => {
            if matches!(daemon.kind().await, Ok(UpstreamKind::Buildkit)) {
                let message = format!(
                    "irsa-secrets fronts buildkitd at {}: point buildctl --addr or the buildx remote \
                     driver at this socket; DOCKER_HOST needs a helper in front of dockerd",
                    daemon.upstream
                );
                return docker::refuse(stream, http::StatusCode::BAD_GATEWAY, message).await;
            }
            docker::serve_connection(stream, daemon, ctx).await
        }
    }
}
