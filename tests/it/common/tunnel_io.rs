//! The tests' own HTTP/2, gRPC and session-tunnel stack, written apart from the crate's
//! `wire::h2` and `wire::tunnel` so that a framing bug in the crate cannot pass by being the
//! same on both ends: hyper's HTTP/2 builders used directly, gRPC's 5-byte length prefix by
//! hand around prost messages, and the `Control/Session` tunnel as a byte stream over
//! `moby.buildkit.v1.BytesMessage`s.
//!
//! The reader is strict where a real peer would be: a compressed flag, a message over
//! BuildKit's 4 MiB limit, a message that is not exactly one `BytesMessage` (unknown fields,
//! trailing bytes), a stream cut inside a message or a call ending with a non-zero
//! `grpc-status` each fail the read.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use irsa_secrets::wire::proto::control::BytesMessage;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use tonic::Code;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the tests' peers send.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The largest gRPC message BuildKit's older daemons and clients accept (grpc-go's default).
pub const MAX_MESSAGE: usize = 4 << 20;
/// What one tunnel write puts in one `BytesMessage` at most.
const CHUNK: usize = 32 * 1024;

/// Boxes any body into [`Body`].
pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// The 5-byte gRPC prefix (uncompressed, big-endian length) and `message`.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).unwrap());
    out.put_slice(message);
    out.freeze()
}

/// Takes one whole gRPC message off the front of `buf`, if one is there.
fn take_message(buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err(bad(format!(
            "compressed flag {} on a tunnel message",
            buf[0]
        )));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(bad(format!(
            "a {len}-byte message, over the {MAX_MESSAGE}-byte limit"
        )));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    buf.advance(5);
    Ok(Some(buf.split_to(len).freeze()))
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Decodes exactly one `M` from `raw`: no unknown fields, nothing left over.
pub fn decode_exact<M: Message + Default>(raw: &[u8]) -> io::Result<M> {
    let m = M::decode(raw).map_err(|e| bad(format!("not a message: {e}")))?;
    if m.encoded_len() != raw.len() {
        return Err(bad(format!(
            "{} bytes re-encode as {}: unknown fields or padding",
            raw.len(),
            m.encoded_len()
        )));
    }
    Ok(m)
}

/// The `grpc-status` in `headers`, if any.
fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .map(|v| v.to_str().ok().and_then(|s| s.parse().ok()).unwrap_or(-1))
}

/// One end of a session tunnel: reads the peer's `BytesMessage`s, writes its own.
pub struct TunnelIo {
    incoming: Pin<Box<dyn http_body::Body<Data = Bytes, Error = BoxError> + Send>>,
    raw: BytesMut,
    pending: Bytes,
    ended: bool,
    outgoing: PollSender<Bytes>,
}

/// How the outgoing body ends: an answer carries `grpc-status: 0` trailers, a call does not.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    Answer,
    Call,
}

/// The writing half (and the body carrying it), made before the call's other body exists.
pub struct Writer(PollSender<Bytes>);

pub fn writer(ends: Ends) -> (Writer, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let data = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| {
        Ok::<_, BoxError>(Frame::data(grpc_frame(
            &BytesMessage { data: b.to_vec() }.encode_to_vec(),
        )))
    });
    let body = if ends == Ends::Answer {
        let end = futures_util::stream::once(async {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            Ok(Frame::trailers(t))
        });
        StreamBody::new(data.chain(end)).boxed_unsync()
    } else {
        StreamBody::new(data).boxed_unsync()
    };
    (Writer(PollSender::new(tx)), body)
}

impl Writer {
    /// Completes the tunnel with the other direction's body.
    pub fn join<B>(self, incoming: B) -> TunnelIo
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        TunnelIo {
            incoming: Box::pin(incoming.map_err(Into::into)),
            raw: BytesMut::new(),
            pending: Bytes::new(),
            ended: false,
            outgoing: self.0,
        }
    }
}

