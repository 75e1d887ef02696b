//! The daemon behind the helper: where it listens, what kind it is, and how to dial it. Every
//! step of reaching it has a deadline, and a failure names the daemon that did not answer.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{Request, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::Io;
use crate::wire::tls::{Alpn, Tls};

/// An `--upstream` that is no daemon address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream {0:?} is not unix:///PATH or tcp://HOST:PORT, e.g. unix:///var/run/docker.sock")]
pub struct BadUpstream(pub String);

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A unix socket, e.g. `/var/run/docker.sock`.
    Unix(PathBuf),
    /// A TCP address, `HOST:PORT`.
    Tcp(String),
}

impl std::str::FromStr for Upstream {
    type Err = BadUpstream;

    fn from_str(s: &str) -> Result<Self, BadUpstream> {
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
        Err(BadUpstream(s.to_string()))
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

    /// Opens a new plain connection to the daemon, or fails with `TimedOut` after
    /// [`DIAL_TIMEOUT`] (a blackholed TCP address would otherwise hold the caller for the
    /// operating system's connect timeout, minutes).
    pub async fn connect(&self) -> std::io::Result<Box<dyn Io>> {
        let connect = async {
            Ok::<Box<dyn Io>, std::io::Error>(match self {
                Upstream::Unix(path) => Box::new(UnixStream::connect(path).await?),
                Upstream::Tcp(addr) => {
                    let stream = TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    Box::new(stream)
                }
            })
        };
        tokio::time::timeout(DIAL_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {}", seconds(DIAL_TIMEOUT)),
                ))
            })
    }

    /// Readiness of the daemon: why a connection to it fails now, if it does.
    pub async fn unreachable(&self) -> Option<String> {
        let e = self.connect().await.err()?;
        Some(format!("the daemon at {self} is unreachable: {e}"))
    }

    /// Says at start-up, in one line, when the daemon does not answer: otherwise the first
    /// sign would be a failed build. Not fatal, since a sidecar and its daemon start together.
    pub async fn warn_if_silent(self, listener: String) {
        let why = match tokio::time::timeout(STARTUP_CHECK, self.connect()).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => match &self {
                Upstream::Unix(path) => match std::fs::metadata(path) {
                    Ok(meta) if !meta.file_type().is_socket() => {
                        format!("{} is not a socket", path.display())
                    }
                    Ok(_) => format!("nobody listens on the socket: {e}"),
                    Err(_) => format!("nothing at {}", path.display()),
                },
                Upstream::Tcp(_) => e.to_string(),
            },
            Err(_) => format!("no connection within {}", seconds(STARTUP_CHECK)),
        };
        tracing::warn!(
            listener,
            upstream = %self,
            "the daemon at {self} does not answer yet ({why}); builds through this listener fail \
             until it does. Still serving: check --upstream and that dockerd or buildkitd runs and \
             listens there"
        );
    }
}

/// How long the start-up check waits for the daemon.
const STARTUP_CHECK: Duration = Duration::from_secs(3);

/// How long each step of reaching the daemon may take: the connection, the TLS handshake,
/// and dockerd's `POST /grpc` upgrade.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long kind detection waits for the answer to `GET /_ping`.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon could not be reached, or did not answer in time.
#[derive(Debug, thiserror::Error)]
#[error("the daemon at {upstream} {failure}")]
pub struct DaemonError {
    /// Which daemon.
    pub upstream: Upstream,
    /// What went wrong.
    pub failure: DialFailure,
}

/// What went wrong in reaching a daemon.
#[derive(Debug, thiserror::Error)]
pub enum DialFailure {
    /// No connection within [`DIAL_TIMEOUT`].
    #[error("did not accept a connection within {}", seconds(*.0))]
    ConnectTimeout(Duration),
    /// The connection failed (nobody listens, refused, unreachable).
    #[error("cannot be reached: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake did not finish within [`DIAL_TIMEOUT`].
    #[error("did not finish the TLS handshake within {}", seconds(*.0))]
    TlsTimeout(Duration),
    /// The TLS handshake failed.
    #[error("failed the TLS handshake: {0}")]
    Tls(std::io::Error),
    /// dockerd did not answer an upgrade within [`DIAL_TIMEOUT`].
    #[error("did not answer POST {path} within {}", seconds(*.timeout))]
    UpgradeTimeout {
        /// The upgrade's path.
        path: &'static str,
        /// The deadline.
        timeout: Duration,
    },
    /// dockerd refused an upgrade.
    #[error("refused POST {0}: {1}")]
    Upgrade(&'static str, UpgradeError),
    /// The connection broke before an answer came back.
    #[error("did not answer: {0}")]
    Exchange(hyper::Error),
    /// Kind detection got no definite answer; asked again on the next connection.
    #[error(
        "gave no answer to GET /_ping that tells dockerd from buildkitd ({0}); asked again on \
         the next connection"
    )]
    Undetected(Undetected),
}

