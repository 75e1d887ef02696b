//! The front doors: accept build clients on the helper's socket, connect them to the daemon,
//! and put every build session through the splice.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
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
            tracing::warn!(listener = self.provider.listener(), session = ?crate::bound::quote(&info.id), "{why}");
            self.provider.audit().connection_denied(
                self.provider.listener(),
                &info.caller(),
                &why.to_string(),
            );
        })
    }
}

/// Accepts clients on `socket` while `limits` has room, until `shutdown` resolves; then
/// removes the socket file and stops accepting (so a helper started on the same path takes
/// over at once), closes idle connections and gives busy ones `limits.shutdown_timeout` to
/// finish before cutting them.
pub async fn run(
    socket: socket::BoundSocket,
    daemon: Daemon,
    provider: Provider,
    gate: Gate,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let socket::BoundSocket { listener, file } = socket;
    let daemon = Arc::new(daemon.sharing(limits.slots.clone()));
    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut errors = limits::AcceptErrors::default();
    tokio::pin!(shutdown);
    'serve: loop {
        let stream = loop {
            tokio::select! {
                // A request retrying its daemon connection for want of descriptors goes first.
                accepted = async {
                    limits.slots.no_dial_waiting().await;
                    listener.accept().await
                } => match accepted {
                    Ok((stream, _)) => break stream,
                    Err(e) => errors.failed(&e, &limits.slots).await,
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
    // The path first: from here a new helper finds it free, never a socket that refuses.
    drop(file);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Option<Peer> {
        Some(Peer {
            pid: Some(4242),
            uid,
            gid,
        })
    }

    #[test]
    fn with_no_allowlist_everyone_is_admitted_even_unknown_peers() {
        let gate = Gate::new(Vec::new(), Vec::new(), None);
        assert_eq!(gate.admits(peer(0, 0)), Ok(()));
        assert_eq!(gate.admits(peer(65534, 65534)), Ok(()));
        assert_eq!(gate.admits(None), Ok(()));
        assert_eq!(Gate::default().admits(None), Ok(()));
    }

    #[test]
    fn a_peer_is_admitted_by_its_uid_or_its_gid() {
        let gate = Gate::new(vec![1000, 1001], vec![999], None);
        assert_eq!(gate.admits(peer(1000, 5)), Ok(()));
        assert_eq!(gate.admits(peer(1001, 5)), Ok(()));
        assert_eq!(gate.admits(peer(5, 999)), Ok(()));
        assert_eq!(
            gate.admits(peer(5, 1000)),
            Err(GateError::NotAllowed { uid: 5, gid: 1000 }),
            "a gid matching an allowed uid is not admitted"
        );
        assert_eq!(
            gate.admits(peer(999, 6)),
            Err(GateError::NotAllowed { uid: 999, gid: 6 }),
            "a uid matching an allowed gid is not admitted"
        );
        assert_eq!(gate.admits(None), Err(GateError::UnknownPeer));
    }

    #[test]
    fn either_allowlist_alone_closes_the_socket_to_the_rest() {
        let uids_only = Gate::new(vec![1000], Vec::new(), None);
        assert_eq!(uids_only.admits(peer(1000, 1)), Ok(()));
        assert_eq!(
            uids_only.admits(peer(0, 1000)),
            Err(GateError::NotAllowed { uid: 0, gid: 1000 })
        );
        assert_eq!(uids_only.admits(None), Err(GateError::UnknownPeer));
        let gids_only = Gate::new(Vec::new(), vec![998], None);
        assert_eq!(gids_only.admits(peer(0, 998)), Ok(()));
        assert_eq!(
            gids_only.admits(peer(998, 0)),
            Err(GateError::NotAllowed { uid: 998, gid: 0 })
        );
        assert_eq!(gids_only.admits(None), Err(GateError::UnknownPeer));
    }

    #[test]
    fn without_a_ceiling_sessions_need_no_permit() {
        let gate = Gate::new(Vec::new(), Vec::new(), None);
        for _ in 0..1000 {
            assert!(matches!(gate.session(), Ok(None)));
        }
    }

    #[test]
    fn the_ceiling_refuses_as_full_until_a_permit_is_dropped() {
        let gate = Gate::new(Vec::new(), Vec::new(), Some(2));
        let first = gate.session().unwrap().expect("a permit");
        // Every connection gets a clone of the listener's gate: the places are shared.
        let clone = gate.clone();
        let second = clone.session().unwrap().expect("a permit");
        assert_eq!(gate.session().unwrap_err(), GateError::Full(2));
        assert_eq!(clone.session().unwrap_err(), GateError::Full(2));
        drop(first);
        let third = gate.session().unwrap().expect("the place the first left");
        assert_eq!(clone.session().unwrap_err(), GateError::Full(2));
        drop((second, third));
        let again: Vec<_> = (0..2).map(|_| clone.session().unwrap().unwrap()).collect();
        assert_eq!(gate.session().unwrap_err(), GateError::Full(2));
        drop(again);
    }

    #[test]
    fn a_ceiling_of_zero_refuses_every_session() {
        let gate = Gate::new(Vec::new(), Vec::new(), Some(0));
        assert_eq!(gate.session().unwrap_err(), GateError::Full(0));
    }

    #[test]
    fn refusals_say_why_and_what_to_do() {
        assert_eq!(
            GateError::NotAllowed { uid: 5, gid: 6 }.to_string(),
            "irsa-secrets: uid 5 gid 6 may not use this socket; ask for your uid or gid in the \
             listener's --allow-uid/--allow-gid (allow_uid/allow_gid in the config file)"
        );
        assert_eq!(
            GateError::UnknownPeer.to_string(),
            "irsa-secrets: the peer's credentials are unknown and this socket has an allowlist"
        );
        assert_eq!(
            GateError::Full(8).to_string(),
            "max_sessions 8 full: irsa-secrets refused this build session; retry when one ends"
        );
        // The docker CLI shows 24 bytes of a refused session's body: the reason must fit.
        let shown = &GateError::Full(1000).to_string()[..24];
        assert_eq!(shown, "max_sessions 1000 full: ");
    }

    /// A refused session is audited as a denied connection, with the session and the reason.
    #[test]
    fn a_session_past_the_ceiling_is_audited_as_denied() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let audit = crate::observe::audit::Audit::open(log.to_str().unwrap(), None).unwrap();
        let provider = Provider::new(Vec::new())
            .with_policy("ci", None)
            .with_observers(audit, crate::observe::metrics::Metrics::default());
        let ctx = Context {
            gate: Gate::new(Vec::new(), Vec::new(), Some(1)),
            ..Context::new(provider)
        };
        let info = SessionInfo {
            id: "sess-9".into(),
            client_methods: Vec::new(),
            peer: peer(1000, 1000),
        };
        let held = ctx.admit_session(&info).unwrap().expect("a permit");
        assert_eq!(ctx.admit_session(&info).unwrap_err(), GateError::Full(1));
        drop(held);
        assert!(ctx.admit_session(&info).unwrap().is_some());
        // The last handle on the trail writes what is queued.
        drop(ctx);
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        let mut record = lines[0].clone();
        record.as_object_mut().unwrap().remove("time").unwrap();
        assert_eq!(
            record,
            serde_json::json!({
                "listener": "ci",
                "session": "sess-9",
                "peer": {"pid": 4242, "uid": 1000, "gid": 1000},
                "event": "connection_denied",
                "reason": GateError::Full(1).to_string(),
            })
        );
    }
}
