//! The BuildKit Control API, proxied over HTTP/2: every call passes as raw bytes, except
//! `Control/Session`, whose tunnel goes through the splice, and `Secrets/GetSecret`, which the
//! helper answers itself (a probe: no daemon serves that service, builds reach it inside their
//! session). Used for clients of a buildkitd upstream and for dockerd's `/grpc` upgrade (the
//! buildx docker driver's control connection).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tonic::body::Body;
use tonic::Status;
use tower::Service;

use super::{Context, Daemon, Io};
use crate::session::{self, advertise_secrets, session_info};
use crate::wire::h2::{self, Client};
use crate::wire::proto::secrets::secrets_server::SecretsServer;
use crate::wire::proto::GET_SECRET_PATH;
use crate::wire::tunnel::{self, Outgoing};

/// How long a client whose daemon connection failed keeps getting that error before the
/// connection is closed.
const FAILED_GRACE: Duration = Duration::from_secs(5);

/// The tunnelled session call.
pub const SESSION_PATH: &str = "/moby.buildkit.v1.Control/Session";

/// Serves one client's HTTP/2 connection against an upstream HTTP/2 connection already open
/// (dockerd's `/grpc` upgrade); returns when either ends and the sessions it carried are done.
pub async fn serve(client: impl Io, upstream: impl Io, ctx: Context) {
    serve_link(client, Link::new(State::Given(Box::new(upstream)), ctx)).await
}

/// Serves one client's HTTP/2 connection, dialing `daemon` when the first call that needs it
/// arrives (probes do not); a failed dial answers that call and the next one dials again.
pub async fn serve_lazily(client: impl Io, daemon: Arc<Daemon>, ctx: Context) {
    serve_link(client, Link::new(State::Dial(daemon), ctx)).await
}

