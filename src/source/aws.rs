//! The helper's own AWS access: the credentials it signs its own calls with (ECR for registry
//! passwords, Secrets Manager and Parameter Store for `aws-sm` and `aws-ssm` secrets), and the
//! SDK configuration those clients share. Builds never see these credentials unless a listener
//! serves them too.

use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use aws_types::region::Region;
use aws_types::sdk_config::{RetryConfig, SdkConfig, TimeoutConfig};

use super::credentials::Credentials;

/// Time allowed for one attempt of a call, connection included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed for a call with all its attempts.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per call (the SDK's standard retry, which backs off and retries throttling, 5xx and
/// timeouts).
pub const ATTEMPTS: u32 = 3;

/// An AWS service the helper calls for itself, with the SDK's standard endpoint override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
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
    /// The variable that overrides this service's endpoint (the SDKs' `AWS_ENDPOINT_URL_<ID>`,
    /// the service id upper-cased with spaces as underscores).
    pub fn endpoint_var(self) -> &'static str {
        match self {
            Service::Ecr => "AWS_ENDPOINT_URL_ECR",
            Service::EcrPublic => "AWS_ENDPOINT_URL_ECR_PUBLIC",
            Service::SecretsManager => "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            Service::Ssm => "AWS_ENDPOINT_URL_SSM",
        }
    }

    /// The endpoint override in effect: the service's own variable, else `AWS_ENDPOINT_URL`.
    pub fn endpoint_override(self) -> Option<String> {
        [self.endpoint_var(), "AWS_ENDPOINT_URL"]
            .into_iter()
            .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
    }
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

    /// The SDK configuration for a `service` client in `region` (the default when `None`): the
    /// helper's credentials and rustls stack, bounded attempts and timeouts, and the service's
    /// endpoint override.
    pub fn config(&self, service: Service, region: Option<&str>) -> SdkConfig {
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut config = SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(Region::new(region.unwrap_or(&self.region).to_string()))
            .credentials_provider(SharedCredentialsProvider::new(self.credentials.clone()))
            .http_client(https)
            .retry_config(RetryConfig::standard().with_max_attempts(ATTEMPTS))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(ATTEMPT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(CALL_TIMEOUT)
                    .build(),
            );
        if let Some(url) = service.endpoint_override() {
            config = config.endpoint_url(url);
        }
        config.build()
    }
}
