//! The audit trail: one JSON line per secret request and per session start and end, so a
//! platform team can see afterwards which build got which secret. Values never appear; a keyed
//! fingerprint (HMAC-SHA256) lets records be matched with each other and with scan findings
//! under the same key, without revealing the value.
//!
//! Records are written by a thread of their own, fed by a bounded queue, so a slow disk or a
//! pipe nobody reads never stalls the runtime that forwards every session's bytes. A secret
//! request waits for its record to be written (within [`WRITE_TIMEOUT`]) and fails when it
//! cannot be: no value leaves without a record.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

use tokio::sync::{mpsc, oneshot};

use super::event::{Answer, Caller, Outcome};
use crate::bound::{quote, Quoted};
use crate::secret::SecretValue;

/// Records queued for the writer at most; when it is full, secret requests wait for room.
const QUEUE: usize = 1024;

/// How long a secret request waits for room in the queue and for its record to be written
/// before it fails.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a record did not reach the trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The writer took longer than [`WRITE_TIMEOUT`]: the queue stayed full or the write hung.
    #[error(
        "the audit trail did not take its record within {}: the audit log is not being written \
         (a full or slow disk, a pipe nobody reads?)",
        humantime::format_duration(*.0)
    )]
    Stuck(Duration),
    /// Writing failed.
    #[error("cannot write the audit log: {0}")]
    Write(std::io::Error),
    /// The writer thread is gone.
    #[error("the audit writer has stopped")]
    Stopped,
}

/// Why the audit trail cannot be opened; found at start-up, so fatal.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The log cannot be opened for appending.
    #[error("cannot open the audit log {}: {err}", path.display())]
    Log {
        /// The log.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The log is a FIFO with no reader yet.
    #[error(
        "cannot open the audit log {}: it is a FIFO nobody reads yet; start its reader first",
        .0.display()
    )]
    NoReader(PathBuf),
    /// The log's flags cannot be read or set.
    #[error("cannot open the audit log {}: {err}", path.display())]
    Flags {
        /// The log.
        path: PathBuf,
        /// Why.
        err: nix::Error,
    },
    /// The fingerprint key cannot be read.
    #[error("cannot read the audit key {}: {err}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The fingerprint key file is empty.
    #[error("the audit key file is empty")]
    EmptyKey,
    /// The writer thread cannot start.
    #[error("cannot start the audit writer: {0}")]
    Thread(std::io::Error),
}

/// One line for the writer, and where to say whether it was written.
struct Job {
    line: Vec<u8>,
    written: Option<oneshot::Sender<std::io::Result<()>>>,
}

#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event<'a> {
    Secret {
        id: Quoted<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<&'a str>,
        #[serde(rename = "name", skip_serializing_if = "Option::is_none")]
        origin: Option<&'a str>,
        outcome: Outcome,
        #[serde(skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<Quoted<'a>>,
    },
    RegistryCredentials {
        host: Quoted<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<&'a str>,
        outcome: Outcome,
        #[serde(skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<Quoted<'a>>,
        millis: u64,
    },
    SessionStart,
    SessionEnd {
        seconds: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<Quoted<'a>>,
    },
    ConnectionDenied {
        reason: &'a str,
    },
}

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    listener: &'a str,
    #[serde(flatten)]
    caller: &'a Caller,
    #[serde(flatten)]
    event: Event<'a>,
}

/// Where records go; cheap to clone, shared by every listener of a process.
#[derive(Clone)]
pub struct Audit {
    sink: Option<Arc<Trail>>,
    key: Arc<zeroize::Zeroizing<Vec<u8>>>,
}

/// The queue to the writer thread. When the last [`Audit`] goes, the queue closes and the
/// records still in it are written before the process exits (within [`WRITE_TIMEOUT`]).
struct Trail {
    queue: Option<mpsc::Sender<Job>>,
    /// Disconnected when the writer thread ends.
    finished: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Trail {
    fn queue(&self) -> &mpsc::Sender<Job> {
        self.queue
            .as_ref()
            .expect("the queue lives as long as the trail")
    }
}

impl Drop for Trail {
    fn drop(&mut self) {
        drop(self.queue.take());
        let finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            finished.recv_timeout(WRITE_TIMEOUT)
        {
            tracing::error!("the audit writer did not finish its last records");
        }
    }
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("enabled", &self.sink.is_some())
            .finish()
    }
}

