//! The daemon behind the helper: where it listens, what kind it is, and how to dial it.

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

use super::docker;
use super::tls::{Alpn, Tls};
use super::Io;

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
