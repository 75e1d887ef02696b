//! From flags to parts: what the flags ask for as the [`crate::plan`] reads it (the
//! environment's identity settings read here), and the sources and AWS access a [`Serving`]
//! names, built from the flags' files, ARNs and settings. What to build is the plan's decision;
//! nothing here chooses.

use std::sync::Arc;
use std::time::Duration;

use super::sts::StsArgs;
use super::{IdentityArgs, IdsArgs, RegionArgs, SecretArgs, ServedArgs, WebTokenArgs};
use crate::plan::{Asked, AssumeRole, Builds, Own, Serving};
use crate::secret::SecretValue;
use crate::source::aws::{Aws, Service};
use crate::source::aws_secret::{AwsSecret, AwsSecrets};
use crate::source::credentials::Credentials;
use crate::source::github::GitHubOidc;
use crate::source::identity::{Choice, Identity, Present};
use crate::source::irsa::Irsa;
use crate::source::jwt::Expectations;
use crate::source::mock::Mock;
use crate::source::platform::{Platform, PlatformRole};
use crate::source::static_secret::{SecretSpec, Static};
use crate::source::sts::exchange::Exchange;
use crate::source::sts::scope::Scope;
use crate::source::sts::{RoleChain, WebIdentity};
use crate::source::{IdentityIds, Source};

/// The most expiry margin a GitHub Actions token gets: they live minutes, not IRSA's hours.
const GITHUB_MARGIN: Duration = Duration::from_secs(60);

/// The region of the helper's own calls when neither `--region` nor `AWS_REGION` names one:
/// where STS's global endpoint and ECR Public's API live.
const DEFAULT_REGION: &str = "us-east-1";

impl WebTokenArgs {
    pub(super) fn expectations(&self) -> Expectations {
        Expectations {
            audience: self.audience.clone(),
            expiry_margin: self.expiry_margin,
        }
    }

    /// The mock identity these flags describe, serving `ids` (and `region` when set).
    pub(super) fn mock_source(&self, ids: IdentityIds, region: Option<String>) -> Mock {
        Mock::new(ids, self.audience.clone(), self.expiry_margin, region)
    }
}

impl IdsArgs {
    pub(super) fn ids(&self) -> IdentityIds {
        IdentityIds {
            token: self.token_id.clone(),
            role_arn: self.role_arn_id.clone(),
            region: self.region_id.clone(),
        }
    }
}

/// What these flags ask for, as the plan reads it, with the environment as this process sees
/// it.
pub(super) fn asked(
    identity: &IdentityArgs,
    choice: Choice,
    sts: &StsArgs,
    region: &RegionArgs,
    secrets: &SecretArgs,
) -> Asked {
    Asked {
        choice,
        mock: identity.token.mock,
        present: Present::from_env(
            identity.token.token_file.is_some(),
            identity.role_arn.is_some(),
        ),
        sts: sts.sts,
        serve_identity: sts.serve_identity,
        assume_role: sts.assume_role.clone(),
        region: region.region.clone(),
        secrets: secrets.secrets.clone(),
    }
}

impl IdentityArgs {
    /// The real IRSA identity, or an error that says which variable or flag is missing.
    fn irsa(&self, ids: IdentityIds, region: Option<String>) -> anyhow::Result<Irsa> {
        match (&self.token.token_file, &self.role_arn) {
            (Some(file), Some(arn)) => Irsa::new(
                ids,
                file.clone(),
                arn.clone(),
                region,
                self.token.expectations(),
            )
            .map_err(anyhow::Error::msg),
            (None, _) => anyhow::bail!(
                "no identity: AWS_WEB_IDENTITY_TOKEN_FILE (or --token-file) is not set. {}",
                crate::plan::NO_IDENTITY_HINT
            ),
            (_, None) => anyhow::bail!(
                "no identity: AWS_ROLE_ARN (or --role-arn) is not set. {}",
                crate::plan::NO_IDENTITY_HINT
            ),
        }
    }