/// Why `GET /_ping` told nothing definite about the daemon's kind.
#[derive(Debug, thiserror::Error)]
pub enum Undetected {
    /// The request could not be written.
    #[error("cannot send it: {0}")]
    Send(std::io::Error),
    /// The stream ended in the middle of `HTTP/1.` (how many bytes came).
    #[error("the connection closed after {0} bytes of a status line")]
    Truncated(usize),
    /// Reading the answer failed.
    #[error("{0}")]
    Read(std::io::Error),
    /// No answer within [`PING_TIMEOUT`].
    #[error("no answer within {}", seconds(*.0))]
    Timeout(Duration),
}

/// A duration as `10s`.
fn seconds(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// The path of dockerd's BuildKit gRPC upgrade.
const GRPC_PATH: &str = "/grpc";

/// What kind of daemon the upstream is (the variants' lines are `--upstream-kind`'s help).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamKind {
    /// Find out by asking `GET /_ping` (dockerd answers it; buildkitd speaks only HTTP/2).
    Auto,
    /// The Docker Engine API (dockerd, Docker-in-Docker).
    Docker,
    /// BuildKit's gRPC API (buildkitd).
    Buildkit,
}

/// The daemon behind the helper, with its kind found out once it answers definitely.
#[derive(Debug)]
pub struct Daemon {
    /// Where it listens.
    pub upstream: Upstream,
    tls: Option<Tls>,
    kind: tokio::sync::OnceCell<UpstreamKind>,
    /// The connection places of the listener: out of descriptors, a dial sheds one.
    slots: Option<super::limits::Slots>,
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
            slots: None,
        }
    }

    /// This daemon dialed for connections in `slots`: out of descriptors, a dial sheds the
    /// connection idle longest and tries again ([`super::limits::Slots::dial`]).
    pub fn sharing(self, slots: super::limits::Slots) -> Self {
        Self {
            slots: Some(slots),
            ..self
        }
    }

    /// `failure`, naming this daemon.
    pub fn error(&self, failure: DialFailure) -> DaemonError {
        DaemonError {
            upstream: self.upstream.clone(),
            failure,
        }
    }

    /// The daemon's kind. Only a definite answer is kept: a daemon that is down, slow to start
    /// or silent is asked again on the next connection, never taken for one kind or the other.
    pub async fn kind(&self) -> Result<UpstreamKind, DaemonError> {
        self.kind
            .get_or_try_init(|| async {
                let kind = self.detect().await.inspect_err(|e| {
                    tracing::warn!(upstream = %self.upstream, error = %e, "upstream kind unknown")
                })?;
                tracing::info!(upstream = %self.upstream, ?kind, "upstream detected");
                Ok(kind)
            })
            .await
            .copied()
    }

    /// Opens a connection, with TLS when configured, asking for `alpn`; each step within
    /// [`DIAL_TIMEOUT`].
    async fn dial(&self, alpn: Alpn) -> Result<(Box<dyn Io>, Option<Vec<u8>>), DaemonError> {
        let io = match &self.slots {
            Some(slots) => slots.dial(|| self.upstream.connect()).await,
            None => self.upstream.connect().await,
        };
        let io = io.map_err(|e| {
            self.error(match e.kind() {
                std::io::ErrorKind::TimedOut => DialFailure::ConnectTimeout(DIAL_TIMEOUT),
                _ => DialFailure::Connect(e),
            })
        })?;
        let Some(tls) = &self.tls else {
            return Ok((io, None));
        };
        match tokio::time::timeout(DIAL_TIMEOUT, tls.connect(io, alpn)).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(e)) => Err(self.error(DialFailure::Tls(e))),
            Err(_) => Err(self.error(DialFailure::TlsTimeout(DIAL_TIMEOUT))),
        }
    }

    /// A connection for the Docker Engine API (HTTP/1.1).
    pub async fn connect_http1(&self) -> Result<Box<dyn Io>, DaemonError> {
        Ok(self.dial(Alpn::Http1).await?.0)
    }

    /// A connection that speaks BuildKit's HTTP/2 API: the socket itself for buildkitd, a
    /// `POST /grpc` upgrade for dockerd (answered within [`DIAL_TIMEOUT`]).
    pub async fn connect_grpc(&self) -> Result<Box<dyn Io>, DaemonError> {
        if self.kind().await? == UpstreamKind::Docker {
            let io = self.connect_http1().await?;
            return match tokio::time::timeout(DIAL_TIMEOUT, upgrade(io, GRPC_PATH)).await {
                Ok(Ok(io)) => Ok(io),
                Ok(Err(why)) => Err(self.error(DialFailure::Upgrade(GRPC_PATH, why))),
                Err(_) => Err(self.error(DialFailure::UpgradeTimeout {
                    path: GRPC_PATH,
                    timeout: DIAL_TIMEOUT,
                })),
            };
        }
        Ok(self.dial(Alpn::Http2).await?.0)
    }

    /// Over TLS, a server that picks `h2` is buildkitd. Otherwise asks `GET /_ping` over
    /// HTTP/1.1: an HTTP answer means dockerd; buildkitd's gRPC server answers with an HTTP/2
    /// frame or closes the connection without a word.
    async fn detect(&self) -> Result<UpstreamKind, DaemonError> {
        let (io, alpn) = self.dial(Alpn::Either).await?;
        if alpn.as_deref() == Some(b"h2") {
            return Ok(UpstreamKind::Buildkit);
        }
        ping(io)
            .await
            .map_err(|why| self.error(DialFailure::Undetected(why)))
    }
}

