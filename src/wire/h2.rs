//! HTTP/2 plumbing shared by the splice and the gRPC front door: connection builders with
//! windows sized for build contexts, and raw forwarding of a call to a peer.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::future::BoxFuture;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2::{Connection, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::body::Body;
use tonic::Status;

/// HTTP/2 flow-control windows. Build contexts stream through the helper; the protocol's
/// 64 KiB default would cap them at one window per round trip.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest frame we accept: fewer, larger frames mean fewer headers and wakeups per byte.
const MAX_FRAME: u32 = 1024 * 1024;
/// Bytes queued per stream before a writer waits.
const SEND_BUFFER: usize = 4 * 1024 * 1024;

/// Read and write buffers of each HTTP/2 connection, while bytes pass. h2 reads at most a few
/// KiB at a time; one large read instead cuts the read syscalls on the data path about fivefold,
/// and the write buffer turns each frame's header-plus-payload writev into one send (measured
/// with strace and `scripts/bench` on a 400 MB build context: helper CPU per MB down by about a
/// tenth).
const IO_BUFFER: usize = 256 * 1024;

/// A stream with the helper's read and write buffers, ready for hyper.
pub fn buffered<T: AsyncRead + AsyncWrite>(io: T) -> TokioIo<Coalesce<Buffers<T>>> {
    TokioIo::new(Coalesce {
        inner: Buffers {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            sent: 0,
        },
        pending: 0,
        fresh: false,
        deferred: 0,
    })
}

/// Read-ahead and write-behind buffers of `IO_BUFFER` bytes that exist only while bytes pass.
///
/// The read buffer is taken for a read and given back when the socket has nothing more (the
/// read that would wait); the write buffer is taken for a write and given back once its bytes
/// are sent. So an idle connection holds neither: thousands of idle peers cost the kernel's
/// socket buffers and h2's own state, not 512 KiB each (tokio's `BufStream` allocates and zeroes
/// both buffers up front and keeps them for the connection's life). Buffers given back wait in
/// a small per-thread stock for the next taker, so the data path reuses warm memory instead of
/// asking the allocator (and the kernel, for fresh pages) on every turn.
pub struct Buffers<T> {
    io: T,
    /// Bytes read ahead and not yet handed to the reader.
    read: BytesMut,
    /// Bytes written and not yet sent; `..sent` of them already are.
    write: Vec<u8>,
    sent: usize,
}

/// Buffers of each kind kept per thread between takers: at most 2 MiB per runtime thread.
const SPARES: usize = 4;

thread_local! {
    static SPARE_READ: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static SPARE_WRITE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Puts `buf` in `stock` for the next taker, or frees it if the stock is full.
fn give_back<B>(stock: &'static std::thread::LocalKey<RefCell<Vec<B>>>, buf: B) {
    stock.with_borrow_mut(|spares| {
        if spares.len() < SPARES {
            spares.push(buf);
        }
    });
}

/// An empty read buffer of at least `IO_BUFFER` bytes.
fn take_read() -> BytesMut {
    SPARE_READ
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(IO_BUFFER))
}

/// Gives an empty read buffer back (drained reads keep their whole allocation as room).
fn give_read(buf: BytesMut) {
    if buf.capacity() >= IO_BUFFER {
        give_back(&SPARE_READ, buf);
    }
}

/// An empty write buffer of at least `IO_BUFFER` bytes.
fn take_write() -> Vec<u8> {
    SPARE_WRITE
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(IO_BUFFER))
}

/// Gives a sent write buffer back.
fn give_write(mut buf: Vec<u8>) {
    buf.clear();
    give_back(&SPARE_WRITE, buf);
}

