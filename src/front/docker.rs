//! The Docker Engine API front door: a transparent HTTP/1.1 proxy in which `POST /session`
//! (the build session of `docker build` and the buildx docker driver) is joined through the
//! splice instead of passed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{mpsc, Mutex, OwnedSemaphorePermit};

use super::daemon::{AbortOnDrop, DaemonError, DialFailure, DIAL_TIMEOUT};
use super::grpc;
use super::{Context, Daemon, GateError, Io, UpstreamKind};
use crate::session::{self, advertise_secrets, session_info, SessionInfo};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Work that continues on a connection after it was upgraded (a session splice, a hijacked
/// attach stream); run by the connection's own task, so it ends with the connection.
type Upgraded = BoxFuture<'static, ()>;

/// Serves one client connection: every request goes to a dedicated upstream connection, so
/// keep-alive, ordering and hijacking behave as they would directly. The upstream connection is
/// opened by the first complete request, not before.
pub async fn serve_connection(client: impl Io, daemon: Arc<Daemon>, ctx: Context) {
    let (upgrades, mut upgraded) = mpsc::unbounded_channel::<Upgraded>();
    let (stop, idle, activity) = (ctx.stop.clone(), ctx.idle_timeout, ctx.activity.clone());
    let state = Arc::new(Conn {
        send: Mutex::new(None),
        daemon,
        ctx,
        upgrades,
        in_flight: AtomicUsize::new(0),
        upgraded: AtomicBool::new(false),
    });
    let service = hyper::service::service_fn(move |req| Arc::clone(&state).exchange(req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Runs from the end of one exchange until the next request's head is complete.
        .header_read_timeout(crate::bound::clamp(idle))
        .serve_connection(TokioIo::new(client), service)
        .with_upgrades();
    tokio::pin!(conn);
    let leave = async {
        tokio::select! {
            () = stop.cancelled() => {}
            () = activity.shed() => {}
        }
    };
    let served = tokio::select! {
        served = &mut conn => served,
        () = leave => {
            // Closes an idle connection now; a request in flight finishes first.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
    // Everything spawned for an upgraded request lives here, inside this task.
    while let Ok(job) = upgraded.try_recv() {
        job.await;
    }
}

async fn connect(daemon: &Daemon) -> Result<(SendRequest<Body>, AbortOnDrop), DaemonError> {
    let io = daemon.connect_http1().await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| daemon.error(DialFailure::Exchange(e)))?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "daemon connection ended with an error");
        }
    });
    Ok((send, AbortOnDrop(task.abort_handle())))
}

struct Conn {
    send: Mutex<Option<(SendRequest<Body>, AbortOnDrop)>>,
    daemon: Arc<Daemon>,
    ctx: Context,
    upgrades: mpsc::UnboundedSender<Upgraded>,
    /// Exchanges whose answer is not yet fully sent.
    in_flight: AtomicUsize,
    /// The connection was handed to an upgraded protocol: never idle again.
    upgraded: AtomicBool,
}

/// Marks the connection idle when the last answer in flight is sent (its body dropped).
struct Exchange(Arc<Conn>);

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
            && !self.0.upgraded.load(Ordering::Acquire)
        {
            self.0.ctx.activity.idle();
        }
    }
}

