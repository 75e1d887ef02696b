//! A `Control/Session` gRPC stream as a byte stream.
//!
//! BuildKit tunnels a session's HTTP/2 connection through the bidirectional
//! `/moby.buildkit.v1.Control/Session` call: each write is one `BytesMessage`, and message
//! boundaries mean nothing. [`Tunnel`] turns the incoming message stream into `AsyncRead` and
//! writes into outgoing messages, so the splice can run HTTP/2 over it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{self, BoxStream, StreamExt};
use http_body::Frame;
use http_body_util::StreamBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;
use tokio_util::sync::PollSender;
use tonic::body::BoxBody;
use tonic::codec::{Codec, ProstCodec, Streaming};
use tonic::Status;

use crate::proto::control::BytesMessage;

/// Largest message written into the tunnel: well under every BuildKit version's 4 MiB limit.
const MAX_MESSAGE: usize = 1024 * 1024;
/// Messages buffered per direction before a writer waits (backpressure, bounded memory).
const QUEUE: usize = 16;

/// One end of a session tunnel: reads what the peer sends, writes messages to it.
pub struct Tunnel {
    reader: StreamReader<BoxStream<'static, io::Result<Bytes>>, Bytes>,
    writer: PollSender<Bytes>,
}

/// Which way the incoming stream flows, for tonic's decoder (requests and responses end
/// differently: a response carries its status in trailers).
#[derive(Debug, Clone, Copy)]
pub enum Incoming {
    /// The stream is the body of a call we received (we are the gRPC server).
    Request,
    /// The stream is the body of a call we made (we are the gRPC client).
    Response,
}

/// How the outgoing half ends, for the same reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// We answer a call: end with `grpc-status: 0` trailers.
    Response,
    /// We make a call: just end the stream.
    Request,
}

/// The writing half of a tunnel, created first: a call's outgoing body must exist before its
/// incoming one does (we send our request before the daemon answers).
pub struct Outbox(PollSender<Bytes>);

/// Creates the outgoing half and the body that carries what is written to it.
// tonic's body type fixes the error type to `Status`, large or not.
#[allow(clippy::result_large_err)]
pub fn outgoing(ending: Outgoing) -> (Outbox, BoxBody) {
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    let data =
        tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok::<_, Status>(Frame::data(b)));
    let body: BoxBody = match ending {
        Outgoing::Response => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let end = stream::once(async move { Ok(Frame::trailers(trailers)) });
            http_body_util::BodyExt::boxed_unsync(StreamBody::new(data.chain(end)))
        }
        Outgoing::Request => http_body_util::BodyExt::boxed_unsync(StreamBody::new(data)),
    };
    (Outbox(PollSender::new(tx)), body)
}

impl Outbox {
    /// Completes the tunnel with the incoming gRPC body of the same call.
    pub fn join<B>(self, incoming: B, direction: Incoming) -> Tunnel
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let decoder = ProstCodec::<BytesMessage, BytesMessage>::default().decoder();
        let messages = match direction {
            Incoming::Request => Streaming::new_request(decoder, incoming, None, Some(usize::MAX)),
            Incoming::Response => Streaming::new_response(
                decoder,
                incoming,
                http::StatusCode::OK,
                None,
                Some(usize::MAX),
            ),
        };
        let bytes = messages
            .map(|m| {
                m.map(|m| Bytes::from(m.data)).map_err(|status| {
                    io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        status.message().to_string(),
                    )
                })
            })
            .boxed();
        Tunnel {
            reader: StreamReader::new(bytes),
            writer: self.0,
        }
    }
}

/// Frames `data` as one gRPC message holding a `BytesMessage`.
fn frame(data: &[u8]) -> Bytes {
    let mut len_buf = [0u8; 10];
    let varint_len = {
        let mut slice = &mut len_buf[..];
        prost::encoding::encode_varint(data.len() as u64, &mut slice);
        10 - slice.len()
    };
    let message_len = 1 + varint_len + data.len();
    let mut out = BytesMut::with_capacity(5 + message_len);
    out.put_u8(0); // not compressed
    out.put_u32(message_len as u32);
    out.put_u8(0x0a); // field 1, length-delimited
    out.put_slice(&len_buf[..varint_len]);
    out.put_slice(data);
    out.freeze()
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let closed = || io::Error::from(io::ErrorKind::BrokenPipe);
        ready!(self.writer.poll_reserve(cx)).map_err(|_| closed())?;
        let n = buf.len().min(MAX_MESSAGE);
        self.writer
            .send_item(frame(&buf[..n]))
            .map_err(|_| closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.close();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn frames_decode_as_bytes_messages() {
        for size in [0, 1, 127, 128, 300, 70_000] {
            let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let f = frame(&data);
            assert_eq!(f[0], 0);
            let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
            assert_eq!(len, f.len() - 5);
            let decoded = BytesMessage::decode(&f[5..]).unwrap();
            assert_eq!(decoded.data, data);
        }
    }
}
