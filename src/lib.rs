//! irsa-secrets: gives `RUN --mount=type=secret` build steps the runner's AWS identity (IRSA) by
//! answering BuildKit's session `GetSecret` calls, so no workflow plumbs `--secret` flags or
//! static keys.
//!
//! Data flows one way: [`sources`] produce values, the [`provider`] decides what to answer,
//! [`serve`] exposes it on a socket.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod arn;
pub mod audit;
pub mod cli;
pub mod client;
pub mod config;
pub mod h2;
pub mod jwt;
pub mod logging;
pub mod metrics;
pub mod proto;
pub mod provider;
pub mod proxy;
pub mod scan;
pub mod secret;
pub mod serve;
pub mod session;
pub mod socket;
pub mod sources;
pub mod tunnel;