impl Conn {
    /// One request and its answer, during which the connection is busy.
    async fn exchange(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, hyper::Error> {
        self.ctx.activity.busy();
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let exchange = Exchange(Arc::clone(&self));
        let res = self.handle(req).await?;
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            exchange.0.upgraded.store(true, Ordering::Release);
        }
        Ok(res.map(|body| {
            body.map_frame(move |frame| {
                let _sending = &exchange;
                frame
            })
            .boxed_unsync()
        }))
    }

    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, hyper::Error> {
        if let Some(refusal) = self.buildkit_refusal().await {
            return Ok(refusal);
        }
        let kind = upgrade_kind(&req);
        let admitted = match self.admit(&mut req, kind) {
            Ok(admitted) => admitted,
            Err(why) => return Ok(plain_response(StatusCode::TOO_MANY_REQUESTS, why)),
        };
        let client_upgrade = req
            .headers()
            .contains_key(UPGRADE)
            .then(|| hyper::upgrade::on(&mut req));
        let mut res = match self.forward_or_502(req, kind).await {
            Ok(res) => res,
            Err(refusal) => return Ok(refusal),
        };
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                self.splice(client_upgrade, &mut res, kind, admitted);
            }
        }
        Ok(res.map(BodyExt::boxed_unsync))
    }

    /// The answer to a Docker client when the upstream turned out to be buildkitd.
    async fn buildkit_refusal(&self) -> Option<Response<Body>> {
        if !matches!(self.daemon.kind().await, Ok(UpstreamKind::Buildkit)) {
            return None;
        }
        let message = format!(
            "irsa-secrets fronts buildkitd at {}: point buildctl --addr or the buildx remote \
             driver at this socket; DOCKER_HOST needs a helper in front of dockerd",
            self.daemon.upstream
        );
        Some(error_response(StatusCode::BAD_GATEWAY, &message))
    }

    /// For a `/session` upgrade: the session, admitted under the listener's limits (with its
    /// permit), and the secrets it may ask for advertised in `req`; else `None`, or why the
    /// limits refuse it.
    fn admit(
        &self,
        req: &mut Request<Incoming>,
        kind: Option<UpgradeKind>,
    ) -> Result<Option<(SessionInfo, Option<OwnedSemaphorePermit>)>, GateError> {
        if kind != Some(UpgradeKind::Session) {
            return Ok(None);
        }
        let info = session_info(req.headers(), self.ctx.peer);
        let permit = self.ctx.admit_session(&info)?;
        advertise_secrets(req.headers_mut(), &info);
        Ok(Some((info, permit)))
    }

    /// [`Self::forward`], or, when the daemon did not answer, the 502 that says so.
    async fn forward_or_502(
        &self,
        req: Request<Incoming>,
        kind: Option<UpgradeKind>,
    ) -> Result<Response<Incoming>, Response<Body>> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        self.forward(req, kind).await.map_err(|e| {
            tracing::warn!(method = %crate::bound::quote(method.as_str()), path = %crate::bound::quote(&path), upstream = %self.daemon.upstream, error = %e, "daemon did not answer");
            self.ctx
                .provider
                .metrics()
                .upstream_error(self.ctx.provider.listener());
            error_response(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "irsa-secrets: {e}. Check that the Docker daemon is running and that \
                     --upstream points at its socket"
                ),
            )
        })
    }

    /// Queues the work of an upgraded exchange on the connection's task: the session joined to
    /// the provider (its permit held until it ends), `/grpc` served, anything else piped.
    fn splice(
        &self,
        client_upgrade: OnUpgrade,
        res: &mut Response<Incoming>,
        kind: Option<UpgradeKind>,
        admitted: Option<(SessionInfo, Option<OwnedSemaphorePermit>)>,
    ) {
        let daemon_upgrade = hyper::upgrade::on(res);
        let ctx = self.ctx.clone();
        let job: Upgraded = Box::pin(async move {
            let (client, daemon) = match tokio::try_join!(client_upgrade, daemon_upgrade) {
                Ok(pair) => pair,
                Err(e) => return tracing::warn!(error = %e, "upgrade failed"),
            };
            let (client, daemon) = (TokioIo::new(client), TokioIo::new(daemon));
            match (kind, admitted) {
                (Some(UpgradeKind::Session), Some((info, permit))) => {
                    session::join(client, daemon, info, ctx.provider).await;
                    drop(permit);
                }
                (Some(UpgradeKind::Grpc), _) => grpc::serve(client, daemon, ctx).await,
                _ => pipe(client, daemon).await,
            }
        });
        let _ = self.upgrades.send(job);
    }

    /// Sends `req` on the daemon connection, dialing it first if needed. dockerd answers the
    /// `/session` and `/grpc` upgrades at once, so those answers have [`DIAL_TIMEOUT`]; other
    /// answers (`wait`, `attach`, ...) take as long as they take.
    async fn forward(
        &self,
        req: Request<Incoming>,
        kind: Option<UpgradeKind>,
    ) -> Result<Response<Incoming>, DaemonError> {
        let mut slot = self.send.lock().await;
        if slot.as_ref().is_none_or(|(send, _)| send.is_closed()) {
            *slot = Some(connect(&self.daemon).await?);
        }
        let (send, _) = slot.as_mut().expect("connected above");
        let exchange = async {
            send.ready().await?;
            send.send_request(req.map(BodyExt::boxed_unsync)).await
        };
        let answer = match kind {
            Some(kind) => tokio::time::timeout(DIAL_TIMEOUT, exchange)
                .await
                .map_err(|_| {
                    self.daemon.error(DialFailure::UpgradeTimeout {
                        path: kind.path(),
                        timeout: DIAL_TIMEOUT,
                    })
                })?,
            None => exchange.await,
        };
        answer.map_err(|e| self.daemon.error(DialFailure::Exchange(e)))
    }
}

