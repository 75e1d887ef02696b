//! The platform's credential identities, asked through aws-config's own providers: EKS Pod
//! Identity and ECS/CodeBuild task roles (the container credentials endpoint) and the EC2
//! instance role (IMDSv2 only). Each is a [`Mint`] behind the credentials cache; its errors say
//! which endpoint failed and what to fix.

use std::time::{Duration, SystemTime};

use aws_config::ecs::EcsCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_sts::error::DisplayErrorContext;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use futures_util::future::BoxFuture;

use super::credentials::{Issued, Mint};
use super::remote::scrub;
use super::{ErrorKind, SourceError};
use crate::secret::SecretValue;

/// Where the container credentials endpoint lives without `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
const ECS_HOST: &str = "http://169.254.170.2";
/// IMDS's address without `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
const IMDS_HOST: &str = "http://169.254.169.254";
/// How long credentials that carry no expiry are treated as valid before being asked for again.
const NO_EXPIRY: Duration = Duration::from_secs(15 * 60);

/// Which platform identity a [`PlatformRole`] asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// The EKS Pod Identity agent: the full URI with the pod's token file.
    PodIdentity,
    /// An ECS task role, a CodeBuild service role, or any container credentials endpoint.
    Container,
    /// The EC2 instance role, from IMDSv2.
    Imds,
}

impl Platform {
    /// The name in logs, audit records and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Platform::PodIdentity => "pod-identity",
            Platform::Container => "container",
            Platform::Imds => "imds",
        }
    }

    /// What answers, for messages.
    fn what(self) -> &'static str {
        match self {
            Platform::PodIdentity => "the EKS Pod Identity agent",
            Platform::Container => "the container credentials endpoint",
            Platform::Imds => "IMDS",
        }
    }
}

/// A platform identity's credentials, fetched by the SDK's provider for it. The provider reads
/// its standard variables (`AWS_CONTAINER_*`, `AWS_EC2_METADATA_SERVICE_ENDPOINT`) on each call,
/// so a rotated Pod Identity token is sent as it rotates.
#[derive(Debug)]
pub struct PlatformRole {
    platform: Platform,
    provider: SharedCredentialsProvider,
    endpoint: String,
}

impl PlatformRole {
    /// Asks `platform` through its SDK provider, over the helper's rustls stack.
    pub fn new(platform: Platform) -> Self {
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let config = ProviderConfig::without_region().with_http_client(https);
        let (provider, endpoint) = match platform {
            Platform::PodIdentity | Platform::Container => (
                SharedCredentialsProvider::new(
                    EcsCredentialsProvider::builder().configure(&config).build(),
                ),
                container_endpoint(),
            ),
            Platform::Imds => (
                SharedCredentialsProvider::new(InstanceRole(
                    aws_config::imds::Client::builder()
                        .configure(&config)
                        .build(),
                )),
                std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                    .unwrap_or_else(|_| IMDS_HOST.to_string()),
            ),
        };
        Self {
            platform,
            provider,
            endpoint,
        }
    }

