//! The front doors: accept build clients on the helper's socket, connect them to the daemon,
//! and put every build session through the splice.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::audit::{Caller, Peer};
use crate::provider::Provider;
use crate::session::SessionInfo;
use sniff::Protocol;
use tls::{Alpn, Tls};

pub mod docker;
pub mod grpc;
pub mod sniff;
pub mod tls;

/// How long in-flight connections may run after a shutdown signal before they are cut.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream to or from a peer (unix or TCP).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A unix socket, e.g. `/var/run/docker.sock`.
    Unix(PathBuf),
    /// A TCP address, `HOST:PORT`.
    Tcp(String),
}

impl std::str::FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') {
                return Ok(Upstream::Unix(path.into()));
            }
        } else if let Some(addr) = s.strip_prefix("tcp://") {
            if addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            {
                return Ok(Upstream::Tcp(addr.trim_end_matches('/').to_string()));
            }
        }
        Err(format!(
            "upstream {s:?} is not unix:///PATH or tcp://HOST:PORT, e.g. unix:///var/run/docker.sock"
        ))
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Unix(p) => write!(f, "unix://{}", p.display()),
            Upstream::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

impl Upstream {
    /// The host part of a TCP address (the default TLS server name).
    pub fn host(&self) -> Option<&str> {
        match self {
            Upstream::Unix(_) => None,
            Upstream::Tcp(addr) => addr
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']')),
        }
    }

    /// Opens a new plain connection to the daemon.
    pub async fn connect(&self) -> std::io::Result<Box<dyn Io>> {
        Ok(match self {
            Upstream::Unix(path) => Box::new(UnixStream::connect(path).await?),
            Upstream::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
        })
    }
}

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

/// What kind of daemon the upstream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamKind {
    /// Find out by asking `GET /_ping` (dockerd answers it; buildkitd speaks only HTTP/2).
    Auto,
    /// The Docker Engine API (dockerd, Docker-in-Docker).
    Docker,
    /// BuildKit's gRPC API (buildkitd).
    Buildkit,
}

/// The daemon behind the helper, with its kind found out once.
#[derive(Debug)]
pub struct Daemon {
    /// Where it listens.
    pub upstream: Upstream,
    tls: Option<Tls>,
    kind: tokio::sync::OnceCell<UpstreamKind>,
}

impl Daemon {
    /// A daemon at `upstream`, reached over `tls` if given; with [`UpstreamKind::Auto`] the
    /// kind is detected on first use.
    pub fn new(upstream: Upstream, tls: Option<Tls>, kind: UpstreamKind) -> Self {
        let cell = tokio::sync::OnceCell::new();
        if kind != UpstreamKind::Auto {
            let _ = cell.set(kind);
        }
        Self {
            upstream,
            tls,
            kind: cell,
        }
    }

    /// The daemon's kind; detection is retried until the daemon answers.
    pub async fn kind(&self) -> std::io::Result<UpstreamKind> {
        self.kind
            .get_or_try_init(|| async {
                let kind = self.detect().await?;
                tracing::info!(upstream = %self.upstream, ?kind, "upstream detected");
                Ok(kind)
            })
            .await
            .copied()
    }

    /// Opens a connection, with TLS when configured, asking for `alpn`.
    async fn dial(&self, alpn: Alpn) -> std::io::Result<(Box<dyn Io>, Option<Vec<u8>>)> {
        let io = self.upstream.connect().await?;
        match &self.tls {
            Some(tls) => tls.connect(io, alpn).await,
            None => Ok((io, None)),
        }
    }

    /// A connection for the Docker Engine API (HTTP/1.1).
    pub async fn connect_http1(&self) -> std::io::Result<Box<dyn Io>> {
        Ok(self.dial(Alpn::Http1).await?.0)
    }

    /// A connection that speaks BuildKit's HTTP/2 API: the socket itself for buildkitd, a
    /// `POST /grpc` upgrade for dockerd.
    pub async fn connect_grpc(&self) -> Result<Box<dyn Io>, String> {
        let kind = self.kind().await.map_err(|e| e.to_string())?;
        if kind == UpstreamKind::Docker {
            let io = self.connect_http1().await.map_err(|e| e.to_string())?;
            return docker::upgrade(io, "/grpc").await;
        }
        Ok(self.dial(Alpn::Http2).await.map_err(|e| e.to_string())?.0)
    }

    /// Over TLS, a server that picks `h2` is buildkitd. Otherwise asks `GET /_ping` over
    /// HTTP/1.1: an HTTP answer means dockerd; buildkitd's gRPC server closes the connection
    /// or answers with an HTTP/2 frame.
    async fn detect(&self) -> std::io::Result<UpstreamKind> {
        let (io, alpn) = self.dial(Alpn::Either).await?;
        if alpn.as_deref() == Some(b"h2") {
            return Ok(UpstreamKind::Buildkit);
        }
        ping(io).await
    }
}

async fn ping(mut io: Box<dyn Io>) -> std::io::Result<UpstreamKind> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        .await?;
    let mut head = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut head))
        .await
        .unwrap_or(Ok(0))?;
    Ok(if head[..n].starts_with(b"HTTP/1.") {
        UpstreamKind::Docker
    } else {
        UpstreamKind::Buildkit
    })
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
