//! Where secret values come from. Each source serves a fixed set of ids and knows nothing of
//! gRPC, sockets or sessions; the provider maps its errors to gRPC statuses.

use std::fmt;

use futures_util::future::BoxFuture;

use crate::secret::SecretValue;

pub mod arn;
pub mod aws;
pub mod aws_secret;
pub mod clock;
pub mod credentials;
pub mod ecr;
pub mod flight;
pub mod github;
pub mod identity;
pub mod irsa;
pub mod jwt;
pub mod mock;
pub mod platform;
pub(crate) mod remote;
pub mod static_secret;
pub mod sts;
#[cfg(test)]
mod testing;

/// The default id of the web identity token.
pub const TOKEN_ID: &str = "aws-web-identity-token";
/// The default id of the role ARN.
pub const ROLE_ARN_ID: &str = "aws-role-arn";
/// The default id of the region (served when a region is configured).
pub const REGION_ID: &str = "aws-region";

/// The ids under which a source serves the AWS identity; configurable so a team can match the
/// names its Dockerfiles already use.
#[derive(Debug, Clone)]
pub struct IdentityIds {
    /// Id of the web identity token.
    pub token: String,
    /// Id of the role ARN.
    pub role_arn: String,
    /// Id of the region.
    pub region: String,
}

impl Default for IdentityIds {
    fn default() -> Self {
        Self {
            token: TOKEN_ID.into(),
            role_arn: ROLE_ARN_ID.into(),
            region: REGION_ID.into(),
        }
    }
}

/// The parts of an AWS identity a source can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The web identity token.
    Token,
    /// The role ARN.
    RoleArn,
    /// The region.
    Region,
}

impl IdentityIds {
    /// The ids served, the region's only when a region is set.
    pub fn served(&self, with_region: bool) -> Vec<String> {
        let mut ids = vec![self.token.clone(), self.role_arn.clone()];
        if with_region {
            ids.push(self.region.clone());
        }
        ids
    }

    /// Which part of the identity `id` names, if any.
    pub fn part(&self, id: &str) -> Option<Part> {
        [
            (&self.token, Part::Token),
            (&self.role_arn, Part::RoleArn),
            (&self.region, Part::Region),
        ]
        .into_iter()
        .find_map(|(name, part)| (name == id).then_some(part))
    }
}

/// What went wrong in a source, classified so the provider can pick a precise gRPC status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The value's origin does not exist (missing file, unset variable).
    Missing,
    /// The origin exists but may not be read.
    Denied,
    /// The value was read but is unusable (expired, malformed, too big, empty).
    Invalid,
    /// Anything else (I/O errors).
    Io,
}

/// A source failure with a message a user can act on. Never holds a secret value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// What went wrong and what to check.
    pub message: String,
}

impl SourceError {
    /// Builds an error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Classifies an I/O error on `what` (a file path or description).
    pub fn io(what: &str, err: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let (kind, hint) = match err.kind() {
            K::NotFound => (
                ErrorKind::Missing,
                "check that the file exists and the path is right",
            ),
            K::PermissionDenied => (
                ErrorKind::Denied,
                "check the file's owner and mode (IRSA tokens need fsGroup for non-root users)",
            ),
            _ => (ErrorKind::Io, "check the file"),
        };
        Self::new(kind, format!("cannot read {what}: {err}; {hint}"))
    }
}

/// A place secret values come from.
pub trait Source: Send + Sync + fmt::Debug {
    /// Short name for logs and audit records (`irsa`, `mock`, `static`).
    fn name(&self) -> &'static str;

    /// The ids this source serves.
    fn ids(&self) -> Vec<String>;

    /// Fetches the current value of `id`; `Ok(None)` when this source does not serve it.
    fn fetch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SecretValue>, SourceError>>;

    /// Time left before the identity this source serves expires, if it expires at all; an
    /// error when it cannot be served now. Feeds `/readyz` and the expiry metric.
    fn expiry(&self) -> Option<Result<std::time::Duration, SourceError>> {
        None
    }

    /// Where `id`'s value comes from, when that is more than the source's name (an `aws-sm`
    /// secret's name or ARN): configuration, never a value, recorded in the audit trail.
    fn origin(&self, _id: &str) -> Option<&str> {
        None
    }
}

/// Runs a blocking read on tokio's blocking pool, off the runtime thread that forwards every
/// session's bytes.
pub(crate) async fn off_runtime<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    tokio::task::spawn_blocking(read).await.unwrap_or_else(|e| {
        Err(SourceError::new(
            ErrorKind::Io,
            format!("the file read did not finish: {e}"),
        ))
    })
}

/// Reads a file of at most `limit` bytes in one go, so a huge file costs no more than the limit.
pub(crate) fn read_bounded(path: &std::path::Path, limit: usize) -> Result<Vec<u8>, SourceError> {
    use std::io::Read;
    let what = format!("{}", path.display());
    let file = std::fs::File::open(path).map_err(|e| SourceError::io(&what, &e))?;
    let mut buf = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| SourceError::io(&what, &e))?;
    if buf.len() > limit {
        buf.fill(0);
        return Err(SourceError::new(
            ErrorKind::Invalid,
            format!(
                "{what} is larger than {} KiB, BuildKit's limit for one secret",
                limit / 1024
            ),
        ));
    }
    Ok(buf)
}
