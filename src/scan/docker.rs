//! `docker://NAME`: fetches an image from the Docker Engine API (`GET /images/get`, the
//! `docker save` stream) over its unix socket into an unlinked temporary file, which the scan
//! then reads in place like any archive.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::PathBuf;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::matcher::url_encode;
use super::ScanError;

/// The engine's socket: `DOCKER_HOST` when it is a `unix://` address, else the default.
pub fn socket_path(docker_host: Option<&str>) -> Result<PathBuf, ScanError> {
    match docker_host {
        None | Some("") => Ok("/var/run/docker.sock".into()),
        Some(host) => host
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .ok_or_else(|| {
                ScanError::Docker(format!(
                    "DOCKER_HOST={host} is not a unix:// address; only unix sockets are supported: \
                     `docker save NAME -o image.tar` and scan the file instead"
                ))
            }),
    }
}

/// Saves image `name` from the engine at `socket` into an anonymous temporary file.
pub async fn fetch(socket: &std::path::Path, name: &str) -> Result<File, ScanError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        ScanError::Docker(format!("{what} ({}): {e}", socket.display()))
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| err("cannot connect to the Docker Engine", &e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| err("HTTP handshake with the Docker Engine failed", &e))?;
    let connection = tokio::spawn(connection);
    let uri = format!("/images/get?names={}", url_encode(name.as_bytes()));
    let request = hyper::Request::get(uri)
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| err("invalid request", &e))?;
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| err("the Docker Engine did not answer", &e))?;
    let status = response.status();
    // Private (0600) and unlinked at once, so it vanishes with the process.
    let mut file = tempfile::tempfile().map_err(|e| err("cannot create a temporary file", &e))?;
    let mut body_error = Vec::new();
    while let Some(frame) = response.frame().await {
        let frame =
            frame.map_err(|e| err("reading the image from the Docker Engine failed", &e))?;
        if let Ok(data) = frame.into_data() {
            if status.is_success() {
                file.write_all(&data)
                    .map_err(|e| err("cannot write the temporary file", &e))?;
            } else if body_error.len() < 4096 {
                body_error.extend_from_slice(&data);
            }
        }
    }
    connection.abort();
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body_error)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body_error).into_owned());
        return Err(ScanError::Docker(format!(
            "cannot save image {name}: {status}: {message}"
        )));
    }
    file.rewind()
        .map_err(|e| err("cannot rewind the temporary file", &e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_selects_the_socket() {
        assert_eq!(
            socket_path(None).unwrap(),
            PathBuf::from("/var/run/docker.sock")
        );
        assert_eq!(
            socket_path(Some("unix:///run/user/1000/docker.sock")).unwrap(),
            PathBuf::from("/run/user/1000/docker.sock")
        );
        let err = socket_path(Some("tcp://10.0.0.1:2375")).unwrap_err();
        assert!(err.to_string().contains("only unix sockets"), "{err}");
        assert_eq!(url_encode(b"reg.io/a/b:1"), "reg.io%2Fa%2Fb%3A1");
    }
}