impl<T: AsyncWrite + Unpin> Buffers<T> {
    /// Sends the buffered bytes; once all are out the buffer is freed.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.write.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.write[self.sent..])) {
                Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if self.write.capacity() > 0 {
            give_write(std::mem::take(&mut self.write));
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `n` more bytes: sends what is buffered if they would not fit. Returns
    /// whether they go into the buffer (false: they are too large, write them directly).
    fn poll_room(&mut self, cx: &mut Context<'_>, n: usize) -> Poll<std::io::Result<bool>> {
        if self.write.len() + n > IO_BUFFER {
            ready!(self.poll_send(cx))?;
        }
        if n == 0 || n >= IO_BUFFER {
            return Poll::Ready(Ok(false));
        }
        if self.write.capacity() == 0 {
            self.write = take_write();
        }
        Poll::Ready(Ok(true))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Buffers<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.read.is_empty() {
            if buf.remaining() >= IO_BUFFER {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            if this.read.capacity() == 0 {
                this.read = take_read();
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.read) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                other => {
                    // Nothing to read yet, the end, or an error: hold no buffer meanwhile.
                    give_read(std::mem::take(&mut this.read));
                    return other.map_ok(|_| ());
                }
            }
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        if this.read.is_empty() {
            // Drained: its whole allocation is room for the next read (no allocation).
            this.read.reserve(IO_BUFFER);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Buffers<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !ready!(self.poll_room(cx, buf.len()))? {
            return Pin::new(&mut self.io).poll_write(cx, buf);
        }
        self.write.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let n = bufs.iter().map(|b| b.len()).sum();
        if !ready!(self.poll_room(cx, n))? {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            self.write.extend_from_slice(b);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Below this many buffered bytes a flush may be deferred.
const COALESCE_BELOW: usize = 128 * 1024;
/// Flushes deferred in a row before one goes through regardless.
const MAX_DEFERRED: u8 = 16;

/// Turns h2's flush after every DATA frame into one write per connection turn.
///
/// h2 flushes after each large DATA frame and once more when it has nothing left to send. A
/// flush that follows fresh writes is deferred (the task is woken so it comes back); the flush
/// that follows no writes, the idle one, goes out. So every frame queued in one turn of the
/// connection leaves in one send; bytes wait at most `MAX_DEFERRED` turns or until
/// `COALESCE_BELOW` of them are buffered.
pub struct Coalesce<T> {
    inner: T,
    /// Bytes written since the last real flush.
    pending: usize,
    /// Bytes were written since the last flush call.
    fresh: bool,
    /// Flushes deferred since the last real one.
    deferred: u8,
}

impl<T> Coalesce<T> {
    fn wrote(&mut self, n: usize) {
        self.pending += n;
        self.fresh |= n > 0;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.fresh && self.pending < COALESCE_BELOW && self.deferred < MAX_DEFERRED {
            self.fresh = false;
            self.deferred += 1;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.pending = 0;
        self.fresh = false;
        self.deferred = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// HTTP/2 keepalive of the helper's servers: a peer that has sent nothing for `interval` gets
/// a PING, and one that leaves it unanswered for `timeout` is disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// Silence before a PING.
    pub interval: Duration,
    /// How long the PING may go unanswered.
    pub timeout: Duration,
}

impl KeepAlive {
    /// The helper's servers face BuildKit clients (buildctl, buildx, the docker CLI) and, inside
    /// a session, the daemon: grpc-go clients, which answer any PING and enforce no rate on a
    /// server's (only grpc-go servers send `too_many_pings`). A silent peer is cut after about
    /// 70 s, no sooner than BuildKit's most patient session health check gives up on a silent
    /// client (v0.10.4 to v0.29: a 30 s check, one failure tolerated, 5 s apart: about 70 s;
    /// v0.30 and later: about 35 s; v0.8: 10 s), so no session BuildKit still keeps is cut.
    pub const DEFAULT: KeepAlive = KeepAlive {
        interval: Duration::from_secs(40),
        timeout: Duration::from_secs(30),
    };
}

/// An HTTP/2 server builder with the helper's window sizes and keepalive.
pub fn server() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    server_with(KeepAlive::DEFAULT)
}

/// Like [`server`], with another keepalive (tests use short ones).
pub fn server_with(keep_alive: KeepAlive) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buf_size(SEND_BUFFER)
        .timer(TokioTimer::new())
        .keep_alive_interval(keep_alive.interval)
        .keep_alive_timeout(keep_alive.timeout);
    b
}

/// Opens an HTTP/2 client connection over `io`; the connection future must be polled.
///
/// Without keepalive PINGs: the peers are grpc-go servers (buildkitd, dockerd's `/grpc`) whose
/// default enforcement allows one PING per 5 minutes and none without an open stream; more
/// earns a GOAWAY `too_many_pings`. A daemon that goes away closes its socket.
pub async fn handshake<T>(
    io: T,
) -> Result<
    (
        Client,
        Connection<TokioIo<Coalesce<Buffers<T>>>, Body, TokioExecutor>,
    ),
    hyper::Error,
>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buf_size(SEND_BUFFER)
        .handshake(buffered(io))
        .await?;
    Ok((Client(send), conn))
}

/// The far end of an HTTP/2 client connection, as a tower service (what tonic clients need).
#[derive(Clone)]
pub struct Client(SendRequest<Body>);

impl Client {
    /// Whether the connection has closed: no call can go through it any more.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Forwards a call as is: headers, streaming body and trailers both ways. A peer that is
    /// gone becomes `Unavailable` with `what` named, so the caller sees who failed.
    /// Every data frame of both bodies is reported to `count` (its length in bytes).
    pub async fn forward(
        &mut self,
        req: Request<Incoming>,
        what: &str,
        count: impl Fn(u64) + Clone + Send + Sync + 'static,
    ) -> Response<Body> {
        let path = req.uri().path().to_string();
        let req = req.map(|body| counted(body, count.clone()));
        match tower::ServiceExt::oneshot(self.clone(), req).await {
            Ok(res) => res.map(|body| counted(body, count)),
            Err(e) => {
                let (e, path) = (chain(&e), crate::bound::quote(&path));
                tracing::debug!(%path, error = %e, "{what} did not answer");
                Status::unavailable(format!("irsa-secrets: {what} did not answer {path}: {e}"))
                    .into_http()
            }
        }
    }
}

impl tower::Service<Request<Body>> for Client {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<'static, Result<Response<Incoming>, hyper::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // HTTP/2 needs :scheme and :authority; calls inside a session carry `localhost`.
        if req.uri().scheme().is_none() {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            if let Ok(uri) = Uri::builder()
                .scheme("http")
                .authority("localhost")
                .path_and_query(path)
                .build()
            {
                *req.uri_mut() = uri;
            }
        }
        Box::pin(self.0.send_request(req))
    }
}

/// A forwarded body, its data counted as it passes (one call per frame).
fn counted(body: Incoming, count: impl Fn(u64) + Send + Sync + 'static) -> Body {
    Body::new(
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                count(data.len() as u64);
            }
            frame
        })
        .map_err(to_status)
        .boxed_unsync(),
    )
}

/// A body error as a gRPC status, so forwarded bodies share tonic's body type.
pub fn to_status(e: hyper::Error) -> Status {
    Status::from_error(Box::new(e))
}

/// An error with its causes, `outer: inner: root`, for messages that must say what happened
/// (hyper's own text stops at "connection error").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// Counts wakes, to see that a deferred flush asks to be polled again.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A sink that records how many bytes each real flush carried.
    #[derive(Default)]
    struct Sink {
        unflushed: usize,
        flushes: Vec<usize>,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.unflushed += buf.len();
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            let n = std::mem::take(&mut self.unflushed);
            self.flushes.push(n);
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn coalesce() -> Coalesce<Sink> {
        Coalesce {
            inner: Sink::default(),
            pending: 0,
            fresh: false,
            deferred: 0,
        }
    }

