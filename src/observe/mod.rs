//! Observability: the audit trail, the metrics and probes, and the event types they and the
//! provider share. Depends on nothing above it, so every layer may report here.

pub mod audit;
mod event;
pub mod metrics;

pub use event::{Answer, Caller, Outcome, Peer};