impl Default for Audit {
    /// No audit trail.
    fn default() -> Self {
        Self {
            sink: None,
            key: Arc::new(zeroize::Zeroizing::new(Vec::new())),
        }
    }
}

impl Audit {
    /// Opens the trail: `-` for stdout, else a file appended to (a FIFO needs its reader
    /// already there), and starts its writer thread. The fingerprint key comes from `key_file`
    /// (share it with whoever must match fingerprints) or is random per process.
    pub fn open(target: &str, key_file: Option<&Path>) -> Result<Self, OpenError> {
        let sink: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(open_log(Path::new(target))?)
        };
        let key = match key_file {
            Some(path) => std::fs::read(path).map_err(|err| OpenError::Key {
                path: path.to_path_buf(),
                err,
            })?,
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        Self::start(sink, key)
    }

    /// Starts the writer thread on `sink`, fingerprinting under `key`: the part of
    /// [`Audit::open`] that does not care where records go, so tests can give it any writer.
    fn start(sink: Box<dyn Write + Send>, key: Vec<u8>) -> Result<Self, OpenError> {
        if key.is_empty() {
            return Err(OpenError::EmptyKey);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let (finishing, finished) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                write_all(sink, rx);
                drop(finishing);
            })
            .map_err(OpenError::Thread)?;
        Ok(Self {
            sink: Some(Arc::new(Trail {
                queue: Some(tx),
                finished: std::sync::Mutex::new(finished),
            })),
            key: Arc::new(zeroize::Zeroizing::new(key)),
        })
    }

    /// The keyed fingerprint of a value (hex HMAC-SHA256, first 16 bytes).
    pub fn fingerprint(&self, value: &SecretValue) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes any key length");
        mac.update(value.expose());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Records one secret request, waiting (within [`WRITE_TIMEOUT`]) until it is written: the
    /// caller must not answer the request when this fails.
    pub async fn secret(
        &self,
        listener: &str,
        caller: &Caller,
        a: &Answer<'_>,
    ) -> Result<(), AuditError> {
        self.written(listener, caller, self.secret_event(a)).await
    }

    /// Records one registry credential request (`a.id` is the registry host), waiting until it
    /// is written as [`Audit::secret`] does.
    pub async fn registry(
        &self,
        listener: &str,
        caller: &Caller,
        a: &Answer<'_>,
    ) -> Result<(), AuditError> {
        self.written(listener, caller, self.registry_event(a)).await
    }

    /// Queues the record of a registry credential request without waiting, for answers already
    /// given (the build client's own credentials).
    pub fn registry_queued(&self, listener: &str, caller: &Caller, a: &Answer<'_>) {
        if self.sink.is_some() {
            self.queue(listener, caller, self.registry_event(a));
        }
    }

    fn registry_event<'a>(&self, a: &Answer<'a>) -> Event<'a> {
        Event::RegistryCredentials {
            host: quote(a.id),
            source: a.source,
            outcome: a.outcome,
            fingerprint: a.value.map(|v| self.fingerprint(v)),
            error: a.error.map(quote),
            millis: u64::try_from(a.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Queues `event` and waits (within [`WRITE_TIMEOUT`]) until it is written.
    async fn written(
        &self,
        listener: &str,
        caller: &Caller,
        event: Event<'_>,
    ) -> Result<(), AuditError> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        let line = self.line(listener, caller, event);
        let (done, written) = oneshot::channel();
        let job = Job {
            line,
            written: Some(done),
        };
        let write = async {
            sink.queue()
                .send(job)
                .await
                .map_err(|_| AuditError::Stopped)?;
            written
                .await
                .map_err(|_| AuditError::Stopped)?
                .map_err(AuditError::Write)
        };
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .unwrap_or(Err(AuditError::Stuck(WRITE_TIMEOUT)))
    }

    /// Queues the record of one secret request without waiting for it, for answers already
    /// given (the build client's own secrets); a record that cannot be queued is logged.
    pub fn secret_queued(&self, listener: &str, caller: &Caller, a: &Answer<'_>) {
        if self.sink.is_some() {
            self.queue(listener, caller, self.secret_event(a));
        }
    }

    fn secret_event<'a>(&self, a: &Answer<'a>) -> Event<'a> {
        Event::Secret {
            id: quote(a.id),
            source: a.source,
            origin: a.origin,
            outcome: a.outcome,
            fingerprint: a.value.map(|v| self.fingerprint(v)),
            error: a.error.map(quote),
        }
    }

    /// Records a session's start.
    pub fn session_start(&self, listener: &str, caller: &Caller) {
        self.queue(listener, caller, Event::SessionStart);
    }

    /// Records a session's end and how long it lasted.
    pub fn session_end(&self, listener: &str, caller: &Caller, seconds: f64, error: Option<&str>) {
        let error = error.map(quote);
        self.queue(listener, caller, Event::SessionEnd { seconds, error });
    }

    /// Records a refused connection.
    pub fn connection_denied(&self, listener: &str, caller: &Caller, reason: &str) {
        self.queue(listener, caller, Event::ConnectionDenied { reason });
    }

    fn line(&self, listener: &str, caller: &Caller, event: Event<'_>) -> Vec<u8> {
        let record = Record {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            listener,
            caller,
            event,
        };
        let mut line = serde_json::to_vec(&record).expect("records serialize");
        line.push(b'\n');
        line
    }

    /// Queues a record nobody waits for; when the queue is full (the writer is stuck), says so
    /// in the log rather than stalling the caller.
    fn queue(&self, listener: &str, caller: &Caller, event: Event<'_>) {
        let Some(sink) = &self.sink else { return };
        let kind = event.kind();
        let job = Job {
            line: self.line(listener, caller, event),
            written: None,
        };
        if let Err(e) = sink.queue().try_send(job) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => {
                    "the audit queue is full: the audit log is not being written"
                }
                mpsc::error::TrySendError::Closed(_) => "the audit writer has stopped",
            };
            tracing::error!(listener, record = kind, "audit record lost: {why}");
        }
    }
}