    /// The web identity: IRSA's token file, or with `github` GitHub Actions' token endpoint
    /// (`ACTIONS_ID_TOKEN_REQUEST_URL`, `ACTIONS_ID_TOKEN_REQUEST_TOKEN`).
    pub(super) fn web_identity(
        &self,
        github: bool,
        ids: IdentityIds,
        region: Option<String>,
    ) -> anyhow::Result<Irsa> {
        if !github {
            return self.irsa(ids, region);
        }
        let var = |name| {
            std::env::var(name)
                .map_err(|_| anyhow::anyhow!("--identity github-oidc needs {name} (the job needs `permissions: id-token: write`)"))
        };
        let url = var("ACTIONS_ID_TOKEN_REQUEST_URL")?;
        let token = SecretValue::from(var("ACTIONS_ID_TOKEN_REQUEST_TOKEN")?);
        let mut want = self.token.expectations();
        // GitHub's tokens live minutes: a margin of the IRSA default would fetch one per use.
        want.expiry_margin = want.expiry_margin.min(GITHUB_MARGIN);
        let oidc = GitHubOidc::new(&url, token, want).map_err(anyhow::Error::msg)?;
        let role_arn = self.role_arn.clone().unwrap_or_default();
        Irsa::github(ids, oidc, role_arn, region).map_err(anyhow::Error::msg)
    }

    /// The raw identity (IRSA token and role ARN, or the mock), as a source.
    pub(super) fn source(
        &self,
        ids: IdentityIds,
        region: Option<String>,
    ) -> anyhow::Result<Arc<dyn Source>> {
        Ok(if self.token.mock {
            Arc::new(self.token.mock_source(ids, region))
        } else {
            Arc::new(self.irsa(ids, region)?)
        })
    }

    /// The helper's own AWS access as `own` says, in `region` (else [`DEFAULT_REGION`]),
    /// exchanging a web identity as `sts` says (its endpoint, duration and session name).
    pub(super) fn own_aws(
        &self,
        own: Option<Own>,
        region: Option<&str>,
        sts: &StsArgs,
    ) -> anyhow::Result<Option<Aws>> {
        let Some(own) = own else {
            return Ok(None);
        };
        let margin = self.token.expiry_margin;
        let region = region.unwrap_or(DEFAULT_REGION);
        let (credentials, name) = match own {
            Own::Credentials(platform) => (
                Credentials::new(PlatformRole::new(platform), margin, None),
                platform.name(),
            ),
            Own::WebIdentity(identity) => {
                let github = identity == Identity::GithubOidc;
                let web = self.web_identity(github, IdentityIds::default(), None)?;
                let scope = Scope {
                    role_arn: self.role_arn.clone().unwrap_or_default(),
                    policy: None,
                    policy_arns: Vec::new(),
                    duration: sts.duration,
                    session_name: sts.role_session_name.clone(),
                };
                let exchange = Exchange::new(region, sts.sts_endpoint.as_deref());
                (
                    Credentials::new(WebIdentity::new(web, scope, exchange), margin, None),
                    identity.name(),
                )
            }
        };
        Ok(Some(Aws::new(credentials, region, name)))
    }
}

impl ServedArgs {
    /// What these flags ask for, as the plan reads it.
    pub fn asked(&self) -> Asked {
        asked(
            &self.identity,
            self.choice.choice,
            &self.sts,
            &self.region,
            &self.secrets,
        )
    }

    /// The helper's own AWS access, for the calls it makes itself (registry passwords, `aws-sm`
    /// and `aws-ssm` secrets), as `serving` names it.
    pub fn own_aws(&self, serving: &Serving) -> anyhow::Result<Option<Aws>> {
        self.identity
            .own_aws(serving.own, self.region.region.as_deref(), &self.sts)
    }

    /// The sources of `serving`, identity first so explicit `--secret` declarations win
    /// shared ids. `aws` is the helper's own access ([`ServedArgs::own_aws`]).
    pub fn sources(
        &self,
        serving: &Serving,
        aws: Option<&Aws>,
    ) -> anyhow::Result<Vec<Arc<dyn Source>>> {
        let mut sources: Vec<Arc<dyn Source>> = Vec::new();
        match (&serving.chosen, &serving.builds) {
            (Some(chosen), Some(builds)) => {
                tracing::info!(
                    identity = %chosen.identity,
                    because = chosen.because,
                    "serving the {} identity",
                    chosen.identity
                );
                sources.extend(self.identity_sources(builds, aws)?);
            }
            _ => {
                tracing::warn!("no AWS identity configured: serving only the --secret declarations")
            }
        }
        sources.extend(secret_sources(&serving.local, &serving.remote, aws)?);
        Ok(sources)
    }