/// Work of one client connection that outlives the call that started it, run on the
/// connection's own task sets so that it ends with the connection.
enum Task {
    /// Drives the daemon connection; dropped when the client connection is done.
    Daemon(BoxFuture<'static, ()>),
    /// A session splice; waited for at the end (the drain timeout cuts it).
    Session(BoxFuture<'static, ()>),
}

/// The daemon side of one client connection.
struct Link {
    state: tokio::sync::Mutex<State>,
    /// Set once the daemon connection is gone, with the reason; calls in flight and new ones
    /// then answer Unavailable instead of waiting on a dead connection.
    failure: watch::Sender<Option<String>>,
    tasks: mpsc::UnboundedSender<Task>,
    ctx: Context,
}

enum State {
    /// Opened by the caller, not yet used.
    Given(Box<dyn Io>),
    /// To be dialed.
    Dial(Arc<Daemon>),
    /// Up (or gone, which `failure` says).
    Up(Client),
    /// The given connection failed its handshake: why.
    Broken(String),
}

impl Link {
    fn new(state: State, ctx: Context) -> (Self, mpsc::UnboundedReceiver<Task>) {
        let (tasks, queued) = mpsc::unbounded_channel();
        let link = Self {
            state: tokio::sync::Mutex::new(state),
            failure: watch::Sender::new(None),
            tasks,
            ctx,
        };
        (link, queued)
    }

    fn spawn(&self, task: Task) {
        // The receiver lives as long as the connection's task, which outlives every call.
        let _ = self.tasks.send(task);
    }

    /// The daemon connection, opened on first use.
    async fn peer(&self) -> Result<Client, Status> {
        let mut state = self.state.lock().await;
        let unavailable = |reason: String| {
            tracing::warn!(error = %reason, "daemon connection failed");
            self.ctx
                .provider
                .metrics()
                .upstream_error(self.ctx.provider.listener());
            Status::unavailable(reason)
        };
        let io = match std::mem::replace(&mut *state, State::Broken(String::new())) {
            State::Up(peer) => {
                *state = State::Up(peer.clone());
                return Ok(peer);
            }
            State::Broken(reason) => {
                *state = State::Broken(reason.clone());
                return Err(Status::unavailable(reason));
            }
            State::Given(io) => io,
            State::Dial(daemon) => {
                *state = State::Dial(Arc::clone(&daemon));
                daemon.connect_grpc().await.map_err(|e| {
                    unavailable(format!(
                        "irsa-secrets: {e}; check that it is running and that --upstream points \
                         at it"
                    ))
                })?
            }
        };
        let (heard, first_word) = oneshot::channel();
        let io = Heard {
            io,
            heard: Some(heard),
        };
        let (peer, conn) = match h2::handshake(io).await {
            Ok(pair) => pair,
            Err(e) => {
                let reason = format!(
                    "irsa-secrets: HTTP/2 with the daemon failed: {}",
                    h2::chain(&e)
                );
                if !matches!(*state, State::Dial(_)) {
                    *state = State::Broken(reason.clone());
                }
                return Err(unavailable(reason));
            }
        };
        let failure = self.failure.clone();
        self.spawn(Task::Daemon(Box::pin(async move {
            let reason = match conn.await {
                Ok(()) => "the daemon closed the connection".to_string(),
                Err(e) => h2::chain(&e),
            };
            tracing::warn!(error = %reason, "daemon HTTP/2 connection ended");
            failure.send_replace(Some(reason));
        })));
        // An HTTP/2 server speaks first (its SETTINGS); a daemon that refuses the connection
        // says why in what it sends instead (a TLS 1.3 server refusing the client's
        // certificate, in an alert). Writing a call before reading that would get a broken
        // pipe in place of the reason.
        let mut failed = self.failure.subscribe();
        tokio::select! {
            _ = first_word => {}
            _ = failed.wait_for(Option::is_some) => {}
            () = tokio::time::sleep(FIRST_WORD) => {}
        }
        *state = State::Up(peer.clone());
        Ok(peer)
    }
}

/// How long a new daemon connection is given to speak before the first call is sent anyway.
const FIRST_WORD: Duration = Duration::from_secs(1);

/// A daemon connection that reports when the first bytes arrive from it.
struct Heard<T> {
    io: T,
    heard: Option<oneshot::Sender<()>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Heard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            if let Some(heard) = self.heard.take() {
                let _ = heard.send(());
            }
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Heard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

async fn serve_link(client: impl Io, (link, mut queued): (Link, mpsc::UnboundedReceiver<Task>)) {
    let link = Arc::new(link);
    let stop = link.ctx.stop.clone();
    let mut failed = link.failure.subscribe();
    let service = hyper::service::service_fn(move |req| route(Arc::clone(&link), req));
    let mut server = Box::pin(h2::server().serve_connection(h2::buffered(client), service));
    let mut tasks = Tasks::default();
    // Once the daemon is gone: for a grace period every call gets Unavailable with the reason,
    // then the client is asked to go away (and reconnect), then it is cut.
    let mut grace: Option<(Instant, bool)> = None;
    let mut stopping = false;
    loop {
        let deadline = grace.map(|(at, _)| at);
        tokio::select! {
            served = &mut server => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "client HTTP/2 connection ended");
                }
                break;
            }
            Some(task) = queued.recv() => tasks.spawn(task),
            Some(_) = tasks.sessions.join_next(), if !tasks.sessions.is_empty() => {}
            Ok(()) = failed.changed(), if grace.is_none() => {
                grace = Some((Instant::now() + FAILED_GRACE, false));
            }
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                if grace.is_some_and(|(_, asked)| asked) {
                    break;
                }
                server.as_mut().graceful_shutdown();
                grace = Some((Instant::now() + FAILED_GRACE, true));
            }
            () = stop.cancelled(), if !stopping => {
                // Shutdown: no new calls; the connection ends when its calls in flight are done.
                stopping = true;
                server.as_mut().graceful_shutdown();
            }
        }
    }
    drop(server);
    while let Ok(task) = queued.try_recv() {
        tasks.spawn(task);
    }
    // Sessions in flight finish; the daemon connection is dropped after them.
    while tasks.sessions.join_next().await.is_some() {}
}

/// A client connection's tasks; dropping it aborts them.
#[derive(Default)]
struct Tasks {
    daemon: JoinSet<()>,
    sessions: JoinSet<()>,
}

impl Tasks {
    fn spawn(&mut self, task: Task) {
        match task {
            Task::Daemon(f) => drop(self.daemon.spawn(f)),
            Task::Session(f) => drop(self.sessions.spawn(f)),
        }
    }
}

/// A GetSecret call on the helper's socket itself: `irsa-secrets probe` or another gRPC client
/// asking what a build on this listener would get.
fn is_probe(req: &Request<Incoming>) -> bool {
    req.uri().path() == GET_SECRET_PATH
}

