//! One AssumeRoleWithWebIdentity call, with the helper's own bounded retries and errors that say
//! what to fix. The call is unsigned, so the SDK client has no credentials provider at all.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_sts::config::retry::RetryConfig;
use aws_sdk_sts::config::timeout::TimeoutConfig;
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sts::types::PolicyDescriptorType;

use super::scope::Scope;
use crate::secret::SecretValue;
use crate::source::aws::{client_config, Service};
use crate::source::credentials::Issued;
use crate::source::jwt::{self, Claims};
use crate::source::remote::{retrying, scrub, Failure};
use crate::source::{ErrorKind, SourceError};

/// Attempts per exchange; the SDK's own retries are off so this count is exact.
pub const ATTEMPTS: u32 = 3;
/// Time allowed for one attempt, connection included. With the backoff below, an exchange that
/// keeps failing gives up within about 10 s.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// First backoff; doubled per retry, with jitter.
const BACKOFF: Duration = Duration::from_millis(250);

/// STS error codes worth another attempt (as are HTTP 429 and 5xx whatever the code).
const TRANSIENT_CODES: &[&str] = &[
    "IDPCommunicationError",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "InternalFailure",
];

/// The final STS error codes: the kind each maps to and what to fix, where `{name}` stands for a
/// value of the request (see `classify`). The empty code is an answer that is not STS's.
const HINTS: &[(&str, ErrorKind, &str)] = &[
    (
        "ExpiredTokenException",
        ErrorKind::Invalid,
        "STS considers the web identity token expired: check that kubelet rotates the projected \
         token and this machine's clock",
    ),
    (
        "InvalidIdentityToken",
        ErrorKind::Invalid,
        "STS could not validate the token: check that {iss} is registered as an IAM OIDC \
         identity provider in the role's account, with {aud} in its audiences, and that its \
         discovery document and keys are reachable",
    ),
    (
        "IDPRejectedClaim",
        ErrorKind::Denied,
        "the identity provider rejected the token's claims: {trust}",
    ),
    (
        "AccessDenied",
        ErrorKind::Denied,
        "not allowed to assume {role}: {trust}",
    ),
    (
        "MalformedPolicyDocument",
        ErrorKind::Invalid,
        "STS rejected the session policy: check --session-policy's grammar (Version, Statement, \
         Effect, Action, Resource)",
    ),
    (
        "PackedPolicyTooLarge",
        ErrorKind::Invalid,
        "the session policies are too large once packed: shorten --session-policy or pass fewer \
         --policy-arn",
    ),
    (
        "RegionDisabledException",
        ErrorKind::Denied,
        "STS is not activated in {region} for the role's account: activate it in the IAM \
         console's account settings or pass another --region",
    ),
    (
        "ValidationError",
        ErrorKind::Invalid,
        "STS refused the request: --duration ({duration}) must not exceed the role's maximum \
         session duration (1h unless raised), and the role ARN must exist",
    ),
    (
        "",
        ErrorKind::Invalid,
        "the answer is not an STS response: check that --sts-endpoint ({endpoint}) is STS",
    ),
];

/// Any other final code.
const OTHER_CODE: (ErrorKind, &str) = (ErrorKind::Invalid, "check the role {role} and the request");

/// The `{trust}` of [`HINTS`], from the token's claims.
const TRUST: &str = "check the role's trust policy: Principal Federated = the OIDC provider for \
                     {iss}, Action sts:AssumeRoleWithWebIdentity, Condition {host}:sub = {sub} \
                     and {host}:aud = {aud}";

/// The `{trust}` of [`HINTS`] for AssumeRole, which the `{source}` identity's role signs.
const ROLE_TRUST: &str = "check that {role}'s trust policy allows sts:AssumeRole by the {source} \
                          identity's role (Principal AWS = its ARN, and sts:ExternalId if it asks \
                          for --external-id), and that the {source} role may call sts:AssumeRole \
                          on {role}";

/// Who asks STS for credentials.
enum Asker<'a> {
    /// A web identity token, AssumeRoleWithWebIdentity.
    WebIdentity {
        /// The token, kept out of every message.
        token: &'a str,
        /// Its checked claims, for the trust-policy hints.
        claims: &'a Claims,
    },
    /// The signing credentials of a credential identity, AssumeRole.
    Role {
        /// The identity's name (`pod-identity`, `imds`...).
        source: &'static str,
        /// The external id the role's trust policy may require.
        external_id: Option<&'a str>,
    },
}