/// What an HTTP/1.x answer starts with.
const HTTP1: &[u8] = b"HTTP/1.";

/// Sends `GET /_ping` and reads until the answer tells the kind: the first bytes of an
/// HTTP/1.x status line (dockerd), bytes that cannot begin one (buildkitd's HTTP/2 frames), or
/// the end of the stream before any byte (buildkitd refusing the request). Anything else (a
/// timeout, an error, a stream that ends in the middle of `HTTP/1.`) says nothing definite.
async fn ping(mut io: Box<dyn Io>) -> Result<UpstreamKind, Undetected> {
    io.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        .await
        .map_err(Undetected::Send)?;
    let mut head = Vec::with_capacity(HTTP1.len());
    let read = async {
        let mut buf = [0u8; HTTP1.len()];
        loop {
            let n = io.read(&mut buf[..HTTP1.len() - head.len()]).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(head.is_empty().then_some(UpstreamKind::Buildkit));
            }
            head.extend_from_slice(&buf[..n]);
            if !HTTP1.starts_with(&head) {
                return Ok(Some(UpstreamKind::Buildkit));
            }
            if head.len() == HTTP1.len() {
                return Ok(Some(UpstreamKind::Docker));
            }
        }
    };
    match tokio::time::timeout(PING_TIMEOUT, read).await {
        Ok(Ok(Some(kind))) => Ok(kind),
        Ok(Ok(None)) => Err(Undetected::Truncated(head.len())),
        Ok(Err(e)) => Err(Undetected::Read(e)),
        Err(_) => Err(Undetected::Timeout(PING_TIMEOUT)),
    }
}

/// Aborts a daemon connection's task when its owner (the client connection's task, or an
/// upgrade that never completed) is dropped.
pub(super) struct AbortOnDrop(pub(super) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why dockerd did not hand over an upgraded connection.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// HTTP/1.1 with dockerd failed (the handshake, the request or the upgrade itself).
    #[error("{0}")]
    Http(hyper::Error),
    /// The request could not be built (a path that is no URI path).
    #[error("{0}")]
    Request(http::Error),
    /// dockerd answered, but not `101 Switching Protocols`: it is too old or has no BuildKit.
    #[error("dockerd answered {status} to POST {path} (it needs API 1.31+ with BuildKit)")]
    Refused {
        /// dockerd's answer.
        status: StatusCode,
        /// The upgrade's path.
        path: String,
    },
}

/// Opens an upgraded connection on `path` (dockerd's `/grpc` or `/session`) over `io`.
pub async fn upgrade(io: Box<dyn Io>, path: &str) -> Result<Box<dyn Io>, UpgradeError> {
    let (mut send, conn) = hyper::client::conn::http1::handshake::<
        _,
        UnsyncBoxBody<bytes::Bytes, hyper::Error>,
    >(TokioIo::new(io))
    .await
    .map_err(UpgradeError::Http)?;
    // Done once the upgrade is handed over; cut with the caller if it never is.
    let conn = AbortOnDrop(tokio::spawn(conn.with_upgrades()).abort_handle());
    let req = Request::post(path)
        .header(http::header::HOST, "docker")
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "h2c")
        .body(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(UpgradeError::Request)?;
    let res = send.send_request(req).await.map_err(UpgradeError::Http)?;
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        drop(conn);
        return Err(UpgradeError::Refused {
            status: res.status(),
            path: path.to_string(),
        });
    }
    let upgraded = hyper::upgrade::on(res).await.map_err(UpgradeError::Http)?;
    Ok(Box::new(TokioIo::new(upgraded)))
}
