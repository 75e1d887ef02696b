//! The front doors: accept build clients on the helper's socket, connect them to the daemon,
//! and put every build session through the splice.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::provider::Provider;

pub mod docker;
pub mod grpc;

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
    /// Opens a new connection to the daemon.
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

/// Accepts clients on `listener` until `shutdown` resolves, serving each with the Docker front
/// door; then waits up to ten seconds for open connections before cutting them.
pub async fn run(
    listener: UnixListener,
    upstream: Upstream,
    provider: Provider,
    shutdown: impl Future<Output = ()>,
) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (upstream, provider) = (upstream.clone(), provider.clone());
                    connections.spawn(docker::serve_connection(stream, upstream, provider));
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
