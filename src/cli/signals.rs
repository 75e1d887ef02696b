//! What the serving commands do on the signals they handle: TERM and INT stop the helper
//! (stop accepting, remove the socket, drain).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signals the helper handles, installed before its socket is bound: a signal that comes
/// as soon as the socket accepts connections is handled, not fatal with the file left behind.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves at the first signal that stops the helper.
    pub async fn stopped(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}
