//! Binding the helper's unix socket safely: never over a live socket or a non-socket file, with
//! its mode and group set before the socket becomes visible at its path. In a rolling restart
//! on one path the old helper removes its socket as soon as it stops accepting and the new one
//! waits for that, so the hand-over does not depend on which of the two is quicker.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::net::UnixListener;

/// Why the helper's socket cannot be bound where asked. All are fatal at start-up: the text
/// names the path and what to change.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The listen address is not a unix socket path.
    #[error(
        "listen address {0:?} is not unix:///ABSOLUTE/PATH, e.g. unix:///run/irsa-secrets.sock"
    )]
    Address(String),
    /// The path holds a NUL byte, which the kernel takes as its end.
    #[error(
        "listen address {} holds a NUL byte, which no path can: write it without one",
        crate::bound::quote(.0)
    )]
    Nul(String),
    /// Another process still answers on the path after the wait.
    #[error(
        "{} is in use by a running process (still after waiting {}); stop it or choose \
         another --listen path",
        path.display(),
        humantime::format_duration(*waited)
    )]
    InUse {
        /// The socket path.
        path: PathBuf,
        /// How long the helper waited for the other process to leave.
        waited: Duration,
    },
    /// The path is some other kind of file.
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotSocket(PathBuf),
    /// The path (or its directory) cannot be looked at.
    #[error("cannot inspect {}: {err}", path.display())]
    Inspect {
        /// The path or directory.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The path ends in `..` or is `/`.
    #[error("{} has no file name", .0.display())]
    NoFileName(PathBuf),
    /// The parent is a file, not a directory.
    #[error("cannot listen on {}: {} is not a directory", path.display(), dir.display())]
    NotDir {
        /// The socket path.
        path: PathBuf,
        /// Its parent.
        dir: PathBuf,
    },
    /// The parent directory does not exist.
    #[error(
        "cannot listen on {}: the directory {} does not exist; create it (mkdir -p {}) or mount \
         the volume that should hold it",
        path.display(),
        dir.display(),
        dir.display()
    )]
    NoDir {
        /// The socket path.
        path: PathBuf,
        /// Its parent.
        dir: PathBuf,
    },
    /// The socket cannot be created in the directory.
    #[error("cannot create the socket {} in {}: {err}", path.display(), dir.display())]
    Create {
        /// The socket path.
        path: PathBuf,
        /// Its parent.
        dir: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The socket just created under a temporary name cannot be looked at.
    #[error("cannot inspect the new socket {}: {err}", tmp.display())]
    InspectNew {
        /// The temporary name.
        tmp: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// `--socket-mode` cannot be applied.
    #[error("cannot set mode {mode:o} on the socket: {err}")]
    Mode {
        /// The mode.
        mode: u32,
        /// Why.
        err: std::io::Error,
    },
    /// `--socket-group` cannot be applied.
    #[error("cannot give the socket to group {group}: {err}")]
    Chown {
        /// The group as given.
        group: String,
        /// Why.
        err: nix::Error,
    },
    /// The socket cannot be renamed into place.
    #[error("cannot move the socket to {}: {err}", path.display())]
    Rename {
        /// The socket path.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// `--socket-group` names no group.
    #[error("group {0:?} does not exist")]
    NoGroup(String),
    /// The group database cannot be read.
    #[error("cannot look up group {group:?}: {err}")]
    GroupLookup {
        /// The group as given.
        group: String,
        /// Why.
        err: nix::Error,
    },
}

/// How a listening socket's file is exposed.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// File mode (default 0600: only the helper's user may connect).
    pub mode: u32,
    /// Group to own the socket, so members of it may connect when the mode allows.
    pub group: Option<String>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            mode: 0o600,
            group: None,
        }
    }
}

/// A listening unix socket and the guard of its file.
#[derive(Debug)]
pub struct BoundSocket {
    /// The listener.
    pub listener: UnixListener,
    /// Removes the socket file when dropped.
    pub file: SocketFile,
}

/// The path of a socket this process bound; the file is removed when this is dropped, so a
/// clean shutdown leaves no stale socket behind. Only while the path still names the socket this
/// process bound (same device and inode): in a rolling restart the next helper has already put
/// its own socket there, and removing that would break every build that follows.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode of the socket as bound.
    id: (u64, u64),
}

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.id => {
                if std::fs::remove_file(&self.path).is_ok() {
                    tracing::info!(path = %self.path.display(), "socket removed");
                }
            }
            Ok(_) => tracing::info!(
                path = %self.path.display(),
                "leaving the socket in place: another process has bound it since"
            ),
            Err(_) => {}
        }
    }
}

/// Parses `unix:///PATH` (or a bare absolute path) into the socket path.
pub fn parse_unix_address(address: &str) -> Result<PathBuf, SocketError> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    if path.contains('\0') {
        return Err(SocketError::Nul(address.to_string()));
    }
    if path.is_empty() || !path.starts_with('/') {
        return Err(SocketError::Address(address.to_string()));
    }
    Ok(PathBuf::from(path))
}

/// How often a new helper looks whether the process on its path has left.
const POLL: Duration = Duration::from_millis(20);