impl AsyncRead for TunnelIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if let Some(m) = take_message(&mut this.raw)? {
                this.pending = decode_exact::<BytesMessage>(&m)?.data.into();
                continue;
            }
            if this.ended {
                if !this.raw.is_empty() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the tunnel ended inside a message ({} bytes)",
                            this.raw.len()
                        ),
                    )));
                }
                return Poll::Ready(Ok(()));
            }
            match ready!(this.incoming.as_mut().poll_frame(cx)) {
                None => this.ended = true,
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.raw.extend_from_slice(&data),
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        match grpc_status(&trailers) {
                            Some(0) | None => {}
                            Some(code) => {
                                return Poll::Ready(Err(io::Error::other(format!(
                                    "the tunnel ended with grpc-status {code}"
                                ))))
                            }
                        }
                    }
                },
            }
        }
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let gone = || io::Error::from(io::ErrorKind::BrokenPipe);
        ready!(self.outgoing.poll_reserve(cx)).map_err(|_| gone())?;
        let n = buf.len().min(CHUNK);
        self.outgoing
            .send_item(Bytes::copy_from_slice(&buf[..n]))
            .map_err(|_| gone())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outgoing.close();
        Poll::Ready(Ok(()))
    }
}

/// An HTTP/2 client connection, straight on hyper: cheap to clone, a tower service.
#[derive(Clone)]
pub struct Peer(hyper::client::conn::http2::SendRequest<Body>);

/// Opens an HTTP/2 connection on `io` and drives it on its own task.
pub async fn handshake(io: impl AsyncRead + AsyncWrite + Send + Unpin + 'static) -> Peer {
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    Peer(send)
}

impl Peer {
    /// Sends `req` once the connection can take it.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, hyper::Error> {
        let mut send = self.0.clone();
        send.ready().await?;
        send.send_request(req).await
    }
}

impl tower::Service<Request<Body>> for Peer {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<'static, Result<Response<Incoming>, hyper::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// Serves HTTP/2 on `io` with `svc` (hyper's server builder, defaults).
pub async fn serve<S>(io: impl AsyncRead + AsyncWrite + Send + Unpin + 'static, svc: S)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// A gRPC request for `path` carrying `message`.
pub fn grpc_request(path: &str, message: &impl Message) -> Request<Body> {
    Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(boxed(Full::new(grpc_frame(&message.encode_to_vec()))))
        .unwrap()
}

/// A gRPC request for `path` with `body` as it is (raw bytes, framed or not).
pub fn call(path: &str, body: &'static [u8]) -> Request<Body> {
    Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(boxed(Full::new(Bytes::from_static(body))))
        .unwrap()
}

/// A unary gRPC call: exactly one well-formed message and `grpc-status: 0`, or the code.
pub async fn unary<R: Message + Default>(
    peer: &Peer,
    path: &str,
    message: &impl Message,
) -> Result<R, Code> {
    let res = peer
        .send(grpc_request(path, message))
        .await
        .map_err(|_| Code::Unavailable)?;
    assert_eq!(res.status(), 200, "{res:?}");
    if let Some(code) = grpc_status(res.headers()) {
        assert_ne!(code, 0, "a trailers-only OK to a unary call has no message");
        return Err(Code::from(code));
    }
    let whole = res
        .into_body()
        .collect()
        .await
        .map_err(|_| Code::Unavailable)?;
    let code = whole.trailers().and_then(grpc_status);
    let mut raw = BytesMut::from(&whole.to_bytes()[..]);
    match code {
        Some(0) => {}
        Some(code) => return Err(Code::from(code)),
        None => panic!("a gRPC answer with no grpc-status"),
    }
    let m = take_message(&mut raw).unwrap().expect("one whole message");
    assert!(raw.is_empty(), "{} bytes after the message", raw.len());
    Ok(decode_exact(&m).unwrap())
}

/// A unary request's one message.
pub async fn request_message<M: Message + Default>(req: Request<Incoming>) -> M {
    let whole = req.into_body().collect().await.unwrap().to_bytes();
    let mut raw = BytesMut::from(&whole[..]);
    let m = take_message(&mut raw).unwrap().expect("one whole message");
    assert!(raw.is_empty(), "{} bytes after the message", raw.len());
    decode_exact(&m).unwrap()
}

/// A unary answer: `message`, then `grpc-status: 0`.
pub fn answer(message: &impl Message) -> Response<Body> {
    let data = grpc_frame(&message.encode_to_vec());
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let frames = [Ok(Frame::data(data)), Ok(Frame::trailers(trailers))];
    Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync())
        .unwrap()
}

/// A trailers-only gRPC failure.
pub fn refuse(code: Code, message: &str) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", (code as i32).to_string())
        .header("grpc-message", message)
        .body(boxed(http_body_util::Empty::new()))
        .unwrap()
}

/// `grpc.health.v1` messages, declared here rather than taken from tonic-health.
#[derive(Clone, PartialEq, Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct HealthCheckResponse {
    /// 1 is SERVING.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
