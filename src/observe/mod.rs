//! Observability: the audit trail, the metrics, the readiness checks, and the event types
//! they and the provider share. Depends on nothing above it, so every layer may report here.

pub mod audit;
mod event;
pub mod metrics;
pub mod ready;

pub use event::{Answer, Caller, Outcome, Peer};
