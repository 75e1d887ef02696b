//! The integration tests: one binary, a module per area (as ripgrep's tests are), so the shared
//! helpers in `common` and the AWS SDK are compiled and linked once. Select an area or a test by
//! name: `cargo test --test it docker::`, `cargo test --test it -- --skip ::current`.
//!
//! The tests that start a private dockerd need root; each engine's tests sit in a module named
//! for it (`debian_20_10::`, `current::`, `current_containerd::`; see `common::engine`).

#[macro_use]
mod common;

// The command line, its documents and the shipped files.
mod cli;
mod docs;
mod examples;
mod install;
mod layers;
mod ship;

// Identities, STS and the helper's own AWS calls.
mod config_identity;
mod endpoints;
mod hostile_tokens;
mod identities;
mod sts;

// Secrets served in sessions, through each front door.
mod aws_secrets;
mod bollard_client;
mod buildkit_front;
mod control_session;
mod daemon_dial;
mod docker;
mod metric_labels;
mod probe;
mod run;
mod serve;

// Registry credentials.
mod registry;
mod registry_control;
mod registry_public;
mod registry_session;

// Fleet features: policy, audit, metrics.
mod audit_stall;
mod policy;

// Connections, lifecycle and resources.
mod connections;
mod keepalive;
mod memory;
mod rolling_restart;
mod signals;

// `scan`.
mod scan;