    /// The sources that serve the identity as `builds` says; a credential identity shares its
    /// cache with the helper's own access `aws`, so the agent or IMDS is asked once for both.
    fn identity_sources(
        &self,
        builds: &Builds,
        aws: Option<&Aws>,
    ) -> anyhow::Result<Vec<Arc<dyn Source>>> {
        let (ids, region) = (self.ids.ids(), self.region.region.clone());
        Ok(match builds {
            Builds::Token { github } => {
                vec![Arc::new(self.identity.web_identity(*github, ids, region)?)]
            }
            Builds::Mock => vec![Arc::new(self.identity.token.mock_source(ids, region))],
            Builds::Sts {
                github,
                serve_identity,
                region: sts_region,
            } => {
                let mut sources: Vec<Arc<dyn Source>> = vec![Arc::new(self.sts.source(
                    &self.identity,
                    *github,
                    &ids,
                    sts_region,
                )?)];
                if *serve_identity {
                    sources.push(Arc::new(self.identity.web_identity(*github, ids, region)?));
                }
                sources
            }
            Builds::Credentials {
                platform,
                assume_role,
            } => {
                let served_region = region.map(|r| (ids.region.clone(), r));
                vec![Arc::new(credential_source(
                    *platform,
                    assume_role.as_ref(),
                    &self.sts,
                    self.identity.token.expiry_margin,
                    served_region,
                    aws.map(Aws::credentials),
                )?)]
            }
        })
    }
}

/// The `--secret` declarations as sources: files and variables, then Secrets Manager, then
/// Parameter Store. The AWS ones call with `aws`, the helper's own access, which the plan has
/// made sure of.
pub(super) fn secret_sources(
    local: &[SecretSpec],
    remote: &[(String, AwsSecret)],
    aws: Option<&Aws>,
) -> anyhow::Result<Vec<Arc<dyn Source>>> {
    let mut sources: Vec<Arc<dyn Source>> = Vec::new();
    if !local.is_empty() {
        sources.push(Arc::new(
            Static::new(local.to_vec()).map_err(anyhow::Error::msg)?,
        ));
    }
    let Some(aws) = aws else {
        return Ok(sources);
    };
    for service in [Service::SecretsManager, Service::Ssm] {
        if remote.iter().any(|(_, s)| s.service() == service) {
            sources.push(Arc::new(AwsSecrets::new(service, remote.to_vec(), aws)));
        }
    }
    Ok(sources)
}

/// The credentials of `platform`, narrowed as `assume_role` says with `sts`' scope; the
/// region, when served, is `(id, value)`. `own`, the helper's own credentials of that platform
/// when it has them, are reused rather than cached a second time.
pub(super) fn credential_source(
    platform: Platform,
    assume_role: Option<&AssumeRole>,
    sts: &StsArgs,
    margin: Duration,
    region: Option<(String, String)>,
    own: Option<&Credentials>,
) -> anyhow::Result<Credentials> {
    let role = PlatformRole::new(platform);
    tracing::info!(
        identity = platform.name(),
        endpoint = role.endpoint(),
        "credentials come from {}",
        role.endpoint()
    );
    let platform_credentials = move |region| match own {
        Some(own) => own.with_region(region),
        None => Credentials::new(role, margin, region),
    };
    let Some(target) = assume_role else {
        return Ok(platform_credentials(region));
    };
    let chain = RoleChain::new(
        platform_credentials(None),
        sts.scope(&target.role)?,
        &target.region,
        sts.sts_endpoint.as_deref(),
        sts.external_id.clone(),
    );
    tracing::info!(role = %target.role, "narrowing the {} identity with AssumeRole", platform.name());
    Ok(Credentials::new(chain, margin, region))
}
