//! irsa-secrets: gives `RUN --mount=type=secret` build steps the runner's AWS identity (IRSA) by
//! answering BuildKit's session `GetSecret` calls, so no workflow plumbs `--secret` flags or
//! static keys.
//!
//! One folder per layer; each uses only the layers below it (`tests/it/layers.rs` checks):
//!
//! - [`cli`]: flags, the config file and logging set-up; wires the layers below together.
//! - [`plan`]: what the flags and the config file ask for, decided and checked without I/O.
//! - [`front`]: accepts build clients on the helper's socket (socket, gate, accept loop), the
//!   Docker and BuildKit front doors, and dialing the daemon.
//! - [`session`]: joins one build session: where GetSecret is answered and every other call
//!   is forwarded.
//! - [`provider`]: ids to sources, the listener's policy, value rules and gRPC statuses, and the
//!   recording of every answer.
//! - [`source`]: where values come from (the IRSA or GitHub token, credentials from STS, Pod
//!   Identity, container roles or IMDS, `--secret`, the mock identity).
//! - [`observe`]: the audit trail, metrics and probes, and the event types they share.
//! - [`wire`]: HTTP/2 and raw stream forwarding, the session tunnel, protos, sniffing, TLS.
//! - [`secret`]: the value type every layer passes along, zeroed on drop.
//! - [`bound`]: bounds on what others choose (text a peer picked, as it may be printed), for
//!   every layer.
//! - [`scan`]: apart from the rest: finds served values in images.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod bound;
pub mod cli;
pub mod front;
pub mod observe;
pub mod plan;
pub mod provider;
pub mod scan;
pub mod secret;
pub mod session;
pub mod source;
pub mod wire;
