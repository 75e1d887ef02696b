//! A `Control/Session` gRPC stream as a byte stream.
//!
//! BuildKit tunnels a session's HTTP/2 connection through the bidirectional
//! `/moby.buildkit.v1.Control/Session` call: each write is one `BytesMessage`, and message
//! boundaries mean nothing. [`Tunnel`] turns the incoming message stream into `AsyncRead` and
//! writes into outgoing messages, so the splice can run HTTP/2 over it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{self, BoxStream, StreamExt};
use http_body::Frame;
use http_body_util::StreamBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;
use tokio_util::sync::PollSender;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::Status;
use tonic_prost::ProstCodec;

use crate::wire::proto::control::BytesMessage;

/// Largest message written into the tunnel: well under every BuildKit version's 4 MiB limit.
const MAX_MESSAGE: usize = 1024 * 1024;
/// Largest message read from the tunnel: what BuildKit v0.13 and later accept themselves
/// (containerd's `defaults.DefaultMaxRecvMsgSize`, 16 MiB, in its session code). The length
/// is checked when the 5-byte frame header arrives, so a peer announcing more costs nothing.
pub const MAX_INCOMING: usize = 16 << 20;
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
pub struct Outbox {
    writer: PollSender<Bytes>,
    /// Why the incoming half failed, if it did: an answered call ends with it in its trailers
    /// (e.g. a message over [`MAX_INCOMING`]) rather than with `grpc-status: 0`.
    failure: Arc<OnceLock<Status>>,
}

/// Creates the outgoing half and the body that carries what is written to it.
// tonic's body type fixes the error type to `Status`, large or not.
#[allow(clippy::result_large_err)]
pub fn outgoing(ending: Outgoing) -> (Outbox, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    let failure = Arc::new(OnceLock::new());
    let data =
        tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok::<_, Status>(Frame::data(b)));
    let body: Body = match ending {
        Outgoing::Response => {
            // Read when the data ends, which is after the incoming half has failed, if it has.
            let failed = Arc::clone(&failure);
            let end = stream::once(async move { Ok(Frame::trailers(trailers(failed.get()))) });
            Body::new(http_body_util::BodyExt::boxed_unsync(StreamBody::new(
                data.chain(end),
            )))
        }
        Outgoing::Request => {
            Body::new(http_body_util::BodyExt::boxed_unsync(StreamBody::new(data)))
        }
    };
    let outbox = Outbox {
        writer: PollSender::new(tx),
        failure,
    };
    (outbox, body)
}

/// The trailers that end an answered call: its failure, or `grpc-status: 0`.
fn trailers(failure: Option<&Status>) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    let code = match failure {
        None => "0",
        Some(status) if status.add_header(&mut trailers).is_ok() => return trailers,
        // A message that makes no header value: still a failure (13, internal).
        Some(_) => "13",
    };
    trailers.insert("grpc-status", http::HeaderValue::from_static(code));
    trailers
}

/// What a failed incoming stream tells its peer: a message over the limit is
/// `ResourceExhausted`, as gRPC's own servers answer it; tonic's message gives the announced
/// size and the limit (never any byte of the message).
fn incoming_failure(status: &Status) -> Status {
    let code = match status.code() {
        tonic::Code::OutOfRange => tonic::Code::ResourceExhausted,
        code => code,
    };
    Status::new(
        code,
        format!("irsa-secrets: session tunnel: {}", status.message()),
    )
}

impl Outbox {
    /// Completes the tunnel with the incoming gRPC body of the same call.
    pub fn join<B>(self, incoming: B, direction: Incoming) -> Tunnel
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let decoder = ProstCodec::<BytesMessage, BytesMessage>::default().decoder();
        let limit = Some(MAX_INCOMING);
        let messages = match direction {
            Incoming::Request => Streaming::new_request(decoder, incoming, None, limit),
            Incoming::Response => {
                Streaming::new_response(decoder, incoming, http::StatusCode::OK, None, limit)
            }
        };
        let failure = self.failure;
        let bytes = messages
            .map(move |m| {
                m.map(|m| Bytes::from(m.data)).map_err(|status| {
                    let status = incoming_failure(&status);
                    let message = status.message().to_string();
                    let _ = failure.set(status);
                    io::Error::new(io::ErrorKind::ConnectionAborted, message)
                })
            })
            .boxed();
        Tunnel {
            reader: StreamReader::new(bytes),
            writer: self.writer,
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

    #[tokio::test]
    async fn a_message_over_the_limit_fails_the_read_and_ends_the_answer_with_the_reason() {
        use http_body_util::BodyExt;
        use tokio::io::AsyncReadExt;
        // A frame header announcing a 4 GiB message, and a first chunk of it.
        let mut hostile = vec![0u8, 0xff, 0xff, 0xff, 0xff];
        hostile.extend_from_slice(&[0x0a; 4096]);
        let incoming = http_body_util::Full::new(Bytes::from(hostile));
        let (outbox, mut answer) = outgoing(Outgoing::Response);
        let mut tunnel = outbox.join(incoming, Incoming::Request);
        let err = tunnel.read(&mut [0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        let want = "found 4294967295 bytes, the limit is: 16777216 bytes";
        assert!(err.to_string().contains(want), "{err}");
        drop(tunnel);
        let trailers = loop {
            let frame = answer.frame().await.unwrap().unwrap();
            if let Ok(trailers) = frame.into_trailers() {
                break trailers;
            }
        };
        let status = Status::from_header_map(&trailers).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status
            .message()
            .starts_with("irsa-secrets: session tunnel: "));
        assert!(status.message().contains(want), "{status:?}");
    }

    #[tokio::test]
    async fn a_clean_end_answers_ok() {
        use http_body_util::BodyExt;
        let (outbox, mut answer) = outgoing(Outgoing::Response);
        drop(outbox.join(http_body_util::Empty::<Bytes>::new(), Incoming::Request));
        let trailers = answer
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    }

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
