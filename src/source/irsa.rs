//! The runner pod's IRSA identity: the projected service-account token and the role ARN, as the
//! EKS pod identity webhook injects them (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`). The
//! same web identity, with its token from GitHub Actions' OIDC endpoint instead of a file, is a
//! GitHub-hosted runner's (see [`GitHubOidc`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use super::{ErrorKind, IdentityIds, Part, Source, SourceError};
use crate::secret::{SecretValue, MAX_SECRET_SIZE};
use crate::source::arn::{ArnError, ArnProblem};
use crate::source::github::GitHubOidc;
use crate::source::jwt::{self, Expectations, TokenError};

/// How often a read that lost a race with kubelet's symlink swap is retried (at once: by the
/// time the old directory is gone, `..data` already names the new one).
const SWAP_RETRIES: usize = 5;

/// Where the web identity token comes from.
#[derive(Debug)]
enum TokenOrigin {
    /// A projected token file, re-read and checked against `want` on every request.
    File { path: PathBuf, want: Expectations },
    /// GitHub Actions' OIDC token endpoint, cached by the client (which holds the expectations).
    GitHub(GitHubOidc),
}

/// Serves the token (checked on every request), the role ARN and, if set, the region.
#[derive(Debug)]
pub struct Irsa {
    ids: IdentityIds,
    origin: TokenOrigin,
    role_arn: String,
    region: Option<String>,
}

impl Irsa {
    /// The identity whose token is the file `token_file`, re-read on every request (kubelet
    /// rotates it). Checks the role ARN's shape now, so a typo fails at start-up, not in the
    /// middle of a build.
    pub fn new(
        ids: IdentityIds,
        token_file: PathBuf,
        role_arn: String,
        region: Option<String>,
        want: Expectations,
    ) -> Result<Self, ArnError> {
        let origin = TokenOrigin::File {
            path: token_file,
            want,
        };
        Self::with_origin(ids, origin, role_arn, region)
    }

    /// The identity whose token GitHub Actions issues to the job (`github`'s expectations
    /// apply). Checks the role ARN's shape now, as [`Irsa::new`] does.
    pub fn github(
        ids: IdentityIds,
        github: GitHubOidc,
        role_arn: String,
        region: Option<String>,
    ) -> Result<Self, ArnError> {
        Self::with_origin(ids, TokenOrigin::GitHub(github), role_arn, region)
    }

    fn with_origin(
        ids: IdentityIds,
        origin: TokenOrigin,
        role_arn: String,
        region: Option<String>,
    ) -> Result<Self, ArnError> {
        check_role_arn(&role_arn)?;
        Ok(Self {
            ids,
            origin,
            role_arn,
            region,
        })
    }

    /// Gets and validates the token as a request would. A file is read on the blocking pool: a
    /// read on a slow or hung volume must not stall the runtime thread that forwards every
    /// session. GitHub's token comes from the client's cache or one request for all callers.
    pub async fn checked_token(&self) -> Result<(SecretValue, jwt::Checked), SourceError> {
        match &self.origin {
            TokenOrigin::File { path, want } => {
                let (file, want) = (path.clone(), want.clone());
                super::off_runtime(move || check_token_file(&file, &want)).await
            }
            TokenOrigin::GitHub(github) => github.checked_token().await,
        }
    }

    async fn token(&self) -> Result<SecretValue, SourceError> {
        let (value, checked) = self.checked_token().await?;
        // A file's token near expiry means kubelet is not rotating it; GitHub's client warns
        // itself when GitHub issues a token shorter than the margin.
        if let (TokenOrigin::File { path, .. }, true) = (&self.origin, checked.expiring_soon) {
            tracing::warn!(
                file = %path.display(),
                expires = %jwt::rfc3339(checked.claims.exp),
                remaining = %jwt::human(checked.remaining),
                "serving a web identity token that expires soon; kubelet should have rotated it \
                 (it refreshes at 80% of the lifetime): check that the projected volume is mounted \
                 and kubelet is healthy"
            );
        }
        Ok(value)
    }
}

impl Source for Irsa {
    fn name(&self) -> &'static str {
        match self.origin {
            TokenOrigin::File { .. } => "irsa",
            TokenOrigin::GitHub(_) => "github-oidc",
        }
    }

    fn ids(&self) -> Vec<String> {
        self.ids.served(self.region.is_some())
    }

    fn expiry(&self) -> Option<Result<Duration, SourceError>> {
        match &self.origin {
            TokenOrigin::File { path, want } => {
                Some(check_token_file(path, want).map(|(_, c)| c.remaining))
            }
            TokenOrigin::GitHub(github) => github.expiry(),
        }
    }

    fn fetch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SecretValue>, SourceError>> {
        Box::pin(async move {
            Ok(match self.ids.part(id) {
                Some(Part::Token) => Some(self.token().await?),
                Some(Part::RoleArn) => Some(SecretValue::from(self.role_arn.clone())),
                Some(Part::Region) => self.region.clone().map(SecretValue::from),
                None => None,
            })
        })
    }
}

