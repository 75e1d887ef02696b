//! How much the front doors take on, and for how long: the connection cap shared by every
//! listener, the deadline for a connection's first request, and what the accept loop does when
//! descriptors run out. A peer that connects and stalls costs one descriptor until its deadline,
//! never a daemon connection, and at the cap it is the first to go.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Default of `--header-timeout`: a client on the same host sends its request at once; this
/// leaves room for a loaded runner.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `--idle-timeout`: what Go's `http.Transport` (the docker CLI, buildx) keeps an
/// idle connection for, so the client, not the helper, normally closes it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default of `--shutdown-timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Descriptors a client connection costs: its own and the daemon connection it opens.
const FDS_PER_CONNECTION: u64 = 2;
/// Descriptors kept for everything else: listeners, logs, the audit trail, the metrics
/// endpoint, STS and the token file, the runtime's own.
const RESERVED_FDS: u64 = 128;
/// Repeated warnings (descriptors exhausted, connections shed) are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Out of descriptors, a daemon connection is tried this often, this many times (a second),
/// each after shedding a connection.
const DIAL_RETRY: Duration = Duration::from_millis(10);
const DIAL_RETRIES: u32 = 100;

/// The serving path's timeouts and the connection cap.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From accept to a complete first request: the HTTP/1.1 request head or the first HTTP/2
    /// stream, however the bytes trickle in.
    pub header_timeout: Duration,
    /// How long an HTTP/1.1 connection waits for its next complete request head.
    pub idle_timeout: Duration,
    /// After a shutdown signal, how long connections with work in flight may finish.
    pub shutdown_timeout: Duration,
    /// The cap, shared by every listener of the process (descriptors are per process).
    pub slots: Slots,
}

impl Limits {
    /// The defaults, with a cap of `max_connections`.
    pub fn new(max_connections: usize) -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            slots: Slots::new(max_connections),
        }
    }
}

/// Raises the soft descriptor limit to the hard one (as Go's runtime does for dockerd and
/// buildkitd) and returns the limit now in force.
pub fn descriptor_limit() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The warning due at start when `max` connections may need more descriptors than `nofile`
/// allows: then, out of descriptors, idle and request-less connections are shed to make room.
pub fn descriptor_warning(max: usize, nofile: u64) -> Option<String> {
    let fits = default_max_connections(nofile);
    (max > fits).then(|| {
        format!(
            "--max-connections {max} is more than the descriptor limit ({nofile}) allows: each \
             connection takes up to {FDS_PER_CONNECTION} descriptors (its own and the daemon's) \
             and {RESERVED_FDS} are kept for the rest, so about {fits} fit; past that, idle \
             connections and ones without a request are closed to make room. Raise the limit \
             (ulimit -n) or lower --max-connections"
        )
    })
}

/// The default cap for a descriptor limit of `nofile`: two descriptors per connection after a
/// reserve for the rest of the process.
pub fn default_max_connections(nofile: u64) -> usize {
    let n = nofile.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION;
    usize::try_from(n).unwrap_or(usize::MAX).clamp(1, 1 << 20)
}

/// Places for client connections. At the cap, the connection idle the longest (or waiting the
/// longest for its first request) is shed to make room; when every connection is busy, new
/// clients wait in the socket's listen backlog until one closes.
#[derive(Debug, Clone)]
pub struct Slots(Arc<SlotsInner>);

#[derive(Debug)]
struct SlotsInner {
    max: usize,
    free: Arc<Semaphore>,
    /// Connections that may be shed (idle, or without a first request yet), longest first.
    waiting: Mutex<BTreeMap<u64, CancellationToken>>,
    next: AtomicU64,
    shed: Tally,
    /// Requests retrying their daemon connection for want of descriptors.
    dialing: watch::Sender<usize>,
}

