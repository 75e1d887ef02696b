//! Tells HTTP/2 clients (buildctl, the buildx remote driver) from HTTP/1.1 clients (the docker
//! CLI, the buildx docker driver) by their first bytes, then hands the bytes back.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface every HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 with prior knowledge: the BuildKit gRPC API.
    Http2,
    /// Anything else: treated as HTTP/1.1, the Docker Engine API.
    Http1,
}

/// Reads just enough of `io` to decide, and returns it with those bytes put back. The caller
/// bounds the wait: it is part of the connection's deadline for its first request.
pub async fn sniff<T: AsyncRead + Unpin>(mut io: T) -> io::Result<(Protocol, Rewind<T>)> {
    let mut seen = Vec::with_capacity(PREFACE.len());
    let mut buf = [0u8; 24];
    while seen.len() < PREFACE.len() && PREFACE.starts_with(&seen) {
        let n = io.read(&mut buf[..PREFACE.len() - seen.len()]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "client closed before sending a request",
            ));
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let protocol = if seen == PREFACE {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    Ok((
        protocol,
        Rewind {
            prefix: seen,
            pos: 0,
            inner: io,
        },
    ))
}

/// A stream whose first bytes were already read: replays them, then reads on.
pub struct Rewind<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn check(input: &[u8], want: Protocol) {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(input).await.unwrap();
        drop(a);
        let (p, mut rewound) = sniff(b).await.unwrap();
        assert_eq!(p, want);
        let mut all = Vec::new();
        rewound.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, input, "every byte is handed back");
    }

    #[tokio::test]
    async fn prefaces_and_requests_are_told_apart_and_replayed() {
        check(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04",
            Protocol::Http2,
        )
        .await;
        check(
            b"POST /session HTTP/1.1\r\nHost: docker\r\n\r\n",
            Protocol::Http1,
        )
        .await;
        check(b"GET /_ping HTTP/1.1\r\n\r\n", Protocol::Http1).await;
        check(b"PRI * HTTP/1.1 nonsense here\r\n", Protocol::Http1).await;
        let (a, b) = tokio::io::duplex(64);
        drop(a);
        assert_eq!(
            sniff(b).await.err().unwrap().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
