//! The wire: HTTP/2 connections and raw stream forwarding, the session tunnel's framing, the
//! protos, protocol sniffing, TLS toward remote daemons, and a Secrets client. Knows nothing of
//! sessions, policy or sources.

use tokio::io::{AsyncRead, AsyncWrite};

pub mod client;
pub mod h2;
pub mod proto;
pub mod sniff;
pub mod tls;
pub mod tunnel;

/// A byte stream to or from a peer (unix or TCP).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
