//! The `--sts` flags: exchange the token for scoped, short-lived credentials and serve those.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::IdentityArgs;
use crate::source::credentials::Credentials;
use crate::source::sts::exchange::Exchange;
use crate::source::sts::scope::{self, Scope, SessionName};
use crate::source::sts::WebIdentity;
use crate::source::IdentityIds;

/// How the token is exchanged with STS, or a credential identity narrowed: `serve`, `proxy`
/// and `doctor`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("narrowing").args(["sts", "assume_role"]).multiple(true)))]
pub struct StsArgs {
    /// Exchange the token with STS (AssumeRoleWithWebIdentity) and serve the resulting
    /// credentials (aws-credentials, aws-access-key-id, aws-secret-access-key,
    /// aws-session-token, aws-credentials-expiration) instead of the token and role ARN.
    #[arg(long, env = "IRSA_SECRETS_STS")]
    pub sts: bool,

    /// Narrow a credential identity (pod-identity, container, imds) with STS AssumeRole to
    /// this role, so builds get less than the runner has; the scope flags below apply.
    #[arg(long, value_name = "ARN", env = "IRSA_SECRETS_ASSUME_ROLE")]
    pub assume_role: Option<String>,

    /// The external id the --assume-role role's trust policy asks for (sts:ExternalId).
    #[arg(long, value_name = "ID", requires = "assume_role")]
    pub external_id: Option<String>,

    /// With --sts, also serve the raw token and role ARN (which can mint full-role credentials).
    #[arg(long, requires = "sts")]
    pub serve_identity: bool,

    /// An inline session policy (JSON): the credentials get the intersection of it and the
    /// role's policies. At most 2048 characters.
    #[arg(long, value_name = "FILE", requires = "narrowing")]
    pub session_policy: Option<PathBuf>,

    /// A managed policy the credentials are limited to (intersected with the role's).
    /// Repeatable, at most 10.
    #[arg(long = "policy-arn", value_name = "ARN", requires = "narrowing", value_parser = scope::parse_policy_arn)]
    pub policy_arns: Vec<String>,

    /// Credential lifetime: seconds or e.g. 30m, from 15m to 12h, and at most the role's
    /// maximum session duration.
    #[arg(long, default_value = "1h", value_parser = scope::parse_duration, env = "IRSA_SECRETS_STS_DURATION")]
    pub duration: Duration,

    /// Role session name (shown in CloudTrail), a template with {pod}, {namespace},
    /// {service_account} (from the token's claims) and {unix_time}; the result must be 2 to 64
    /// letters, digits or _+=,.@- characters.
    #[arg(long, default_value = scope::DEFAULT_SESSION_NAME, value_name = "TEMPLATE", env = "IRSA_SECRETS_ROLE_SESSION_NAME")]
    pub role_session_name: SessionName,

    /// STS endpoint URL; without it, the SDKs' endpoint settings (AWS_ENDPOINT_URL_STS, then
    /// AWS_ENDPOINT_URL, then the shared config file's), else the regional endpoint of --region.
    #[arg(long, value_name = "URL")]
    pub sts_endpoint: Option<String>,
}

impl StsArgs {
    /// The STS source `--sts` selects: `identity`'s web identity token (IRSA's, or with
    /// `github` GitHub Actions') exchanged for scoped credentials at `region`'s endpoint, the
    /// region served under `ids`' region id.
    pub fn source(
        &self,
        identity: &IdentityArgs,
        github: bool,
        ids: &IdentityIds,
        region: &str,
    ) -> anyhow::Result<Credentials> {
        let web = identity.web_identity(github, ids.clone(), Some(region.to_string()))?;
        let role_arn = identity.role_arn.as_deref().unwrap_or_default();
        Ok(Credentials::new(
            WebIdentity::new(
                web,
                self.scope(role_arn)?,
                Exchange::new(region, self.sts_endpoint.as_deref()),
            ),
            identity.token.expiry_margin,
            Some((ids.region.clone(), region.to_string())),
        ))
    }

    /// The scope of the exchange for `role_arn`, with the session policy read and checked.
    pub fn scope(&self, role_arn: &str) -> anyhow::Result<Scope> {
        scope::check_policy_arns(&self.policy_arns).map_err(anyhow::Error::msg)?;
        let policy = match &self.session_policy {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("--session-policy {}: {e}", path.display()))?;
                scope::check_policy(&text)
                    .map_err(|e| anyhow::anyhow!("--session-policy {} {e}", path.display()))?;
                Some(text)
            }
        };
        Ok(Scope {
            role_arn: role_arn.to_string(),
            policy,
            policy_arns: self.policy_arns.clone(),
            duration: self.duration,
            session_name: self.role_session_name.clone(),
        })
    }
}
