//! The front doors: accept build clients on the helper's socket, connect them to the daemon,
//! and put every build session through the splice.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::observe::{Caller, Peer};
use crate::provider::Provider;
use crate::session::SessionInfo;
use crate::wire::sniff::{self, Protocol};
pub use crate::wire::Io;

pub use daemon::{Daemon, Upstream, UpstreamKind};
pub use limits::Limits;

pub mod daemon;
pub mod docker;
pub mod grpc;
pub mod limits;
pub mod secrets;
pub mod socket;

/// Why a listener refused a connection or a build session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// The peer is on neither allowlist: the same caller is refused again.
    #[error(
        "irsa-secrets: uid {uid} gid {gid} may not use this socket; ask for your uid or gid in the \
         listener's --allow-uid/--allow-gid (allow_uid/allow_gid in the config file)"
    )]
    NotAllowed {
        /// The peer's uid.
        uid: u32,
        /// The peer's gid.
        gid: u32,
    },
    /// The socket has an allowlist and the peer's credentials could not be read.
    #[error("irsa-secrets: the peer's credentials are unknown and this socket has an allowlist")]
    UnknownPeer,
    /// Every session place is taken (the ceiling): worth retrying when a session ends. The
    /// docker CLI shows only the first 24 bytes of a refused session upgrade's body ("bogus
    /// greeting"), so the reason comes first.
    #[error("max_sessions {0} full: irsa-secrets refused this build session; retry when one ends")]
    Full(usize),
}

/// Who may use a listener, and how much: peer credential allowlists (`SO_PEERCRED`) and a
/// ceiling on concurrent sessions.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    allow_uids: Vec<u32>,
    allow_gids: Vec<u32>,
    sessions: Option<(usize, Arc<tokio::sync::Semaphore>)>,
}

impl Gate {
    /// Admits peers whose uid is in `uids` or whose gid is in `gids` (everyone when both are
    /// empty), and at most `max_sessions` sessions at once.
    pub fn new(uids: Vec<u32>, gids: Vec<u32>, max_sessions: Option<usize>) -> Self {
        Self {
            allow_uids: uids,
            allow_gids: gids,
            sessions: max_sessions.map(|n| (n, Arc::new(tokio::sync::Semaphore::new(n)))),
        }
    }

    /// Checks a connecting peer against the allowlists.
    pub fn admits(&self, peer: Option<Peer>) -> Result<(), GateError> {
        if self.allow_uids.is_empty() && self.allow_gids.is_empty() {
            return Ok(());
        }
        match peer {
            Some(p) if self.allow_uids.contains(&p.uid) || self.allow_gids.contains(&p.gid) => {
                Ok(())
            }
            Some(p) => Err(GateError::NotAllowed {
                uid: p.uid,
                gid: p.gid,
            }),
            None => Err(GateError::UnknownPeer),
        }
    }

    /// A place for one more session, held until the returned permit is dropped.
    pub fn session(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, GateError> {
        let Some((max, sem)) = &self.sessions else {
            return Ok(None);
        };
        Arc::clone(sem)
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| GateError::Full(*max))
    }
}

/// What a front door needs to know about the connection it serves.
#[derive(Debug, Clone)]
pub struct Context {
    /// The listener's secrets, policy and observers.
    pub provider: Provider,
    /// The listener's admission rules.
    pub gate: Gate,
    /// The connecting process.
    pub peer: Option<Peer>,
    /// Cancelled at shutdown: idle connections close, busy ones finish what they carry.
    pub stop: CancellationToken,
    /// Told when the connection is busy and when it is idle.
    pub activity: limits::Activity,
    /// How long an HTTP/1.1 connection waits for its next request.
    pub idle_timeout: Duration,
}

impl Context {
    /// A context with no admission rules, no known peer and no shutdown (in-process use, tests).
    pub fn new(provider: Provider) -> Self {
        Self {
            provider,
            gate: Gate::default(),
            peer: None,
            stop: CancellationToken::new(),
            activity: limits::Activity::default(),
            idle_timeout: limits::DEFAULT_IDLE_TIMEOUT,
        }
    }

    /// Admits a new session or says why not; the permit must live as long as the session.
    pub fn admit_session(
        &self,
        info: &SessionInfo,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, GateError> {
        self.gate.session().inspect_err(|why| {
            tracing::warn!(listener = self.provider.listener(), session = %info.id, "{why}");
            self.provider.audit().connection_denied(
                self.provider.listener(),
                &info.caller(),
                &why.to_string(),
            );
        })
    }
}

/// Accepts clients on `listener` while `limits` has room, until `shutdown` resolves; then
/// closes idle connections at once and gives busy ones `limits.shutdown_timeout` to finish
/// before cutting them.
pub async fn run(
    listener: UnixListener,
    daemon: Daemon,
    provider: Provider,
    gate: Gate,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let daemon = Arc::new(daemon);
    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut errors = limits::AcceptErrors::default();
    tokio::pin!(shutdown);
    'serve: loop {
        let stream = loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => break stream,
                    Err(e) => errors.failed(&e).await,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = &mut shutdown => break 'serve,
            }
        };
        errors.succeeded();
        // At the cap, this client waits for a place (making one by shedding the connection that
        // has waited longest for its first request, if any) and the next ones wait in the
        // listen backlog.
        let slot = tokio::select! {
            slot = limits.slots.acquire() => slot,
            () = &mut shutdown => break,
        };
        let ctx = Context {
            provider: provider.clone(),
            gate: gate.clone(),
            peer: Peer::of(&stream),
            stop: stop.clone(),
            activity: slot.activity(),
            idle_timeout: limits.idle_timeout,
        };
        let client = serve_client(stream, Arc::clone(&daemon), ctx);
        let (timeout, stop) = (limits.header_timeout, stop.clone());
        connections.spawn(async move { slot.run(timeout, &stop, client).await });
    }
    drop(listener);
    stop.cancel();
    tracing::info!(open = connections.len(), "draining connections");
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            timeout = ?limits.shutdown_timeout,
            "cutting connections still open after the shutdown timeout"
        );
        connections.shutdown().await;
    }
}

/// One client: HTTP/2 clients get the BuildKit API (and probes their answer, with the daemon up
/// or down), HTTP/1.1 clients the Docker API.
async fn serve_client(stream: UnixStream, daemon: Arc<Daemon>, ctx: Context) {
    let (protocol, stream) = match sniff::sniff(stream).await {
        Ok(pair) => pair,
        Err(e) => return tracing::debug!(error = %e, "client dropped before its first request"),
    };
    if let Err(why) = ctx.gate.admits(ctx.peer) {
        let listener = ctx.provider.listener();
        tracing::warn!(listener, peer = ?ctx.peer, "connection refused: {why}");
        let caller = Caller {
            session: None,
            peer: ctx.peer,
            probe: false,
        };
        let why = why.to_string();
        ctx.provider
            .audit()
            .connection_denied(listener, &caller, &why);
        return match protocol {
            Protocol::Http2 => grpc::refuse(stream, tonic::Status::permission_denied(why)).await,
            Protocol::Http1 => docker::refuse(stream, http::StatusCode::FORBIDDEN, why).await,
        };
    }
    match protocol {
        Protocol::Http2 => grpc::serve_lazily(stream, daemon, ctx).await,
        Protocol::Http1 => docker::serve_connection(stream, daemon, ctx).await,
    }
}
