//! A Secrets client over a unix socket: what `probe` and the tests use to ask a helper what a
//! build would get.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::secret::SecretValue;
use crate::wire::proto::secrets::secrets_client::SecretsClient;
use crate::wire::proto::secrets::GetSecretRequest;

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
pub async fn secrets(path: &Path) -> Result<SecretsClient<Channel>, ConnectError> {
    // The first connection is made here, so its error can be named; the channel uses it and
    // dials again only to reconnect.
    let first = UnixStream::connect(path)
        .await
        .map_err(|e| ConnectError::of(path, e))?;
    let first = Arc::new(Mutex::new(Some(first)));
    let dial = path.to_path_buf();
    // The URI is a placeholder: the connector ignores it and dials the socket.
    let channel = Endpoint::from_static("http://irsa-secrets.local").connect_with_connector_lazy(
        tower::service_fn(move |_: Uri| {
            let (first, dial) = (Arc::clone(&first), dial.clone());
            async move {
                let ready = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                match ready {
                    Some(stream) => Ok(TokioIo::new(stream)),
                    None => UnixStream::connect(dial).await.map(TokioIo::new),
                }
            }
        }),
    );
    Ok(SecretsClient::new(channel))
}

/// Asks for one secret.
pub async fn get_secret(
    client: &mut SecretsClient<Channel>,
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
