//! The helper's own AWS access: the credentials it signs its own calls with (ECR for registry
//! passwords, Secrets Manager and Parameter Store for `aws-sm` and `aws-ssm` secrets), and the
//! SDK configuration those clients share. Builds never see these credentials unless a listener
//! serves them too.

use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use aws_types::region::Region;
use aws_types::sdk_config::{RetryConfig, SdkConfig, TimeoutConfig};
use aws_types::service_config::ServiceConfigKey;
use tokio::sync::OnceCell;

use super::credentials::Credentials;

/// Time allowed for one attempt of a call, connection included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed for a call with all its attempts.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per call (the SDK's standard retry, which backs off and retries throttling, 5xx and
/// timeouts).
pub const ATTEMPTS: u32 = 3;

/// An AWS service the helper calls for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// AWS STS (the web identity exchange, `--assume-role`).
    Sts,
    /// Amazon ECR (private registries).
    Ecr,
    /// Amazon ECR Public (`public.ecr.aws`), whose API lives in us-east-1.
    EcrPublic,
    /// AWS Secrets Manager.
    SecretsManager,
    /// AWS Systems Manager Parameter Store.
    Ssm,
}

impl Service {
    /// The SDK's service id, which names the service's own endpoint settings
    /// (`AWS_ENDPOINT_URL_<ID>`, upper-cased with spaces as underscores, and the shared config
    /// file's `services` section).
    fn id(self) -> &'static str {
        match self {
            Service::Sts => "STS",
            Service::Ecr => "ECR",
            Service::EcrPublic => "ECR PUBLIC",
            Service::SecretsManager => "Secrets Manager",
            Service::Ssm => "SSM",
        }
    }

    /// The endpoint the SDK's settings give this service's clients, as the generated client
    /// builders read them from [`shared`]: the service's own (`AWS_ENDPOINT_URL_<ID>`, the
    /// shared config's `services` section), else the global one (`AWS_ENDPOINT_URL`,
    /// `endpoint_url`); `None` for the SDK's default endpoint. For messages and checks; the
    /// clients resolve it themselves.
    pub async fn endpoint_override(self) -> Option<String> {
        let shared = shared().await;
        let key = ServiceConfigKey::builder()
            .service_id(self.id())
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .ok()?;
        shared
            .service_config()
            .and_then(|c| c.load_config(key))
            .or_else(|| shared.endpoint_url().map(str::to_string))
    }
}

/// The SDK settings of the environment and the shared config files as aws-config reads them
/// (endpoint overrides, `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`, FIPS, dual-stack), so every
/// client of the helper's resolves its endpoint exactly as the SDKs and the AWS CLI do. Loaded
/// once, with a region and no credentials given: loading reads files and variables, and calls
/// nothing (no IMDS).
async fn shared() -> &'static SdkConfig {
    static SHARED: OnceCell<SdkConfig> = OnceCell::const_new();
    SHARED
        .get_or_init(|| {
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(Region::from_static("us-east-1"))
                .no_credentials()
                .load()
        })
        .await
}

/// The SDK configuration of one client: [`shared`]'s settings, in `region`, signed with
/// `credentials` (unsigned without), over the helper's rustls stack, with `retry` and `timeouts`.
/// A client built from it (`Client::new`, `config::Builder::from`) applies its service's
/// endpoint settings itself.
pub(crate) async fn client_config(
    region: &str,
    credentials: Option<SharedCredentialsProvider>,
    retry: RetryConfig,
    timeouts: TimeoutConfig,
) -> SdkConfig {
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut config = shared()
        .await
        .to_builder()
        .region(Region::new(region.to_string()))
        .http_client(https)
        .retry_config(retry)
        .timeout_config(timeouts);
    config.set_credentials_provider(credentials);
    config.build()
}

/// The helper's own credentials and default region, for the SDK clients it builds.
#[derive(Debug, Clone)]
pub struct Aws {
    credentials: Credentials,
    region: String,
    identity: &'static str,
}

impl Aws {
    /// Calls signed with `credentials` (which the `identity` source issues: `sts`,
    /// `pod-identity`, ...), in `region` unless a call names another.
    pub fn new(credentials: Credentials, region: &str, identity: &'static str) -> Self {
        Self {
            credentials,
            region: region.to_string(),
            identity,
        }
    }

    /// The default region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The name of the identity behind the credentials, for messages that say what to fix.
    pub fn identity(&self) -> &'static str {
        self.identity
    }

    /// The credentials themselves, for checks (`doctor`) that want to know they can be had.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The SDK configuration for a client in `region` (the default when `None`): the helper's
    /// credentials, bounded attempts and timeouts, and the SDK's endpoint settings.
    pub async fn config(&self, region: Option<&str>) -> SdkConfig {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(ATTEMPT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(CALL_TIMEOUT)
            .build();
        client_config(
            region.unwrap_or(&self.region),
            Some(SharedCredentialsProvider::new(self.credentials.clone())),
            RetryConfig::standard().with_max_attempts(ATTEMPTS),
            timeouts,
        )
        .await
    }
}