/// `template` with each `{name}` found in `values` replaced by its value, in one pass: a value is
/// copied as is, never read as a template.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        rest = &rest[open..];
        let value = rest
            .find('}')
            .and_then(|close| values.iter().find(|(name, _)| *name == &rest[1..close]));
        match value {
            Some((name, value)) => {
                out.push_str(value);
                rest = &rest[name.len() + 2..];
            }
            None => {
                out.push('{');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// An STS client for one region and endpoint.
#[derive(Debug, Clone)]
pub struct Exchange {
    region: String,
    /// `--sts-endpoint`, which wins over the SDK's endpoint settings.
    explicit: Option<String>,
    credentials: Option<SharedCredentialsProvider>,
    /// The client, built at the first call (the SDK's settings are read asynchronously), and
    /// where its requests go, for messages.
    built: tokio::sync::OnceCell<(aws_sdk_sts::Client, String)>,
}

impl Exchange {
    /// An unsigned client (AssumeRoleWithWebIdentity needs no credentials) for `region`,
    /// sending to `endpoint` or, without one, where the SDK's endpoint settings say
    /// (`AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL`, the shared config file), else to STS's
    /// regional endpoint.
    pub fn new(region: &str, endpoint: Option<&str>) -> Self {
        Self::build(region, endpoint, None)
    }

    /// A client whose calls (AssumeRole) are signed with `credentials`.
    pub fn signed(
        region: &str,
        endpoint: Option<&str>,
        credentials: SharedCredentialsProvider,
    ) -> Self {
        Self::build(region, endpoint, Some(credentials))
    }

    fn build(
        region: &str,
        endpoint: Option<&str>,
        credentials: Option<SharedCredentialsProvider>,
    ) -> Self {
        Self {
            region: region.to_string(),
            explicit: endpoint.map(str::to_string),
            credentials,
            built: tokio::sync::OnceCell::new(),
        }
    }

    /// The client, and where its requests go.
    async fn client(&self) -> &(aws_sdk_sts::Client, String) {
        self.built
            .get_or_init(|| async {
                let timeouts = TimeoutConfig::builder()
                    .connect_timeout(ATTEMPT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build();
                let shared = client_config(
                    &self.region,
                    self.credentials.clone(),
                    RetryConfig::disabled(),
                    timeouts,
                )
                .await;
                let mut config = aws_sdk_sts::config::Builder::from(&shared);
                if let Some(url) = &self.explicit {
                    config = config.endpoint_url(url);
                }
                let endpoint = match &self.explicit {
                    Some(url) => Some(url.clone()),
                    None => Service::Sts.endpoint_override().await,
                };
                let endpoint = endpoint
                    .unwrap_or_else(|| format!("https://sts.{}.amazonaws.com", self.region));
                (aws_sdk_sts::Client::from_conf(config.build()), endpoint)
            })
            .await
    }

    /// Where requests go, for messages (known once the first call built the client).
    fn endpoint(&self) -> &str {
        self.built.get().map_or("STS", |(_, e)| e.as_str())
    }

    /// Exchanges `token` (whose checked claims are `claims`) for credentials scoped by `scope`,
    /// retrying transient failures with exponential backoff.
    pub async fn assume(
        &self,
        scope: &Scope,
        token: &SecretValue,
        claims: &Claims,
        session_name: &str,
    ) -> Result<Issued, SourceError> {
        let token_text = std::str::from_utf8(token.expose()).map_err(|_| {
            SourceError::new(ErrorKind::Invalid, "the web identity token is not UTF-8")
        })?;
        let asker = Asker::WebIdentity {
            token: token_text,
            claims,
        };
        self.call(scope, session_name, &asker).await
    }

    /// Narrows the signing credentials (the `source` identity's) to `scope` with AssumeRole,
    /// passing `external_id` when the role's trust policy asks for one.
    pub async fn assume_role(
        &self,
        scope: &Scope,
        session_name: &str,
        source: &'static str,
        external_id: Option<&str>,
    ) -> Result<Issued, SourceError> {
        let asker = Asker::Role {
            source,
            external_id,
        };
        self.call(scope, session_name, &asker).await
    }

    async fn call(
        &self,
        scope: &Scope,
        session_name: &str,
        asker: &Asker<'_>,
    ) -> Result<Issued, SourceError> {
        let attempt = || self.attempt(scope, session_name, asker);
        match retrying("STS call", ATTEMPTS, BACKOFF, attempt).await {
            Ok(issued) => Ok(issued),
            Err(Failure::Fatal(e)) => Err(e),
            Err(Failure::Transient(why)) => Err(SourceError::new(
                ErrorKind::Io,
                format!(
                    "STS at {} failed {ATTEMPTS} times, last: {why}; check that the endpoint is \
                     reachable from the helper (proxy, DNS, egress rules) and the AWS Health \
                     Dashboard",
                    self.endpoint()
                ),
            )),
        }
    }

    async fn attempt(
        &self,
        scope: &Scope,
        session_name: &str,
        asker: &Asker<'_>,
    ) -> Result<Issued, Failure> {
        let policy_arns: Vec<_> = scope
            .policy_arns
            .iter()
            .map(|arn| PolicyDescriptorType::builder().arn(arn).build())
            .collect();
        let policy_arns = Some(policy_arns).filter(|v| !v.is_empty());
        let duration = scope.duration.as_secs() as i32;
        let client = &self.client().await.0;
        let (creds, principal) = match asker {
            Asker::WebIdentity { token, .. } => {
                let result = client
                    .assume_role_with_web_identity()
                    .role_arn(&scope.role_arn)
                    .role_session_name(session_name)
                    .web_identity_token(*token)
                    .set_policy(scope.policy.clone())
                    .set_policy_arns(policy_arns)
                    .duration_seconds(duration)
                    .send()
                    .await;
                let mut output = result.map_err(|e| self.classify(e, scope, asker))?;
                (output.credentials.take(), output.assumed_role_user)
            }
            Asker::Role { external_id, .. } => {
                let result = client
                    .assume_role()
                    .role_arn(&scope.role_arn)
                    .role_session_name(session_name)
                    .set_external_id(external_id.map(str::to_string))
                    .set_policy(scope.policy.clone())
                    .set_policy_arns(policy_arns)
                    .duration_seconds(duration)
                    .send()
                    .await;
                let mut output = result.map_err(|e| self.classify(e, scope, asker))?;
                (output.credentials.take(), output.assumed_role_user)
            }
        };
        let malformed = |what: &str| {
            Failure::Fatal(SourceError::new(
                ErrorKind::Invalid,
                format!(
                    "STS at {} answered without {what}; check that --sts-endpoint is an STS \
                     endpoint",
                    self.endpoint()
                ),
            ))
        };
        let creds = creds.ok_or_else(|| malformed("credentials"))?;
        let expiration =
            SystemTime::try_from(creds.expiration).map_err(|_| malformed("a valid expiration"))?;
        Ok(Issued {
            access_key_id: SecretValue::from(creds.access_key_id),
            secret_access_key: SecretValue::from(creds.secret_access_key),
            session_token: SecretValue::from(creds.session_token),
            expiration,
            received: SystemTime::now(),
            principal: principal.map(|u| u.arn).unwrap_or_default(),
        })
    }

    fn classify<E>(
        &self,
        err: SdkError<E, aws_sdk_sts::config::http::HttpResponse>,
        scope: &Scope,
        asker: &Asker<'_>,
    ) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let fatal = |kind, message: String| Failure::Fatal(SourceError::new(kind, message));
        let token = match asker {
            Asker::WebIdentity { token, .. } => token,
            Asker::Role { .. } => "",
        };
        let service = match &err {
            SdkError::ServiceError(service) => service,
            SdkError::TimeoutError(_) => {
                return Failure::Transient(format!("no answer within {ATTEMPT_TIMEOUT:?}"))
            }
            SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => {
                return Failure::Transient(format!(
                    "cannot reach it: {}",
                    DisplayErrorContext(&err)
                ))
            }
            SdkError::ResponseError(r) if r.raw().status().is_server_error() => {
                return Failure::Transient(format!("HTTP {}", r.raw().status().as_u16()))
            }
            _ => {
                return fatal(
                    ErrorKind::Io,
                    format!(
                        "STS call to {} failed: {}; check --sts-endpoint and --region",
                        self.endpoint(),
                        scrub(&DisplayErrorContext(&err).to_string(), token)
                    ),
                )
            }
        };
        let status = service.raw().status().as_u16();
        let code = service.err().code().unwrap_or_default().to_string();
        let quoted = scrub(service.err().message().unwrap_or_default(), token);
        let said = format!("STS answered {code} (HTTP {status}: {quoted:?})");
        if TRANSIENT_CODES.contains(&code.as_str()) || status == 429 || status >= 500 {
            return Failure::Transient(said);
        }
        let no_claims = Claims::default();
        let (claims, trust) = match asker {
            Asker::WebIdentity { claims, .. } => (*claims, TRUST),
            Asker::Role { .. } => (&no_claims, ROLE_TRUST),
        };
        let source = match asker {
            Asker::Role { source, .. } => source,
            Asker::WebIdentity { .. } => "web",
        };
        let iss = claims.iss.as_deref().unwrap_or("(no iss claim)");
        let aud = claims.aud.to_vec().join(",");
        let claim_values = [
            ("iss", iss),
            ("host", iss.trim_start_matches("https://")),
            ("sub", claims.sub.as_deref().unwrap_or("(no sub claim)")),
            ("aud", &aud),
            ("source", source),
            ("role", &scope.role_arn),
        ];
        let trust = fill(trust, &claim_values);
        let duration = jwt::human(scope.duration);
        let values = [
            ("iss", iss),
            ("aud", &aud),
            ("trust", &trust),
            ("role", &scope.role_arn),
            ("region", &self.region),
            ("endpoint", self.endpoint()),
            ("duration", &duration),
        ];
        let (kind, hint) = HINTS
            .iter()
            .find(|(known, _, _)| *known == code)
            .map_or(OTHER_CODE, |&(_, kind, hint)| (kind, hint));
        let hint = fill(hint, &values);
        fatal(kind, format!("{said}: {hint}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_copies_values_as_they_are() {
        let values = [("role", "{sub}"), ("sub", "s")];
        assert_eq!(fill("a {role} {sub} {x} {", &values), "a {sub} s {x} {");
        assert_eq!(
            fill(OTHER_CODE.1, &values),
            "check the role {sub} and the request"
        );
    }
}