impl Slots {
    /// At most `max` connections at once.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(SlotsInner {
            max,
            free: Arc::new(Semaphore::new(max)),
            waiting: Mutex::default(),
            next: AtomicU64::new(0),
            shed: Tally::default(),
            dialing: watch::Sender::new(0),
        }))
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.0.max
    }

    /// A place for the next connection, once there is one.
    pub async fn acquire(&self) -> Slot {
        let inner = &self.0;
        let permit = match Arc::clone(&inner.free).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.shed_longest() {
                    if let Some(n) = inner.shed.hit() {
                        tracing::warn!(
                            max_connections = inner.max,
                            shed = n,
                            "at the connection cap: closed idle connections and ones that had \
                             not sent a complete request, to make room (counted since the last \
                             such line); if these are real clients, raise --max-connections or \
                             the descriptor limit"
                        );
                    }
                }
                Arc::clone(&inner.free)
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        let activity = Activity(Some(Arc::new(ActivityInner {
            slots: self.clone(),
            shed: CancellationToken::new(),
            entry: Mutex::new(None),
            busy: watch::Sender::new(false),
        })));
        activity.idle();
        Slot {
            _permit: permit,
            activity,
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.max - self.0.free.available_permits()
    }

    /// Closes the connection idle longest or waiting longest for its first request, if there
    /// is one: at the cap, and when descriptors run out. Its descriptors are free once its task
    /// has ended.
    fn shed_longest(&self) -> bool {
        let stalled = self.0.waiting.lock().expect("not poisoned").pop_first();
        stalled.map(|(_, stalled)| stalled.cancel()).is_some()
    }

    /// Runs `dial` (a connection to the daemon for a request being served); when descriptors
    /// have run out, sheds the connection idle longest and tries again, for up to a second.
    /// Meanwhile the accept loop takes no new clients ([`Slots::no_dial_waiting`]), so what
    /// shedding frees goes to the request already made, not to the next stalled peer.
    pub async fn dial<T, F>(&self, mut dial: impl FnMut() -> F) -> std::io::Result<T>
    where
        F: Future<Output = std::io::Result<T>>,
    {
        let mut result = dial().await;
        if !result.as_ref().is_err_and(out_of_descriptors) {
            return result;
        }
        let _waiting = DialWaiting::new(&self.0.dialing);
        for _ in 0..DIAL_RETRIES {
            if !result.as_ref().is_err_and(out_of_descriptors) {
                break;
            }
            self.shed_longest();
            tokio::time::sleep(DIAL_RETRY).await;
            result = dial().await;
        }
        result
    }

    /// Resolves when no request waits for a descriptor to reach the daemon.
    pub async fn no_dial_waiting(&self) {
        let mut dialing = self.0.dialing.subscribe();
        let _ = dialing.wait_for(|n| *n == 0).await;
    }

    /// Lists a connection that may be shed under `shed`; returns its place in the list.
    fn enter_waiting(&self, shed: &CancellationToken) -> u64 {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        self.0
            .waiting
            .lock()
            .expect("not poisoned")
            .insert(id, shed.clone());
        id
    }

    fn leave_waiting(&self, id: u64) {
        self.0.waiting.lock().expect("not poisoned").remove(&id);
    }
}

/// Counts a request among those waiting for a descriptor while it lives (also when its
/// connection is dropped mid-retry).
struct DialWaiting<'a>(&'a watch::Sender<usize>);

impl<'a> DialWaiting<'a> {
    fn new(dialing: &'a watch::Sender<usize>) -> Self {
        dialing.send_modify(|n| *n += 1);
        Self(dialing)
    }
}

impl Drop for DialWaiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// One connection's place, freed when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    activity: Activity,
}

impl Slot {
    /// What the front door tells whether the connection is busy or idle with.
    pub fn activity(&self) -> Activity {
        self.activity.clone()
    }

    /// Runs the connection `conn`, cut when its first request has not arrived within
    /// `header_timeout`, when it is shed at the cap, or at `stop` while it still waits.
    pub async fn run(self, header_timeout: Duration, stop: &CancellationToken, conn: impl Future) {
        tokio::pin!(conn);
        let first = async {
            let Some(inner) = &self.activity.0 else {
                return Ok(());
            };
            let mut busy = inner.busy.subscribe();
            tokio::select! {
                _ = busy.wait_for(|b| *b) => Ok(()),
                () = tokio::time::sleep(header_timeout) => Err("no complete request in time"),
                () = inner.shed.cancelled() => Err("shed at the connection cap"),
                () = stop.cancelled() => Err("shutting down"),
            }
        };
        tokio::select! {
            _ = &mut conn => return,
            verdict = first => if let Err(why) = verdict {
                return tracing::debug!(timeout = ?header_timeout, "closing a connection: {why}");
            },
        }
        conn.await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(inner) = &self.activity.0 {
            if let Some(id) = inner.entry.lock().expect("not poisoned").take() {
                inner.slots.leave_waiting(id);
            }
        }
    }
}

/// What a connection's [`Slot`] is told by the front door: busy from its first complete
/// request (or HTTP/2 stream) on, idle again when an HTTP/1.1 exchange is over. Idle
/// connections, and those that never sent a whole request, are the ones shed at the cap.
#[derive(Debug, Clone, Default)]
pub struct Activity(Option<Arc<ActivityInner>>);

#[derive(Debug)]
struct ActivityInner {
    slots: Slots,
    shed: CancellationToken,
    /// The connection's place in the list of those that may be shed, while it is idle.
    entry: Mutex<Option<u64>>,
    /// Whether a first request has arrived.
    busy: watch::Sender<bool>,
}