/// Answers every request on `client` with `status` and `message`, for clients the helper
/// cannot or may not serve; then closes.
pub async fn refuse(client: impl Io, status: StatusCode, message: String) {
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let res = error_response(status, &message);
        async move { Ok::<_, std::convert::Infallible>(res) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await;
}

/// Copies bytes both ways until both sides are done (hijacked attach/exec streams, `/grpc`).
async fn pipe(mut client: impl Io, mut daemon: impl Io) {
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut daemon).await {
        tracing::debug!(error = %e, "upgraded stream ended with an error");
    }
}

/// The upgrades the front door joins instead of passing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpgradeKind {
    /// `POST /session`: a build session (docker build, buildx docker driver).
    Session,
    /// `POST /grpc`: the BuildKit Control API (buildx docker driver, bake).
    Grpc,
}

impl UpgradeKind {
    fn path(self) -> &'static str {
        match self {
            UpgradeKind::Session => "/session",
            UpgradeKind::Grpc => "/grpc",
        }
    }
}

/// Which joined upgrade a request asks for, with or without a `/vX.Y` prefix.
fn upgrade_kind(req: &Request<Incoming>) -> Option<UpgradeKind> {
    if req.method() != http::Method::POST || !req.headers().contains_key(UPGRADE) {
        return None;
    }
    match strip_version(req.uri().path()) {
        "/session" => Some(UpgradeKind::Session),
        "/grpc" => Some(UpgradeKind::Grpc),
        _ => None,
    }
}

/// The Engine API accepts every path with or without a `/vX.Y` prefix.
fn strip_version(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some(i) = rest.find('/') {
            if rest[..i].chars().all(|c| c.is_ascii_digit() || c == '.') {
                return &rest[i..];
            }
        }
    }
    path
}

/// A plain-text refusal, for clients that print the raw body (a refused session upgrade).
fn plain_response(status: StatusCode, message: impl std::fmt::Display) -> Response<Body> {
    response(status, "text/plain", message.to_string())
}

/// An error as the Engine API words them (`{"message": ...}`), closing the connection.
fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut res = response(status, "application/json", body);
    res.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    res
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut res = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_and_plain_paths_match() {
        assert_eq!(strip_version("/v1.41/session"), "/session");
        assert_eq!(strip_version("/session"), "/session");
        assert_eq!(strip_version("/v1.41/containers/json"), "/containers/json");
        assert_eq!(strip_version("/volumes/v1/x"), "/volumes/v1/x");
        assert_eq!(strip_version("/vx/session"), "/vx/session");
    }
}
