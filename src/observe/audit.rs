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
        id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<&'a str>,
        outcome: Outcome,
        #[serde(skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
    },
    SessionStart,
    SessionEnd {
        seconds: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
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
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        let line = self.line(listener, caller, self.secret_event(a));
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
            id: a.id,
            source: a.source,
            outcome: a.outcome,
            fingerprint: a.value.map(|v| self.fingerprint(v)),
            error: a.error,
        }
    }

    /// Records a session's start.
    pub fn session_start(&self, listener: &str, caller: &Caller) {
        self.queue(listener, caller, Event::SessionStart);
    }

    /// Records a session's end and how long it lasted.
    pub fn session_end(&self, listener: &str, caller: &Caller, seconds: f64, error: Option<&str>) {
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