    /// Writes `n` bytes then flushes, as h2 does after each DATA frame.
    fn frame(c: &mut Coalesce<Sink>, cx: &mut Context<'_>, n: usize) {
        let data = vec![0u8; n];
        assert!(matches!(Pin::new(&mut *c).poll_write(cx, &data), Poll::Ready(Ok(m)) if m == n));
        assert!(matches!(
            Pin::new(&mut *c).poll_flush(cx),
            Poll::Ready(Ok(()))
        ));
    }

    #[test]
    fn buffers_exist_only_while_bytes_pass() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut b = buffered(near).into_inner().inner;
        assert!(b.write.capacity() == 0 && b.read.capacity() == 0);

        assert!(Pin::new(&mut b).poll_write(&mut cx, b"frame").is_ready());
        assert!(b.write.capacity() >= IO_BUFFER, "a write takes the buffer");
        assert!(Pin::new(&mut b).poll_flush(&mut cx).is_ready());
        assert_eq!(b.write.capacity(), 0, "sent: the buffer is given back");

        let mut got = [0u8; 8];
        let mut buf = tokio::io::ReadBuf::new(&mut got);
        assert!(Pin::new(&mut b).poll_read(&mut cx, &mut buf).is_pending());
        assert_eq!(b.read.capacity(), 0, "nothing to read: no buffer held");
        assert!(Pin::new(&mut far)
            .poll_write(&mut cx, b"0123456789")
            .is_ready());
        assert!(Pin::new(&mut b).poll_read(&mut cx, &mut buf).is_ready());
        assert_eq!(buf.filled(), b"01234567");
        assert_eq!(&b.read[..], b"89", "the rest waits in the buffer");
        let mut buf = tokio::io::ReadBuf::new(&mut got);
        assert!(Pin::new(&mut b).poll_read(&mut cx, &mut buf).is_ready());
        assert_eq!(buf.filled(), b"89");
        assert!(Pin::new(&mut b).poll_read(&mut cx, &mut buf).is_pending());
        assert_eq!(b.read.capacity(), 0, "drained and waiting: given back");
    }

    #[test]
    fn frames_of_one_turn_leave_in_one_flush_and_the_idle_flush_sends_them() {
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = coalesce();
        for _ in 0..4 {
            frame(&mut c, &mut cx, 16_393);
        }
        assert!(
            c.inner.flushes.is_empty(),
            "small frames wait for the idle flush"
        );
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            4,
            "each deferral asks for another turn"
        );
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
        assert_eq!(c.inner.flushes, [4 * 16_393]);
    }

    #[test]
    fn large_or_long_deferred_writes_flush_at_once() {
        let waker = std::task::Waker::from(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        let mut c = coalesce();
        frame(&mut c, &mut cx, COALESCE_BELOW);
        assert_eq!(c.inner.flushes, [COALESCE_BELOW]);
        for _ in 0..=MAX_DEFERRED {
            frame(&mut c, &mut cx, 10);
        }
        assert_eq!(
            c.inner.flushes,
            [COALESCE_BELOW, 10 * (MAX_DEFERRED as usize + 1)]
        );
    }
}
