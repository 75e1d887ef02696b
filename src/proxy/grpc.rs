//! The BuildKit Control API, proxied over HTTP/2: every call passes as raw bytes, except
//! `Control/Session`, whose tunnel goes through the splice, and `Secrets/GetSecret`, which the
//! helper answers itself (a probe: no daemon serves that service, builds reach it inside their
//! session). Used for clients of a buildkitd upstream and for dockerd's `/grpc` upgrade (the
//! buildx docker driver's control connection).

use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::watch;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tonic::body::BoxBody;
use tonic::Status;
use tower::Service;

use super::{Context, Io};
use crate::h2::{self, Peer};
use crate::proto::secrets::secrets_server::SecretsServer;
use crate::proto::GET_SECRET_PATH;
use crate::session::{self, SessionInfo};
use crate::tunnel::{self, Outgoing};

/// How long a client whose daemon connection failed keeps getting that error before the
/// connection is closed.
const FAILED_GRACE: Duration = Duration::from_secs(5);

/// The tunnelled session call.
pub const SESSION_PATH: &str = "/moby.buildkit.v1.Control/Session";
/// Session headers as gRPC metadata (lower-cased by BuildKit's client).
pub const SESSION_UUID: &str = "x-docker-expose-session-uuid";
/// One value per method the client's session serves.
pub const SESSION_METHOD: &str = "x-docker-expose-session-grpc-method";

/// Serves one client's HTTP/2 connection against one upstream HTTP/2 connection; returns when
/// either ends.
pub async fn serve(client: impl Io, upstream: impl Io, ctx: Context) {
    let (daemon, daemon_conn) = match h2::handshake(upstream).await {
        Ok(pair) => pair,
        Err(e) => {
            let reason = format!(
                "irsa-secrets: HTTP/2 with the daemon failed: {}",
                h2::chain(&e)
            );
            tracing::warn!(error = %reason, "daemon connection failed");
            ctx.provider
                .metrics()
                .upstream_error(ctx.provider.listener());
            return serve_without_daemon(client, Status::unavailable(reason), ctx).await;
        }
    };
    // Set once the daemon connection is gone, with the reason; calls in flight and new ones
    // then answer Unavailable instead of waiting on a dead connection.
    let (failure, failed) = watch::channel(None::<String>);
    let service = hyper::service::service_fn(move |req| {
        route(daemon.clone(), ctx.clone(), failed.clone(), req)
    });
    let server = h2::server().serve_connection(h2::buffered(client), service);
    tokio::pin!(server, daemon_conn);
    tokio::select! {
        r = &mut server => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "client HTTP/2 connection ended");
            }
            return;
        }
        r = &mut daemon_conn => {
            let reason = match r {
                Ok(()) => "the daemon closed the connection".to_string(),
                Err(e) => h2::chain(&e),
            };
            tracing::warn!(error = %reason, "daemon HTTP/2 connection ended");
            failure.send_replace(Some(reason));
        }
    }
    // The daemon is gone: for a grace period every call gets Unavailable with the reason, then
    // the client is asked to go away (and reconnect).
    if tokio::time::timeout(FAILED_GRACE, &mut server)
        .await
        .is_err()
    {
        server.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(FAILED_GRACE, server).await;
    }
}

/// Serves a client whose daemon cannot be reached: probes are answered (the identity does not
/// depend on the daemon), every other call gets `status`.
pub async fn serve_without_daemon(client: impl Io, status: Status, ctx: Context) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (ctx, status) = (ctx.clone(), status.clone());
        async move {
            Ok::<_, Infallible>(if is_probe(&req) {
                probe(&ctx, req).await
            } else {
                status.into_http()
            })
        }
    });
    let _ = h2::server()
        .serve_connection(TokioIo::new(client), service)
        .await;
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
async fn probe(ctx: &Context, mut req: Request<Incoming>) -> Response<BoxBody> {
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
        let res = status.clone().into_http();
        async move { Ok::<_, Infallible>(res) }
    });
    let _ = h2::server()
        .serve_connection(TokioIo::new(client), service)
        .await;
}

async fn route(
    mut daemon: Peer,
    ctx: Context,
    mut failure: watch::Receiver<Option<String>>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    let failed = |reason: &str| {
        let message = format!("irsa-secrets: the daemon connection failed: {reason}; check the daemon and the helper's --upstream and TLS flags");
        Ok(Status::unavailable(message).into_http())
    };
    if is_probe(&req) {
        return Ok(probe(&ctx, req).await);
    }
    if let Some(reason) = failure.borrow_and_update().as_deref() {
        return failed(reason);
    }
    let call = async {
        if req.uri().path() != SESSION_PATH {
            return daemon
                .forward(req, "the daemon", ctx.provider.metrics())
                .await;
        }
        join_session(daemon, ctx.clone(), req).await
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
async fn join_session(daemon: Peer, ctx: Context, req: Request<Incoming>) -> Response<BoxBody> {
    let info = session_info(req.headers(), ctx.peer);
    let permit = match ctx.admit_session(&info) {
        Ok(permit) => permit,
        Err(why) => return Status::resource_exhausted(why).into_http(),
    };
    let (parts, client_body) = req.into_parts();
    // Our call to the daemon: its request body carries what we write into the daemon's tunnel.
    let (daemon_outbox, daemon_body_out) = tunnel::outgoing(Outgoing::Request);
    let mut upstream_req = Request::from_parts(parts, daemon_body_out);
    advertise_secrets(upstream_req.headers_mut(), &info);
    let response = match tower::ServiceExt::oneshot(daemon, upstream_req).await {
        Ok(res) if res.status().is_success() && !is_trailers_only(res.headers()) => res,
        Ok(res) => {
            tracing::warn!(session = %info.id, status = %res.status(), "the daemon refused the session");
            return res.map(|b| {
                http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(
                    b,
                    h2::to_status,
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
    tokio::spawn(async move {
        session::join(client_tunnel, daemon_tunnel, info, ctx.provider).await;
        drop(permit);
    });
    Response::from_parts(res_parts, client_body_out)
}

/// A gRPC error answered in the headers alone (no body, no trailers).
fn is_trailers_only(headers: &http::HeaderMap) -> bool {
    headers.get("grpc-status").is_some_and(|s| s != "0")
}

/// Adds GetSecret to the method list the daemon sees when the client does not serve it: both
/// front doors re-originate sessions with it.
pub fn advertise_secrets(headers: &mut http::HeaderMap, info: &SessionInfo) {
    if !info.client_serves_secrets() {
        headers.append(SESSION_METHOD, HeaderValue::from_static(GET_SECRET_PATH));
    }
}

/// The session's id and method list, from the call's metadata.
pub fn session_info(headers: &http::HeaderMap, peer: Option<crate::audit::Peer>) -> SessionInfo {
    SessionInfo {
        peer,
        id: headers
            .get(SESSION_UUID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        client_methods: headers
            .get_all(SESSION_METHOD)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect(),
    }
}
