//! Types generated from `proto/` at build time.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `moby.buildkit.secrets.v1`: the session secrets service BuildKit calls.
pub mod secrets {
    tonic::include_proto!("moby.buildkit.secrets.v1");
}

/// `moby.buildkit.v1`: the frame of the `Control/Session` tunnel.
pub mod control {
    tonic::include_proto!("moby.buildkit.v1");
}

/// Full path of the one method the helper answers inside a session.
pub const GET_SECRET_PATH: &str = "/moby.buildkit.secrets.v1.Secrets/GetSecret";
