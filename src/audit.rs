//! The audit trail: one JSON line per secret request and per session start and end, so a
//! platform team can see afterwards which build got which secret. Values never appear; a keyed
//! fingerprint (HMAC-SHA256) lets records be matched with each other and with scan findings
//! under the same key, without revealing the value.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::provider::Answer;
use crate::secret::SecretValue;

/// What became of a secret request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A value was sent.
    Served,
    /// Nobody serves the id (BuildKit treats the secret as absent).
    NotFound,
    /// The id exists but this listener does not serve it, or the peer was refused.
    Denied,
    /// The source failed.
    Error,
}

/// Who asked: the session and the connecting process, as far as they are known.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Caller {
    /// The BuildKit session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The client process on the other end of the helper's socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<Peer>,
    /// Asked on the socket itself (`irsa-secrets probe`, any gRPC client), not by a build from
    /// inside its session; written as `"probe": true`, absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub probe: bool,
}

/// A unix socket peer's credentials (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// Process id, when the kernel reports it.
    pub pid: Option<i32>,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl Peer {
    /// The credentials of the process connected to `stream`.
    pub fn of(stream: &tokio::net::UnixStream) -> Option<Peer> {
        stream.peer_cred().ok().map(|c| Peer {
            pid: c.pid(),
            uid: c.uid(),
            gid: c.gid(),
        })
    }
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
    sink: Option<Arc<Mutex<Box<dyn Write + Send>>>>,
    key: Arc<zeroize::Zeroizing<Vec<u8>>>,
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
    /// Opens the trail: `-` for stdout, else a file appended to. The fingerprint key comes
    /// from `key_file` (share it with whoever must match fingerprints) or is random per process.
    pub fn open(target: &str, key_file: Option<&Path>) -> Result<Self, String> {
        let sink: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            let path = PathBuf::from(target);
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?,
            )
        };
        let key = match key_file {
            Some(path) => std::fs::read(path)
                .map_err(|e| format!("cannot read the audit key {}: {e}", path.display()))?,
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        if key.is_empty() {
            return Err("the audit key file is empty".into());
        }
        Ok(Self {
            sink: Some(Arc::new(Mutex::new(sink))),
            key: Arc::new(zeroize::Zeroizing::new(key)),
        })
    }

    /// The keyed fingerprint of a value (hex HMAC-SHA256, first 16 bytes).
    pub fn fingerprint(&self, value: &SecretValue) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(value.expose());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Records one secret request.
    pub fn secret(&self, listener: &str, caller: &Caller, a: &Answer<'_>) {
        if self.sink.is_none() {
            return;
        }
        let event = Event::Secret {
            id: a.id,
            source: a.source,
            outcome: a.outcome,
            fingerprint: a.value.map(|v| self.fingerprint(v)),
            error: a.error,
        };
        self.write(listener, caller, event);
    }

    /// Records a session's start.
    pub fn session_start(&self, listener: &str, caller: &Caller) {
        self.write(listener, caller, Event::SessionStart);
    }

    /// Records a session's end and how long it lasted.
    pub fn session_end(&self, listener: &str, caller: &Caller, seconds: f64, error: Option<&str>) {
        self.write(listener, caller, Event::SessionEnd { seconds, error });
    }

    /// Records a refused connection.
    pub fn connection_denied(&self, listener: &str, caller: &Caller, reason: &str) {
        self.write(listener, caller, Event::ConnectionDenied { reason });
    }

    fn write(&self, listener: &str, caller: &Caller, event: Event<'_>) {
        let Some(sink) = &self.sink else { return };
        let record = Record {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            listener,
            caller,
            event,
        };
        let mut line = serde_json::to_vec(&record).expect("records serialize");
        line.push(b'\n');
        let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = sink.write_all(&line).and_then(|()| sink.flush()) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}
