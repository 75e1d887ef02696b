//! What the serving commands do on the signals a sidecar may get: TERM, INT, HUP and QUIT all
//! stop the helper the same way (stop accepting, remove the socket, drain); USR1 and USR2 are
//! logged and otherwise ignored. HUP does not reload: `--secret` files are read on every
//! request already, and a changed config file may change sockets and identities, which a
//! restart applies whole.

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::front::limits::Slots;

/// What the help of `proxy` and `serve` says about signals.
pub const HELP: &str = "Signals: on SIGTERM, SIGINT, SIGHUP or SIGQUIT the helper stops \
     accepting, removes its socket and lets work in flight finish (proxy: up to \
     --shutdown-timeout), and SIGUSR1 and SIGUSR2 are only logged (HUP does not reload: secret \
     files are read on every request; restart to apply a changed config file).";

/// The signals the helper handles, installed before its socket is bound: a signal that comes
/// as soon as the socket accepts connections is handled, not fatal with the file left behind.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    quit: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// Resolves at the first signal that stops the helper; logs USR1 and USR2 as they come,
    /// with the connections open in `slots` (the proxy's).
    pub async fn stopped(mut self, slots: Option<Slots>) {
        loop {
            let name = tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
                _ = self.hup.recv() => "SIGHUP",
                _ = self.quit.recv() => "SIGQUIT",
                _ = self.usr1.recv() => {
                    ignored("SIGUSR1", slots.as_ref());
                    continue;
                }
                _ = self.usr2.recv() => {
                    ignored("SIGUSR2", slots.as_ref());
                    continue;
                }
            };
            return tracing::info!("{name}: shutting down");
        }
    }
}

/// Logs a signal that does not stop the helper.
fn ignored(name: &str, slots: Option<&Slots>) {
    let open = slots.map(Slots::open);
    tracing::info!(
        open_connections = open,
        max_connections = slots.map(Slots::max),
        "{name}: ignored (SIGTERM, SIGINT, SIGHUP and SIGQUIT stop the helper)"
    );
}