/// Answers a probe with the listener's provider, through the same service `serve` runs: the
/// listener's id policy, audit records (marked `probe`) and metrics apply as for a build. The
/// peer allowlists were checked when the connection was admitted; a probe is no session, so
/// `max_sessions` does not count it.
async fn probe(ctx: &Context, mut req: Request<Incoming>) -> Response<Body> {
    if let Some(peer) = ctx.peer {
        req.extensions_mut().insert(peer);
    }
    SecretsServer::new(ctx.provider.clone())
        .call(req)
        .await
        .unwrap_or_else(|never| match never {})
}

/// Answers every call on `client` with `status`: the clear error an HTTP/2 client gets when it
/// may not use the socket.
pub async fn refuse(client: impl Io, status: Status) {
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let res = status.clone().into_http::<Body>();
        async move { Ok::<_, Infallible>(res) }
    });
    let _ = h2::server()
        .serve_connection(TokioIo::new(client), service)
        .await;
}

async fn route(link: Arc<Link>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    link.ctx.activity.busy();
    let failed = |reason: &str| {
        let message = format!("irsa-secrets: the daemon connection failed: {reason}; check the daemon and the helper's --upstream and TLS flags");
        Ok(Status::unavailable(message).into_http())
    };
    if is_probe(&req) {
        return Ok(probe(&link.ctx, req).await);
    }
    let mut failure = link.failure.subscribe();
    let mut daemon = match link.peer().await {
        Ok(peer) => peer,
        Err(status) => return Ok(status.into_http()),
    };
    if let Some(reason) = failure.borrow_and_update().as_deref() {
        return failed(reason);
    }
    let call = async {
        if req.uri().path() != SESSION_PATH {
            return daemon
                .forward(req, "the daemon", link.ctx.provider.metrics().forwarded())
                .await;
        }
        join_session(daemon, &link, req).await
    };
    tokio::select! {
        res = call => Ok(res),
        Ok(()) = failure.changed() => {
            let reason = failure.borrow().clone().unwrap_or_default();
            failed(&reason)
        }
    }
}

/// Re-originates the client's session call upstream with the same metadata (plus GetSecret in
/// the method list) and splices the two tunnels.
async fn join_session(daemon: Client, link: &Link, req: Request<Incoming>) -> Response<Body> {
    let ctx = &link.ctx;
    let info = session_info(req.headers(), ctx.peer);
    let permit = match ctx.admit_session(&info) {
        Ok(permit) => permit,
        Err(why) => return Status::resource_exhausted(why.to_string()).into_http(),
    };
    let (parts, client_body) = req.into_parts();
    // Our call to the daemon: its request body carries what we write into the daemon's tunnel.
    let (daemon_outbox, daemon_body_out) = tunnel::outgoing(Outgoing::Request);
    let mut upstream_req = Request::from_parts(parts, daemon_body_out);
    advertise_secrets(upstream_req.headers_mut(), &info);
    let response = match tower::ServiceExt::oneshot(daemon, upstream_req).await {
        Ok(res) if res.status().is_success() && !is_trailers_only(res.headers()) => res,
        Ok(res) => {
            tracing::warn!(session = ?crate::bound::quote(&info.id), status = %res.status(), "the daemon refused the session");
            return res.map(|b| {
                Body::new(http_body_util::BodyExt::boxed_unsync(
                    http_body_util::BodyExt::map_err(b, h2::to_status),
                ))
            });
        }
        Err(e) => {
            return Status::unavailable(format!(
                "irsa-secrets: the daemon did not accept the session: {e}"
            ))
            .into_http()
        }
    };
    let (res_parts, daemon_body_in) = response.into_parts();
    let daemon_tunnel = daemon_outbox.join(daemon_body_in, tunnel::Incoming::Response);
    let (client_outbox, client_body_out) = tunnel::outgoing(Outgoing::Response);
    let client_tunnel = client_outbox.join(client_body, tunnel::Incoming::Request);
    let provider = ctx.provider.clone();
    link.spawn(Task::Session(Box::pin(async move {
        session::join(client_tunnel, daemon_tunnel, info, provider).await;
        drop(permit);
    })));
    Response::from_parts(res_parts, client_body_out)
}

/// A gRPC error answered in the headers alone (no body, no trailers).
fn is_trailers_only(headers: &http::HeaderMap) -> bool {
    headers.get("grpc-status").is_some_and(|s| s != "0")
}