    /// The endpoint asked, for the start-up log and `doctor`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `error` as a message naming the endpoint and the fix.
    fn explain(&self, error: &CredentialsError) -> SourceError {
        let said = scrub(&DisplayErrorContext(error).to_string(), "");
        // The provider reports an HTTP status only in its text, as `StatusCode(401)`.
        let status =
            |code: &str| said.contains(&format!("({code})")) || said.contains(&format!(" {code}"));
        let refused = status("401") || status("403");
        let (kind, hint) = match (self.platform, error) {
            (_, CredentialsError::InvalidConfiguration(_)) => (
                ErrorKind::Invalid,
                "check AWS_CONTAINER_CREDENTIALS_FULL_URI (http on loopback or the agent's \
                 address, or https) and the authorization token (the file must hold the token \
                 alone, with no trailing newline)",
            ),
            (Platform::PodIdentity, _) if refused || status("400") => (
                ErrorKind::Denied,
                "the agent refused the pod's token: check the pod's service account has a Pod \
                 Identity association (aws eks create-pod-identity-association) and that \
                 AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE is the token the webhook mounted",
            ),
            (Platform::Container, _) if refused => (
                ErrorKind::Denied,
                "the endpoint refused the request: check AWS_CONTAINER_AUTHORIZATION_TOKEN or \
                 AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            ),
            (Platform::Imds, _) if status("404") => (
                ErrorKind::Missing,
                "the instance has no IAM role: attach an instance profile to it",
            ),
            (Platform::Imds, _) if refused || said.contains("token") => (
                ErrorKind::Denied,
                "IMDS refused the session token: IMDSv2 must be enabled, and a helper in a \
                 container needs a hop limit of 2 (aws ec2 modify-instance-metadata-options \
                 --http-put-response-hop-limit 2)",
            ),
            (Platform::PodIdentity, _) => (
                ErrorKind::Io,
                "check that the eks-pod-identity-agent add-on runs on this node (kubectl -n \
                 kube-system get daemonset eks-pod-identity-agent)",
            ),
            (Platform::Container, _) => (
                ErrorKind::Io,
                "check that the task has a task role (ECS) or the project a service role \
                 (CodeBuild), and that AWS_CONTAINER_CREDENTIALS_* point at its endpoint",
            ),
            (Platform::Imds, _) => (
                ErrorKind::Io,
                "check that this is an EC2 instance with metadata enabled, or set \
                 AWS_EC2_METADATA_SERVICE_ENDPOINT",
            ),
        };
        SourceError::new(
            kind,
            format!(
                "{} at {} gave no credentials: {said}; {hint}",
                self.platform.what(),
                self.endpoint
            ),
        )
    }
}

/// Where IMDS lists the instance's role and serves its credentials.
const IMDS_ROLE_PATH: &str = "/latest/meta-data/iam/security-credentials/";

/// The instance role through the SDK's IMDSv2 client (session token first, no IMDSv1). Not the
/// SDK's IMDS credentials provider: that one extends credentials IMDS says have expired by
/// minutes, so builds would get dead keys with a made-up expiry.
#[derive(Debug)]
struct InstanceRole(aws_config::imds::Client);

impl InstanceRole {
    async fn fetch(&self) -> Result<aws_credential_types::Credentials, CredentialsError> {
        let listed = self
            .0
            .get(IMDS_ROLE_PATH)
            .await
            .map_err(CredentialsError::provider_error)?;
        let role = listed.as_ref().lines().next().unwrap_or_default().trim();
        if role.is_empty() {
            return Err(CredentialsError::not_loaded("IMDS lists no role (404)"));
        }
        let answer = self
            .0
            .get(format!("{IMDS_ROLE_PATH}{role}"))
            .await
            .map_err(CredentialsError::provider_error)?;
        let fields: serde_json::Value = serde_json::from_str(answer.as_ref()).map_err(|e| {
            CredentialsError::unhandled(format!(
                "the credentials are not JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let field = |name: &str| {
            fields[name].as_str().map(str::to_string).ok_or_else(|| {
                CredentialsError::unhandled(format!("the credentials have no {name}"))
            })
        };
        if let Some(code) = fields["Code"].as_str().filter(|c| *c != "Success") {
            let code = scrub(code, "");
            return Err(CredentialsError::provider_error(format!(
                "IMDS answered Code {code:?} for role {:?}",
                scrub(role, "")
            )));
        }
        let expiration = humantime::parse_rfc3339_weak(&field("Expiration")?)
            .map_err(|_| CredentialsError::unhandled("the credentials' Expiration is no time"))?;
        Ok(aws_credential_types::Credentials::new(
            field("AccessKeyId")?,
            field("SecretAccessKey")?,
            Some(field("Token")?),
            Some(expiration),
            "imds",
        ))
    }
}

impl ProvideCredentials for InstanceRole {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(self.fetch())
    }
}

/// The container credentials endpoint the SDK provider asks, as its variables name it.
fn container_endpoint() -> String {
    match std::env::var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        Ok(relative) => format!("{ECS_HOST}{relative}"),
        Err(_) => std::env::var("AWS_CONTAINER_CREDENTIALS_FULL_URI").unwrap_or_default(),
    }
}

impl Mint for PlatformRole {
    fn name(&self) -> &'static str {
        self.platform.name()
    }

    fn mint(&self) -> BoxFuture<'_, Result<Issued, SourceError>> {
        Box::pin(async move {
            let creds = self
                .provider
                .provide_credentials()
                .await
                .map_err(|e| self.explain(&e))?;
            let received = SystemTime::now();
            let expiration = creds.expiry().unwrap_or(received + NO_EXPIRY);
            if expiration <= received {
                return Err(SourceError::new(
                    ErrorKind::Invalid,
                    format!(
                        "{} at {} answered with credentials that expired at {}: check this \
                         machine's clock and the endpoint",
                        self.platform.what(),
                        self.endpoint,
                        humantime::format_rfc3339_seconds(expiration)
                    ),
                ));
            }
            Ok(Issued {
                access_key_id: SecretValue::from(creds.access_key_id().to_string()),
                secret_access_key: SecretValue::from(creds.secret_access_key().to_string()),
                session_token: SecretValue::from(
                    creds.session_token().unwrap_or_default().to_string(),
                ),
                expiration,
                received,
                principal: creds
                    .account_id()
                    .map(|a| format!("account {}", a.as_str()))
                    .unwrap_or_default(),
            })
        })
    }
}
