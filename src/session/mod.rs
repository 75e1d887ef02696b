//! The session splice: joins one BuildKit session between a build client and a daemon.
//!
//! Inside a session tunnel the daemon is the HTTP/2 (gRPC) client and the build client is the
//! server. The splice terminates both tunnels: toward the daemon it is an HTTP/2 server, toward
//! the client an HTTP/2 client. `Secrets/GetSecret` goes to the provider for the ids it owns
//! (unless the client serves the same id itself: explicit beats implicit); every other call
//! (FileSync, Auth, SSH, Upload, health, the client's own secrets, methods not yet invented) is
//! forwarded as raw HTTP/2 streams: headers, body frames and trailers, never buffered whole.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::bound::quote;
use crate::provider::Provider;
use crate::wire::h2;

mod headers;
mod router;
pub use headers::{advertise_secrets, session_info, SessionInfo, SESSION_METHOD, SESSION_UUID};
use router::Router;

/// Runs the splice until either side ends; then both tunnels are closed and every stream task
/// of the session fails and ends with them.
pub async fn splice<C, D>(
    client: C,
    daemon: D,
    info: SessionInfo,
    provider: Provider,
) -> Result<(), SpliceError>
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    D: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (to_client, client_conn) = h2::handshake(client).await.map_err(SpliceError::Client)?;
    let router = Router::new(to_client, &info, provider);
    let server = h2::server().serve_connection(
        h2::buffered(daemon),
        hyper::service::service_fn(move |req| router.clone().route(req)),
    );
    let result = tokio::select! {
        r = client_conn => r.map_err(SpliceError::Client),
        r = server => r.map_err(SpliceError::Daemon),
    };
    match result {
        Err(SpliceError::Client(e) | SpliceError::Daemon(e)) if is_hangup(&e) => Ok(()),
        other => other,
    }
}

/// Runs [`splice`] with the session's start and end in the log, the audit trail and the
/// metrics: what both front doors do.
pub async fn join<C, D>(client: C, daemon: D, info: SessionInfo, provider: Provider)
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    D: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let started = std::time::Instant::now();
    let caller = info.caller();
    let (audit, listener) = (provider.audit().clone(), provider.listener().to_string());
    let _open = provider.metrics().session(&listener);
    tracing::info!(listener, session = ?quote(&info.id), "build session joined");
    audit.session_start(&listener, &caller);
    let result = splice(client, daemon, info, provider).await;
    let seconds = started.elapsed().as_secs_f64();
    let session = quote(caller.session.as_deref().unwrap_or_default());
    let error = result.err().map(|e| e.to_string());
    match &error {
        None => tracing::info!(listener, ?session, seconds, "build session ended"),
        Some(e) => {
            let error = quote(e);
            tracing::warn!(listener, ?session, seconds, %error, "build session ended abnormally")
        }
    }
    audit.session_end(&listener, &caller, seconds, error.as_deref());
}

/// A peer closing its end of the tunnel: how sessions normally end, not a failure.
fn is_hangup(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(io.kind(), BrokenPipe | ConnectionReset | UnexpectedEof);
        }
        source = err.source();
    }
    false
}

/// Why a splice ended other than by a clean close.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// The client's side of the session failed.
    #[error("client side of the session: {0}")]
    Client(#[source] hyper::Error),
    /// The daemon's side of the session failed.
    #[error("daemon side of the session: {0}")]
    Daemon(#[source] hyper::Error),
}
