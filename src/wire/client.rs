//! A Secrets client over a unix socket: what `probe` and the tests use to ask a helper what a
//! build would get.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio::net::UnixStream;
use tonic::body::Body;

use super::h2::{self, Client};
use super::proto::secrets::secrets_client::SecretsClient;
use super::proto::secrets::GetSecretRequest;
use crate::secret::SecretValue;

/// Why the helper's socket could not be used, with the path and what to do about it (the
/// transport's own text is only "transport error").
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing at the path, or a part of it is missing.
    #[error(
        "no socket at {}: the helper is not running, or listens elsewhere; start it, or point \
         --socket at its --listen path",
        .0.display()
    )]
    Missing(PathBuf),
    /// The path is some other kind of file.
    #[error(
        "{} is {what}, not a socket; point --socket at the helper's --listen path",
        path.display()
    )]
    NotASocket {
        /// The path asked for.
        path: PathBuf,
        /// What is there instead, e.g. "a regular file".
        what: &'static str,
    },
    /// The socket (or a directory on the way to it) does not let this user in.
    #[error(
        "permission denied on {}{detail}: run probe as the helper's user, or start the helper \
         with --socket-group GID --socket-mode 660 and run probe in that group",
        path.display()
    )]
    PermissionDenied {
        /// The path asked for.
        path: PathBuf,
        /// The socket's mode and owner and who this process is, when they can be read.
        detail: String,
    },
    /// A socket file with nobody listening on it.
    #[error(
        "nothing accepts connections on {}: the socket file is left from a helper that is no \
         longer running; start the helper (it replaces the stale file)",
        .0.display()
    )]
    Refused(PathBuf),
    /// Any other failure to connect.
    #[error("cannot connect to {}", path.display())]
    Io {
        /// The path asked for.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

impl ConnectError {
    /// Names a failed `connect(2)` on `path`, looking at the file to tell the cases apart.
    fn of(path: &Path, e: io::Error) -> Self {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let path = path.to_path_buf();
        match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Self::Missing(path),
            io::ErrorKind::PermissionDenied => {
                let me = format!(
                    "this process runs as uid {} gid {}",
                    nix::unistd::getuid(),
                    nix::unistd::getgid()
                );
                let detail = match std::fs::metadata(&path) {
                    Ok(m) => format!(
                        " (mode {:o}, owner uid {} gid {}; {me})",
                        m.mode() & 0o7777,
                        m.uid(),
                        m.gid()
                    ),
                    Err(_) => format!(" (a directory on the way to it may not be entered; {me})"),
                };
                Self::PermissionDenied { path, detail }
            }
            // Linux refuses a connect to a file that is not a socket as it refuses a socket
            // nobody listens on.
            io::ErrorKind::ConnectionRefused => match std::fs::metadata(&path) {
                Ok(m) if !m.file_type().is_socket() => {
                    let t = m.file_type();
                    let what = if t.is_dir() {
                        "a directory"
                    } else if t.is_file() {
                        "a regular file"
                    } else if t.is_fifo() {
                        "a named pipe"
                    } else {
                        "a device"
                    };
                    Self::NotASocket { path, what }
                }
                _ => Self::Refused(path),
            },
            _ => Self::Io { path, source: e },
        }
    }
}

/// Connects to the Secrets service on the unix socket at `path`.
pub async fn secrets(path: &Path) -> Result<SecretsClient<Connection>, ConnectError> {
    // The first connection is made here, so its error can be named; the client dials again
    // only to reconnect.
    let peer = dial(path).await.map_err(|e| ConnectError::of(path, e))?;
    let connection = Connection {
        path: Arc::new(path.to_path_buf()),
        peer: Arc::new(tokio::sync::Mutex::new(peer)),
    };
    // The authority is a placeholder: the connection is the socket.
    let origin = Uri::from_static("http://irsa-secrets.local");
    Ok(SecretsClient::with_origin(connection, origin))
}

/// The helper's socket, as a tonic client needs it: one HTTP/2 connection, dialled again once
/// it has closed (the helper closes idle connections, or restarts).
#[derive(Clone)]
pub struct Connection {
    path: Arc<PathBuf>,
    peer: Arc<tokio::sync::Mutex<Client>>,
}

/// Opens an HTTP/2 connection to the socket at `path`, its connection task spawned.
async fn dial(path: &Path) -> io::Result<Client> {
    let stream = UnixStream::connect(path).await?;
    let (peer, connection) = h2::handshake(stream).await.map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection to the helper ended");
        }
    });
    Ok(peer)
}

impl tower::Service<Request<Body>> for Connection {
    type Response = Response<Incoming>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let peer = {
                let mut peer = this.peer.lock().await;
                if peer.is_closed() {
                    *peer = dial(&this.path).await.map_err(|e| {
                        tonic::Status::unavailable(format!(
                            "cannot connect to {}: {e}",
                            this.path.display()
                        ))
                    })?;
                }
                peer.clone()
            };
            Ok(tower::ServiceExt::oneshot(peer, req).await?)
        })
    }
}

/// Asks for one secret.
pub async fn get_secret(
    client: &mut SecretsClient<Connection>,
    id: &str,
) -> Result<SecretValue, tonic::Status> {
    let response = client
        .get_secret(GetSecretRequest {
            id: id.to_string(),
            annotations: Default::default(),
        })
        .await?;
    Ok(response.into_inner().into_value())
}

/// The hex SHA-256 of a value: what a build step can print to prove which value it got.
pub fn fingerprint(value: &SecretValue) -> String {
    hex::encode(Sha256::digest(value.expose()))
}