impl Activity {
    /// A request is being served: the connection may not be shed.
    pub fn busy(&self) {
        if let Some(inner) = &self.0 {
            if let Some(id) = inner.entry.lock().expect("not poisoned").take() {
                inner.slots.leave_waiting(id);
            }
            if !*inner.busy.borrow() {
                inner.busy.send_replace(true);
            }
        }
    }

    /// Nothing is in flight: the connection may be shed to make room, after those idle longer.
    pub fn idle(&self) {
        if let Some(inner) = &self.0 {
            let mut entry = inner.entry.lock().expect("not poisoned");
            if entry.is_none() && !inner.shed.is_cancelled() {
                *entry = Some(inner.slots.enter_waiting(&inner.shed));
            }
        }
    }

    /// Resolves when the connection is shed (never for a connection without a slot).
    pub async fn shed(&self) {
        match &self.0 {
            Some(inner) => inner.shed.cancelled().await,
            None => std::future::pending().await,
        }
    }
}

/// Counts an event that repeats and says when a log line about it is due: at the first, then at
/// most once per [`LOG_EVERY`], with how many happened since the last line.
#[derive(Debug, Default)]
struct Tally {
    last: Mutex<Option<Instant>>,
    count: AtomicU64,
}

impl Tally {
    fn hit(&self) -> Option<u64> {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last.lock().expect("not poisoned");
        if last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return None;
        }
        *last = Some(Instant::now());
        self.count.fetch_sub(n, Ordering::Relaxed);
        Some(n)
    }
}

/// Whether `e` says the process (or the system) is out of descriptors or socket memory.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(
            nix::errno::Errno::EMFILE
                | nix::errno::Errno::ENFILE
                | nix::errno::Errno::ENOBUFS
                | nix::errno::Errno::ENOMEM
        )
    )
}

/// What the accept loop does after `accept` fails: out of descriptors (`EMFILE`, `ENFILE`) it
/// sheds the connection idle longest (as at the cap) and tries again once that has closed;
/// with none to shed, it backs off, up to a second, until connections close. Other errors (a
/// client that gave up in the backlog) are passed over. Logged at most once a minute.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    tally: Tally,
    delay: Duration,
}

impl AcceptErrors {
    /// After a failed accept: logs (rate-limited) and waits as the error needs.
    pub async fn failed(&mut self, e: &std::io::Error, slots: &Slots) {
        if !out_of_descriptors(e) {
            return tracing::debug!(error = %e, "accept failed");
        }
        let shed = slots.shed_longest();
        if let Some(n) = self.tally.hit() {
            tracing::error!(
                error = %e,
                failures = n,
                shed,
                "accept failed: out of descriptors; closing idle connections and ones without a \
                 request to make room, or waiting for connections to close (failures counted \
                 since the last such line). Raise the descriptor limit or lower \
                 --max-connections"
            );
        }
        if shed {
            // The shed connection's task closes it at its next turn.
            self.delay = DIAL_RETRY;
        } else {
            self.delay = (self.delay * 2).clamp(DIAL_RETRY, Duration::from_secs(1));
        }
        tokio::time::sleep(self.delay).await;
    }

    /// After an accept that worked.
    pub fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_room_for_the_daemon_side_and_the_process() {
        assert_eq!(default_max_connections(1024), 448);
        assert_eq!(default_max_connections(65536), 32704);
        assert_eq!(default_max_connections(16), 1);
        assert_eq!(default_max_connections(u64::MAX), 1 << 20);
    }

    #[test]
    fn a_repeated_warning_is_due_once_per_interval_with_its_count() {
        let t = Tally::default();
        assert_eq!(t.hit(), Some(1));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        *t.last.lock().unwrap() = Some(Instant::now() - LOG_EVERY);
        assert_eq!(t.hit(), Some(3));
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_waiting_connection_is_shed_and_busy_ones_stay() {
        let slots = Slots::new(2);
        let busy = slots.acquire().await;
        busy.activity().busy();
        let stalled = slots.acquire().await;
        let stop = CancellationToken::new();
        let cut = tokio::spawn(async move {
            stalled
                .run(
                    Duration::from_secs(3600),
                    &stop,
                    std::future::pending::<()>(),
                )
                .await
        });
        tokio::task::yield_now().await;
        let third = tokio::time::timeout(Duration::from_secs(5), slots.acquire())
            .await
            .expect("the stalled connection made room");
        cut.await.unwrap();
        drop(third);
        let fourth = slots.acquire().await;
        // Only `busy` (arrived) and `fourth` remain: with nothing waiting, the next one waits.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), async {
                fourth.activity().busy();
                slots.acquire().await
            })
            .await
            .is_err(),
            "busy connections are never shed"
        );
        drop(busy);
    }
}
