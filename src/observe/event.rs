//! What the provider, the audit trail and the metrics share: who asked, and what became of it.

use std::time::Instant;

use serde::Serialize;

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
    /// The BuildKit session id, as the client sent it (written as [`crate::bound::quote`]
    /// shows it).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::bound::serialize_quoted"
    )]
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
        stream.peer_cred().ok().map(Peer::from)
    }
}

impl From<tokio::net::unix::UCred> for Peer {
    fn from(c: tokio::net::unix::UCred) -> Self {
        Peer {
            pid: c.pid(),
            uid: c.uid(),
            gid: c.gid(),
        }
    }
}

/// One answer, as the audit trail and the metrics see it.
pub struct Answer<'a> {
    /// The id asked for (the registry host, for registry credentials).
    pub id: &'a str,
    /// Which source answered (`client` for the build client's own secrets).
    pub source: Option<&'a str>,
    /// Where in the source the value lives (an `aws-sm` secret's name), when it says.
    pub origin: Option<&'a str>,
    /// What became of the request.
    pub outcome: Outcome,
    /// The value sent, for its fingerprint.
    pub value: Option<&'a SecretValue>,
    /// The error, when the outcome is one.
    pub error: Option<&'a str>,
    /// When the request arrived.
    pub started: Instant,
}