/// Binds `path`: replaces a stale socket file (nobody answers on it), waits up to `wait` for a
/// live one to go away (a helper being stopped removes its socket first thing) and refuses it
/// after that, refuses any other kind of file, and applies `opts` on a temporary name before
/// renaming it into place.
pub async fn bind(
    path: &Path,
    opts: &SocketOptions,
    wait: Duration,
) -> Result<BoundSocket, SocketError> {
    let started = Instant::now();
    let mut said = false;
    while is_live(path).await? {
        if started.elapsed() >= wait {
            return Err(SocketError::InUse {
                path: path.to_path_buf(),
                waited: wait,
            });
        }
        if !said {
            said = true;
            tracing::info!(
                path = %path.display(),
                wait = %humantime::format_duration(wait),
                "another process serves on the socket; waiting for it to leave (a helper being \
                 stopped removes its socket at once)"
            );
        }
        tokio::time::sleep(POLL).await;
    }
    if said {
        tracing::info!(path = %path.display(), waited = ?started.elapsed(), "the socket is free");
    }
    bind_now(path, opts)
}

/// Whether a process answers on `path`: false when nothing is there or a stale socket is (then
/// replaced); an error for any other kind of file.
async fn is_live(path: &Path) -> Result<bool, SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match tokio::net::UnixStream::connect(path).await {
                // A full backlog (EAGAIN) is a live process too.
                Ok(_) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(true),
                Err(_) => Ok(false),
            }
        }
        Ok(_) => Err(SocketError::NotSocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(SocketError::Inspect {
            path: path.to_path_buf(),
            err,
        }),
    }
}

/// [`bind`] once `path` holds no live socket.
fn bind_now(path: &Path, opts: &SocketOptions) -> Result<BoundSocket, SocketError> {
    if std::fs::symlink_metadata(path).is_ok() {
        tracing::info!(path = %path.display(), "replacing stale socket");
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| SocketError::NoFileName(path.to_path_buf()))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(SocketError::NotDir {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SocketError::NoDir {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
            })
        }
        Err(err) => {
            return Err(SocketError::Inspect {
                path: dir.to_path_buf(),
                err,
            })
        }
    }
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|err| SocketError::Create {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        err,
    })?;
    let finish = || -> Result<(u64, u64), SocketError> {
        let meta = std::fs::symlink_metadata(&tmp).map_err(|err| SocketError::InspectNew {
            tmp: tmp.clone(),
            err,
        })?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(opts.mode)).map_err(
            |err| SocketError::Mode {
                mode: opts.mode,
                err,
            },
        )?;
        if let Some(group) = &opts.group {
            let gid = resolve_group(group)?;
            nix::unistd::chown(&tmp, None, Some(gid)).map_err(|err| SocketError::Chown {
                group: group.clone(),
                err,
            })?;
        }
        std::fs::rename(&tmp, path).map_err(|err| SocketError::Rename {
            path: path.to_path_buf(),
            err,
        })?;
        Ok((meta.dev(), meta.ino()))
    };
    let id = finish().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(BoundSocket {
        listener,
        file: SocketFile {
            path: path.to_path_buf(),
            id,
        },
    })
}

fn resolve_group(group: &str) -> Result<nix::unistd::Gid, SocketError> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(SocketError::NoGroup(group.to_string())),
        Err(err) => Err(SocketError::GroupLookup {
            group: group.to_string(),
            err,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_sockets_are_replaced_live_ones_and_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let first = bind(&path, &SocketOptions::default(), Duration::ZERO)
            .await
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind(&path, &SocketOptions::default(), Duration::from_millis(100))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("in use"), "{err}");
        assert!(err.contains("waiting 100ms"), "{err}");
        // A stale socket: the file stays but nobody listens.
        let std_listener =
            std::os::unix::net::UnixListener::bind(dir.path().join("stale.sock")).unwrap();
        drop(std_listener);
        let stale = dir.path().join("stale.sock");
        assert!(stale.exists());
        let replaced = bind(
            &stale,
            &SocketOptions {
                mode: 0o660,
                group: Some("0".into()),
            },
            Duration::ZERO,
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::metadata(&stale).unwrap().permissions().mode() & 0o777,
            0o660
        );
        drop(replaced);
        assert!(!stale.exists(), "the socket file is removed on drop");
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(bind(&file, &SocketOptions::default(), Duration::ZERO)
            .await
            .unwrap_err()
            .to_string()
            .contains("not a socket"));
        drop(first);
    }

    /// A helper being stopped removes its socket a moment later: the new one waits for it
    /// rather than refusing.
    #[tokio::test]
    async fn a_live_socket_that_goes_away_within_the_wait_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let old = bind(&path, &SocketOptions::default(), Duration::ZERO)
            .await
            .unwrap();
        let leaving = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(old);
        });
        let started = Instant::now();
        let new = bind(&path, &SocketOptions::default(), Duration::from_secs(10))
            .await
            .expect("the path is free once the old socket is gone");
        assert!(started.elapsed() >= Duration::from_millis(250));
        leaving.await.unwrap();
        assert!(
            path.exists(),
            "the old socket's drop left the new one in place"
        );
        drop(new);
        assert!(!path.exists());
    }
}