impl Event<'_> {
    /// The record's `event` name, for the log line of a lost record.
    fn kind(&self) -> &'static str {
        match self {
            Event::Secret { .. } => "secret",
            Event::RegistryCredentials { .. } => "registry_credentials",
            Event::SessionStart => "session_start",
            Event::SessionEnd { .. } => "session_end",
            Event::ConnectionDenied { .. } => "connection_denied",
        }
    }
}

/// Opens the audit log for appending. Opened non-blocking, so a FIFO without a reader fails
/// at once instead of hanging start-up; then made blocking again for the writer thread.
fn open_log(path: &Path) -> Result<std::fs::File, OpenError> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fail = |err| OpenError::Flags {
        path: path.to_path_buf(),
        err,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            Some(libc_enxio) if libc_enxio == nix::errno::Errno::ENXIO as i32 => {
                OpenError::NoReader(path.to_path_buf())
            }
            _ => OpenError::Log {
                path: path.to_path_buf(),
                err,
            },
        })?;
    let flags = fcntl(&file, FcntlArg::F_GETFL).map_err(fail)?;
    let blocking = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(&file, FcntlArg::F_SETFL(blocking)).map_err(fail)?;
    Ok(file)
}

/// The writer thread: writes and flushes each record, and tells whoever waits whether it
/// made it. Ends when every [`Audit`] is gone.
fn write_all(mut sink: Box<dyn Write + Send>, mut jobs: mpsc::Receiver<Job>) {
    while let Some(job) = jobs.blocking_recv() {
        let result = sink.write_all(&job.line).and_then(|()| sink.flush());
        match job.written {
            Some(done) => {
                let _ = done.send(result);
            }
            None => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "cannot write the audit log");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Peer;
    use base64::Engine;
    use serde_json::{json, Value};
    use std::sync::Mutex;
    use std::time::Instant;

    /// A sink the test can read back: every record the writer thread wrote.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// A sink whose first write says it has begun, then hangs until released (or until the
    /// releasing end is dropped): a disk or pipe that stopped taking bytes.
    struct Stalled {
        entered: Option<std::sync::mpsc::Sender<()>>,
        release: Option<std::sync::mpsc::Receiver<()>>,
        out: Shared,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let (Some(entered), Some(release)) = (self.entered.take(), self.release.take()) {
                entered.send(()).unwrap();
                let _ = release.recv();
            }
            self.out.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A trail on a stalled sink, once its writer hangs in the first record's write; the
    /// sender releases it.
    fn stalled() -> (Audit, Shared, std::sync::mpsc::Sender<()>) {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let out = Shared::default();
        let sink = Stalled {
            entered: Some(entered_tx),
            release: Some(release_rx),
            out: out.clone(),
        };
        let audit = Audit::start(Box::new(sink), b"key".to_vec()).unwrap();
        audit.session_start("ci", &Caller::default());
        entered.recv().unwrap();
        (audit, out, release)
    }

    const KEY: &[u8] = b"shared-audit-key";
    const VALUE: &[u8] = b"hunter2-value";
    /// HMAC-SHA256(KEY, VALUE), first 16 bytes, hex (Python's hmac module).
    const VALUE_FINGERPRINT: &str = "78f23fe436ac4ee9bf99d4d568ac7cac";

    fn caller() -> Caller {
        Caller {
            session: Some("sess-1".into()),
            peer: Some(Peer {
                pid: Some(42),
                uid: 1000,
                gid: 1001,
            }),
            probe: false,
        }
    }

    fn served<'a>(value: &'a SecretValue) -> Answer<'a> {
        Answer {
            id: "db-password",
            source: Some("file"),
            origin: None,
            outcome: Outcome::Served,
            value: Some(value),
            error: None,
            started: Instant::now(),
        }
    }

    /// The records in `text`, checking that each is one JSON object on a line of its own with
    /// a recent RFC 3339 UTC time to the millisecond, which is then taken out.
    fn records(text: &str) -> Vec<Value> {
        assert!(text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|line| {
                let mut record: Value = serde_json::from_str(line).unwrap();
                let time = record
                    .as_object_mut()
                    .unwrap()
                    .remove("time")
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string();
                assert_eq!(time.len(), "2026-01-01T00:00:00.000Z".len(), "{time}");
                assert!(time.ends_with('Z'), "{time}");
                let at = humantime::parse_rfc3339(&time).unwrap();
                let age = SystemTime::now().duration_since(at).unwrap();
                assert!(age < Duration::from_secs(60), "{time}");
                record
            })
            .collect()
    }

    #[tokio::test]
    async fn a_served_secret_is_one_line_with_who_what_and_the_fingerprint() {
        let out = Shared::default();
        let audit = Audit::start(Box::new(out.clone()), KEY.to_vec()).unwrap();
        let value = SecretValue::new(VALUE.to_vec());
        audit
            .secret("ci", &caller(), &served(&value))
            .await
            .unwrap();
        // Written by the time `secret` returns: no waiting for the writer.
        assert_eq!(
            records(&out.text()),
            [json!({
                "listener": "ci",
                "session": "sess-1",
                "peer": {"pid": 42, "uid": 1000, "gid": 1001},
                "event": "secret",
                "id": "db-password",
                "source": "file",
                "outcome": "served",
                "fingerprint": VALUE_FINGERPRINT,
            })]
        );
    }

    #[tokio::test]
    async fn a_registry_answer_names_the_host_and_fingerprints_the_password() {
        let out = Shared::default();
        let audit = Audit::start(Box::new(out.clone()), KEY.to_vec()).unwrap();
        let password = SecretValue::new(VALUE.to_vec());
        let answer = Answer {
            id: "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            source: Some("ecr"),
            origin: None,
            outcome: Outcome::Served,
            value: Some(&password),
            error: None,
            started: Instant::now(),
        };
        audit.registry("ci", &caller(), &answer).await.unwrap();
        let mut got = records(&out.text());
        assert!(got[0]["millis"].is_u64(), "{got:?}");
        got[0].as_object_mut().unwrap().remove("millis");
        assert_eq!(
            got,
            [json!({
                "listener": "ci",
                "session": "sess-1",
                "peer": {"pid": 42, "uid": 1000, "gid": 1001},
                "event": "registry_credentials",
                "host": "123456789012.dkr.ecr.us-east-1.amazonaws.com",
                "source": "ecr",
                "outcome": "served",
                "fingerprint": VALUE_FINGERPRINT,
            })]
        );
    }

    #[tokio::test]
    async fn a_failed_probe_request_has_its_error_and_no_fingerprint() {
        let out = Shared::default();
        let audit = Audit::start(Box::new(out.clone()), KEY.to_vec()).unwrap();
        let caller = Caller {
            probe: true,
            ..Caller::default()
        };
        let answer = Answer {
            id: "aws",
            source: None,
            origin: None,
            outcome: Outcome::Error,
            value: None,
            error: Some("the token file is gone"),
            started: Instant::now(),
        };
        audit.secret("ci", &caller, &answer).await.unwrap();
        let not_found = Answer {
            id: "nope",
            outcome: Outcome::NotFound,
            error: None,
            ..answer
        };
        audit.secret_queued("ci", &Caller::default(), &not_found);
        drop(audit);
        assert_eq!(
            records(&out.text()),
            [
                json!({
                    "listener": "ci",
                    "probe": true,
                    "event": "secret",
                    "id": "aws",
                    "outcome": "error",
                    "error": "the token file is gone",
                }),
                json!({
                    "listener": "ci",
                    "event": "secret",
                    "id": "nope",
                    "outcome": "not_found",
                }),
            ]
        );
    }

    /// Dropping the last handle writes what is still queued: the records nobody waits for.
    #[test]
    fn session_and_denial_records_in_the_order_they_were_made() {
        let out = Shared::default();
        let audit = Audit::start(Box::new(out.clone()), KEY.to_vec()).unwrap();
        let other = audit.clone();
        audit.session_start("ci", &caller());
        other.session_end("ci", &caller(), 1.5, None);
        audit.session_end("ci", &caller(), 0.25, Some("the daemon hung up"));
        other.connection_denied("gpu", &Caller::default(), "uid 7 gid 7 may not");
        drop((audit, other));
        let who = json!({"session": "sess-1", "peer": {"pid": 42, "uid": 1000, "gid": 1001}});
        let with = |fields: Value| {
            let mut record = who.clone();
            record
                .as_object_mut()
                .unwrap()
                .extend(fields.as_object().unwrap().clone());
            record
        };
        assert_eq!(
            records(&out.text()),
            [
                with(json!({"listener": "ci", "event": "session_start"})),
                with(json!({"listener": "ci", "event": "session_end", "seconds": 1.5})),
                with(json!({
                    "listener": "ci",
                    "event": "session_end",
                    "seconds": 0.25,
                    "error": "the daemon hung up",
                })),
                json!({"listener": "gpu", "event": "connection_denied", "reason": "uid 7 gid 7 may not"}),
            ]
        );
    }

    #[tokio::test]
    async fn the_value_never_reaches_the_trail_in_any_encoding() {
        let out = Shared::default();
        let audit = Audit::start(Box::new(out.clone()), KEY.to_vec()).unwrap();
        let value = SecretValue::new(VALUE.to_vec());
        audit
            .secret("ci", &caller(), &served(&value))
            .await
            .unwrap();
        let text = out.text();
        let fingerprint = audit.fingerprint(&value);
        let b64 = base64::engine::general_purpose::STANDARD;
        let b64_url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for encoded in [
            String::from_utf8(VALUE.to_vec()).unwrap(),
            hex::encode(VALUE),
            hex::encode_upper(VALUE),
            b64.encode(VALUE),
            b64_url.encode(VALUE),
        ] {
            assert!(!text.contains(&encoded), "{encoded} in {text}");
            assert!(
                !fingerprint.contains(&encoded),
                "{encoded} in {fingerprint}"
            );
        }
        assert_eq!(fingerprint.len(), 32);
        assert!(fingerprint
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn fingerprints_are_stable_per_key_and_differ_per_value_and_key() {
        let a = Audit::start(Box::new(Shared::default()), KEY.to_vec()).unwrap();
        let b = Audit::start(Box::new(Shared::default()), KEY.to_vec()).unwrap();
        let other_key = Audit::start(Box::new(Shared::default()), b"another key".to_vec()).unwrap();
        let value = SecretValue::new(VALUE.to_vec());
        assert_eq!(a.fingerprint(&value), VALUE_FINGERPRINT);
        assert_eq!(a.fingerprint(&value), VALUE_FINGERPRINT);
        assert_eq!(b.fingerprint(&value), VALUE_FINGERPRINT);
        let close = SecretValue::new(b"hunter2-valuf".to_vec());
        assert_ne!(a.fingerprint(&close), VALUE_FINGERPRINT);
        assert_ne!(other_key.fingerprint(&value), VALUE_FINGERPRINT);
    }

    #[test]
    fn a_key_file_is_shared_and_no_key_file_means_a_key_per_process() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let key = dir.path().join("audit.key");
        std::fs::write(&key, KEY).unwrap();
        let log = log.to_str().unwrap();
        let value = SecretValue::new(VALUE.to_vec());
        let first = Audit::open(log, Some(&key)).unwrap();
        let second = Audit::open(log, Some(&key)).unwrap();
        assert_eq!(first.fingerprint(&value), VALUE_FINGERPRINT);
        assert_eq!(second.fingerprint(&value), VALUE_FINGERPRINT);
        let random = Audit::open(log, None).unwrap();
        let another = Audit::open(log, None).unwrap();
        assert_ne!(random.fingerprint(&value), VALUE_FINGERPRINT);
        assert_ne!(random.fingerprint(&value), another.fingerprint(&value));
    }

    #[test]
    fn a_missing_or_empty_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let log = log.to_str().unwrap();
        let missing = dir.path().join("no.key");
        let err = Audit::open(log, Some(&missing)).unwrap_err();
        assert!(
            matches!(&err, OpenError::Key { path, err } if *path == missing
                && err.kind() == std::io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "cannot read the audit key {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
        let empty = dir.path().join("empty.key");
        std::fs::write(&empty, b"").unwrap();
        let err = Audit::open(log, Some(&empty)).unwrap_err();
        assert!(matches!(err, OpenError::EmptyKey), "{err:?}");
        assert_eq!(err.to_string(), "the audit key file is empty");
    }

    #[test]
    fn the_log_is_appended_to_never_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        std::fs::write(&log, "an earlier record\n").unwrap();
        let audit = Audit::open(log.to_str().unwrap(), None).unwrap();
        audit.session_start("ci", &Caller::default());
        drop(audit);
        let text = std::fs::read_to_string(&log).unwrap();
        let rest = text.strip_prefix("an earlier record\n").unwrap();
        assert_eq!(
            records(rest),
            [json!({"listener": "ci", "event": "session_start"})]
        );
    }

    #[test]
    fn a_log_that_cannot_be_opened_says_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("no-such-dir").join("audit.log");
        let err = Audit::open(log.to_str().unwrap(), None).unwrap_err();
        assert!(
            matches!(&err, OpenError::Log { path, .. } if *path == log),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "cannot open the audit log {}: No such file or directory (os error 2)",
                log.display()
            )
        );
    }

    #[test]
    fn a_fifo_without_a_reader_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("audit.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = Audit::open(fifo.to_str().unwrap(), None).unwrap_err();
        assert!(
            matches!(&err, OpenError::NoReader(path) if *path == fifo),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "cannot open the audit log {}: it is a FIFO nobody reads yet; start its reader first",
                fifo.display()
            )
        );
    }

    /// With the writer hung, records nobody waits for are dropped once the queue is full, and
    /// the caller goes on at once; the queued ones are written when the writer recovers.
    #[test]
    fn a_stalled_writer_never_blocks_queued_records_and_drops_the_overflow() {
        let (audit, out, release) = stalled();
        for _ in 0..QUEUE {
            audit.session_start("ci", &Caller::default());
        }
        let answer = Answer {
            id: "lost",
            source: None,
            origin: None,
            outcome: Outcome::NotFound,
            value: None,
            error: None,
            started: Instant::now(),
        };
        for _ in 0..10 {
            audit.secret_queued("ci", &Caller::default(), &answer);
            audit.session_end("ci", &Caller::default(), 1.0, None);
            audit.connection_denied("ci", &Caller::default(), "lost");
        }
        release.send(()).unwrap();
        drop(audit);
        let records = records(&out.text());
        // The one the writer hung on, and a full queue behind it.
        assert_eq!(records.len(), 1 + QUEUE);
        let start = json!({"listener": "ci", "event": "session_start"});
        assert!(records.iter().all(|r| *r == start));
    }

    /// A secret request gives up after WRITE_TIMEOUT when its record is not written.
    #[tokio::test]
    async fn a_secret_request_fails_as_stuck_when_the_writer_hangs() {
        let (audit, _out, release) = stalled();
        let value = SecretValue::new(VALUE.to_vec());
        let asked = Instant::now();
        let err = audit
            .secret("ci", &caller(), &served(&value))
            .await
            .unwrap_err();
        assert!(asked.elapsed() >= WRITE_TIMEOUT);
        assert!(
            matches!(err, AuditError::Stuck(t) if t == WRITE_TIMEOUT),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the audit trail did not take its record within 5s: the audit log is not being \
             written (a full or slow disk, a pipe nobody reads?)"
        );
        drop(release);
    }

    struct Failing;

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_secret_request_fails_when_its_record_cannot_be_written() {
        let audit = Audit::start(Box::new(Failing), KEY.to_vec()).unwrap();
        let value = SecretValue::new(VALUE.to_vec());
        let err = audit
            .secret("ci", &caller(), &served(&value))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AuditError::Write(e) if e.to_string() == "disk full"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "cannot write the audit log: disk full");
        // The writer goes on after a failed write.
        let err = audit
            .secret("ci", &caller(), &served(&value))
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::Write(_)), "{err:?}");
    }

    struct Panicking;

    impl Write for Panicking {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            panic!("the writer dies (expected by this test)")
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_secret_request_fails_when_the_writer_is_gone() {
        let audit = Audit::start(Box::new(Panicking), KEY.to_vec()).unwrap();
        let value = SecretValue::new(VALUE.to_vec());
        let err = audit
            .secret("ci", &caller(), &served(&value))
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::Stopped), "{err:?}");
        assert_eq!(err.to_string(), "the audit writer has stopped");
        let err = audit
            .secret("ci", &caller(), &served(&value))
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::Stopped), "{err:?}");
        // Records nobody waits for are lost without blocking or panicking the caller.
        audit.session_start("ci", &caller());
    }

    #[tokio::test]
    async fn no_trail_takes_every_record_and_shows_no_key() {
        let audit = Audit::default();
        let value = SecretValue::new(VALUE.to_vec());
        audit
            .secret("ci", &caller(), &served(&value))
            .await
            .unwrap();
        audit.session_start("ci", &caller());
        assert_eq!(format!("{audit:?}"), "Audit { enabled: false }");
        let on = Audit::start(Box::new(Shared::default()), KEY.to_vec()).unwrap();
        assert_eq!(format!("{on:?}"), "Audit { enabled: true }");
    }

    #[test]
    fn an_empty_key_is_refused_whatever_the_sink() {
        let err = Audit::start(Box::new(Shared::default()), Vec::new()).unwrap_err();
        assert!(matches!(err, OpenError::EmptyKey), "{err:?}");
    }
}
