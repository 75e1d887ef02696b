//! What the tests that drive bollard's BuildKit client share: the uploaded build context, and a
//! loopback TCP forwarder to the helper's unix socket (tonic endpoints dial TCP only).

use std::io::Write as _;
use std::path::Path;

/// A gzipped tar holding just the Dockerfile: bollard uploads it as the build context.
pub fn context(dockerfile: &str) -> bytes::Bytes {
    let mut header = tar::Header::new_gnu();
    header.set_path("Dockerfile").unwrap();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let mut tar = tar::Builder::new(Vec::new());
    tar.append(&header, dockerfile.as_bytes()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap().into()
}

/// Accepts loopback TCP connections and splices each onto a new connection to `socket`.
pub async fn forward_to(socket: &Path) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let socket = socket.to_path_buf();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Ok(mut unix) = tokio::net::UnixStream::connect(&socket).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    addr
}