/// Reads the token file, riding out kubelet's atomic update.
///
/// Kubelet writes a new timestamped directory, renames the `..data` symlink onto it and then
/// deletes the old directory. An open that resolved `..data` just before the rename may find the
/// old directory gone: that `NotFound` is retried at once (the rename came before the delete, so
/// `..data` already names the new directory), so a reader always gets the old or the new token
/// whole (an open file keeps its contents even after the unlink). Never sleeps.
pub fn read_token(path: &Path) -> Result<SecretValue, SourceError> {
    let mut attempt = 0;
    loop {
        match super::read_bounded(path, MAX_SECRET_SIZE) {
            Ok(bytes) => {
                let mut value = SecretValue::new(bytes);
                // Projected tokens carry no newline, but a hand-written mock file might.
                if value.expose().ends_with(b"\n") {
                    let trimmed = value.expose().trim_ascii_end().to_vec();
                    value = SecretValue::new(trimmed);
                }
                return Ok(value);
            }
            Err(e) if e.kind == ErrorKind::Missing && attempt < SWAP_RETRIES => attempt += 1,
            Err(e) => {
                return Err(SourceError::new(
                    e.kind,
                    format!(
                        "web identity token: {e}. It comes from AWS_WEB_IDENTITY_TOKEN_FILE \
                         (or --token-file); on EKS check the service account's \
                         eks.amazonaws.com/role-arn annotation and the projected token volume"
                    ),
                ))
            }
        }
    }
}

/// Reads and validates the token in `file` as a request would, for `token` and `doctor` too
/// (which need no role ARN).
pub fn check_token_file(
    file: &Path,
    want: &Expectations,
) -> Result<(SecretValue, jwt::Checked), SourceError> {
    let value = read_token(file)?;
    let checked =
        jwt::check(value.expose(), want, SystemTime::now()).map_err(|e| token_error(file, &e))?;
    Ok((value, checked))
}

/// What to do about a token that failed validation.
pub fn token_hint(err: &TokenError) -> &'static str {
    match err {
        TokenError::Expired { .. } => {
            "kubelet rotates projected tokens at 80% of their lifetime: check that the file is the \
             projected volume (not a copy) and that kubelet is running"
        }
        TokenError::NotYetValid { .. } => {
            "check this machine's clock (`date -u`; enable NTP with `timedatectl set-ntp true`)"
        }
        TokenError::WrongAudience { .. } => {
            "set the projected token's audience (eks.amazonaws.com/audience) or pass --audience"
        }
        TokenError::Malformed(_) => {
            "the file must hold a service-account token (a JWT): point \
             AWS_WEB_IDENTITY_TOKEN_FILE (or --token-file) at the projected token, on EKS \
             /var/run/secrets/eks.amazonaws.com/serviceaccount/token, or write a mock one with \
             `irsa-secrets mock write DIR`"
        }
    }
}

fn token_error(file: &Path, err: &TokenError) -> SourceError {
    let hint = token_hint(err);
    SourceError::new(
        ErrorKind::Invalid,
        format!("web identity token in {} {err}; {hint}", file.display()),
    )
}

/// Checks `arn:<partition>:iam::<12 digits>:role/<path/><name>`.
pub fn check_role_arn(arn: &str) -> Result<(), ArnError> {
    let fail = |problem| ArnError::Role {
        arn: arn.to_string(),
        problem,
    };
    let (account, resource) = crate::source::arn::split_iam(arn).map_err(fail)?;
    if !crate::source::arn::is_account_id(account) {
        return Err(fail(ArnProblem::Account));
    }
    crate::source::arn::check_resource(resource, "role", 64).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns_are_checked_for_shape() {
        for ok in [
            "arn:aws:iam::111122223333:role/ci-builder",
            "arn:aws-cn:iam::123456789012:role/team/path/sccache+rw@ci",
            "arn:aws-us-gov:iam::123456789012:role/a",
        ] {
            assert_eq!(check_role_arn(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "is not an ARN"),
            ("arn:aws:iam::1234:role/x", "12-digit"),
            (
                "arn:aws:sts::123456789012:assumed-role/x/y",
                "not an IAM ARN",
            ),
            ("arn:aws:iam::123456789012:user/x", "not a role"),
            ("arn:aws:iam::123456789012:role/", "invalid role name"),
            (
                "arn:aws:iam::123456789012:role/bad name",
                "invalid role name",
            ),
            ("arn:AWS:iam::123456789012:role/x", "invalid partition"),
            (
                "arn:aws:iam:us-east-1:123456789012:role/x",
                "not an IAM ARN",
            ),
        ] {
            let err = check_role_arn(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
