//! Binding the helper's unix socket safely: never over a live socket or a non-socket file, with
//! its mode and group set before the socket becomes visible at its path.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

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
                let _ = std::fs::remove_file(&self.path);
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
pub fn parse_unix_address(address: &str) -> Result<PathBuf, String> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    if path.is_empty() || !path.starts_with('/') {
        return Err(format!(
            "listen address {address:?} is not unix:///ABSOLUTE/PATH, e.g. unix:///run/irsa-secrets.sock"
        ));
    }
    Ok(PathBuf::from(path))
}

/// Binds `path`: replaces a stale socket file (nobody answers on it), refuses a live one or any
/// other kind of file, and applies `opts` on a temporary name before renaming it into place.
pub fn bind(path: &Path, opts: &SocketOptions) -> Result<BoundSocket, String> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "{} is in use by a running process; stop it or choose another --listen path",
                    path.display()
                ));
            }
            tracing::info!(path = %path.display(), "replacing stale socket");
        }
        Ok(_) => {
            return Err(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| format!("{} has no file name", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "cannot listen on {}: {} is not a directory",
                path.display(),
                dir.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "cannot listen on {}: the directory {} does not exist; create it (mkdir -p {}) \
                 or mount the volume that should hold it",
                path.display(),
                dir.display(),
                dir.display()
            ))
        }
        Err(e) => return Err(format!("cannot inspect {}: {e}", dir.display())),
    }
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| {
        format!(
            "cannot create the socket {} in {}: {e}",
            path.display(),
            dir.display()
        )
    })?;
    let finish = || -> Result<(u64, u64), String> {
        let meta = std::fs::symlink_metadata(&tmp)
            .map_err(|e| format!("cannot inspect the new socket {}: {e}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(opts.mode))
            .map_err(|e| format!("cannot set mode {:o} on the socket: {e}", opts.mode))?;
        if let Some(group) = &opts.group {
            let gid = resolve_group(group)?;
            nix::unistd::chown(&tmp, None, Some(gid))
                .map_err(|e| format!("cannot give the socket to group {group}: {e}"))?;
        }
        std::fs::rename(&tmp, path)
            .map_err(|e| format!("cannot move the socket to {}: {e}", path.display()))?;
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

fn resolve_group(group: &str) -> Result<nix::unistd::Gid, String> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(format!("group {group:?} does not exist")),
        Err(e) => Err(format!("cannot look up group {group:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_sockets_are_replaced_live_ones_and_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let first = bind(&path, &SocketOptions::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind(&path, &SocketOptions::default()).unwrap_err();
        assert!(err.contains("in use"), "{err}");
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
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(&stale).unwrap().permissions().mode() & 0o777,
            0o660
        );
        drop(replaced);
        assert!(!stale.exists(), "the socket file is removed on drop");
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(bind(&file, &SocketOptions::default())
            .unwrap_err()
            .contains("not a socket"));
        drop(first);
    }
}
