//! `type=aws-sm` and `type=aws-ssm` secrets: values a team keeps in AWS Secrets Manager or
//! Parameter Store, fetched with the helper's own credentials (so a build needs no AWS access of
//! its own) and cached per value.
//!
//! Each value is cached for its `ttl`; one call per value is in flight however many builds ask;
//! while the service cannot be reached the cached value is served until it is twice the `ttl`
//! old. A definite answer (the secret is gone, access was revoked) is never papered over with
//! the cached value: it fails the request at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use futures_util::future::BoxFuture;

use super::aws::{Aws, Service};
use super::flight::Flight;
use super::{jwt, ErrorKind, Source, SourceError};
use crate::secret::{SecretValue, MAX_SECRET_SIZE};

/// How long a fetched value is served before it is fetched again, when `ttl=` is not given.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// After a failed refresh, the longest the cached value is served before the next attempt, so
/// a service that is down is not asked again by every request.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);

/// The AWS value a declaration names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsValue {
    /// A Secrets Manager secret: its `SecretString`, or its `SecretBinary` as bytes.
    SecretsManager {
        /// The secret's name or ARN.
        name: String,
        /// One field of a JSON secret: a string field as is, any other as its JSON text.
        key: Option<String>,
        /// The version stage (`AWSCURRENT` when not given).
        version_stage: Option<String>,
    },
    /// A Parameter Store parameter (`SecureString` decrypted, `String` as is).
    Parameter {
        /// The parameter's name (`/path/name`) or ARN.
        name: String,
    },
}

/// An `aws-sm` or `aws-ssm` declaration: what to fetch and how long to keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSecret {
    /// What to fetch.
    pub value: AwsValue,
    /// How long a fetched value is served before it is fetched again.
    pub ttl: Duration,
}

impl AwsSecret {
    /// The secret's or parameter's name (or ARN) as declared: configuration, safe to log.
    pub fn name(&self) -> &str {
        match &self.value {
            AwsValue::SecretsManager { name, .. } | AwsValue::Parameter { name } => name,
        }
    }

    /// The service that holds the value.
    pub fn service(&self) -> Service {
        match self.value {
            AwsValue::SecretsManager { .. } => Service::SecretsManager,
            AwsValue::Parameter { .. } => Service::Ssm,
        }
    }

    /// The `type=` of the declaration, which is also the source's name in audit records:
    /// `aws-sm` or `aws-ssm`.
    pub fn source_name(&self) -> &'static str {
        source_name(self.service())
    }

    /// The region the value is fetched from: the one its ARN names, else `default`.
    fn region<'a>(&'a self, default: &'a str) -> &'a str {
        super::arn::service_region(self.name()).map_or(default, |(_, region)| region)
    }
}

/// The source name (`aws-sm`, `aws-ssm`) of a service's values.
fn source_name(service: Service) -> &'static str {
    match service {
        Service::SecretsManager => "aws-sm",
        _ => "aws-ssm",
    }
}

/// A client of the service that holds a value.
#[derive(Debug, Clone)]
enum Client {
    SecretsManager(aws_sdk_secretsmanager::Client),
    Ssm(aws_sdk_ssm::Client),
}

/// The client of one service in one region, built at its first call: the SDK's settings it is
/// built from are read asynchronously.
#[derive(Debug)]
struct Lazy {
    aws: Aws,
    service: Service,
    region: String,
    /// The client, and the endpoint override it was built with (for messages).
    built: tokio::sync::OnceCell<(Client, Option<String>)>,
}

impl Lazy {
    async fn client(&self) -> &Client {
        let (client, _) = self
            .built
            .get_or_init(|| async {
                let config = self.aws.config(Some(&self.region)).await;
                let client = match self.service {
                    Service::SecretsManager => {
                        Client::SecretsManager(aws_sdk_secretsmanager::Client::new(&config))
                    }
                    _ => Client::Ssm(aws_sdk_ssm::Client::new(&config)),
                };
                (client, self.service.endpoint_override().await)
            })
            .await;
        client
    }

    /// The endpoint override the client was built with, once it was.
    fn endpoint(&self) -> Option<&str> {
        self.built.get().and_then(|(_, e)| e.as_deref())
    }
}

/// One declared value: what it is, where it is fetched, and its cache.
#[derive(Debug)]
struct Entry {
    secret: AwsSecret,
    region: String,
    client: Arc<Lazy>,
    cache: Cache,
}

/// Serves the declared values of one service (`aws-sm` or `aws-ssm`) by id.
#[derive(Debug)]
pub struct AwsSecrets {
    name: &'static str,
    entries: BTreeMap<String, Entry>,
}

impl AwsSecrets {
    /// A source for the `(id, declaration)` pairs of `service` (others are left out), calling
    /// with `aws`'s credentials: one client per region named.
    pub fn new(service: Service, declared: Vec<(String, AwsSecret)>, aws: &Aws) -> Self {
        let mut clients: BTreeMap<String, Arc<Lazy>> = BTreeMap::new();
        let mut entries = BTreeMap::new();
        for (id, secret) in declared {
            if secret.service() != service {
                continue;
            }
            let region = secret.region(aws.region()).to_string();
            let client = clients
                .entry(region.clone())
                .or_insert_with(|| {
                    Arc::new(Lazy {
                        aws: aws.clone(),
                        service,
                        region: region.clone(),
                        built: tokio::sync::OnceCell::new(),
                    })
                })
                .clone();
            let cache = Cache::new(secret.ttl);
            entries.insert(
                id,
                Entry {
                    secret,
                    region,
                    client,
                    cache,
                },
            );
        }
        Self {
            name: source_name(service),
            entries,
        }
    }

    /// One call to the service for `id`'s value, held to BuildKit's size limit.
    async fn call(&self, id: &str, entry: &Entry) -> Result<SecretValue, SourceError> {
        let name = entry.secret.name();
        let value = match (entry.client.client().await, &entry.secret.value) {
            (
                Client::SecretsManager(client),
                AwsValue::SecretsManager {
                    key, version_stage, ..
                },
            ) => {
                let out = client
                    .get_secret_value()
                    .secret_id(name)
                    .set_version_stage(version_stage.clone())
                    .send()
                    .await
                    .map_err(|e| call_error(id, entry, e))?;
                let whole = match (out.secret_string, out.secret_binary) {
                    (Some(text), _) => SecretValue::from(text),
                    (None, Some(bytes)) => SecretValue::new(bytes.into_inner()),
                    (None, None) => {
                        return Err(SourceError::new(
                            ErrorKind::Invalid,
                            format!(
                                "secret {id}: Secrets Manager answered with neither SecretString \
                                 nor SecretBinary for {name}"
                            ),
                        ))
                    }
                };
                match key {
                    Some(key) => field(id, name, &whole, key)?,
                    None => whole,
                }
            }
            (Client::Ssm(client), AwsValue::Parameter { .. }) => {
                let out = client
                    .get_parameter()
                    .name(name)
                    .with_decryption(true)
                    .send()
                    .await
                    .map_err(|e| call_error(id, entry, e))?;
                match out.parameter.and_then(|p| p.value) {
                    Some(text) => SecretValue::from(text),
                    None => {
                        return Err(SourceError::new(
                            ErrorKind::Invalid,
                            format!(
                                "secret {id}: Parameter Store answered with no value for {name}"
                            ),
                        ))
                    }
                }
            }
            _ => unreachable!("entries are built with their own service's client"),
        };
        if value.len() > MAX_SECRET_SIZE {
            let fix = match entry.secret.value {
                AwsValue::SecretsManager { .. } => {
                    "store a smaller value, or pick one field with key="
                }
                AwsValue::Parameter { .. } => "store a smaller value",
            };
            return Err(SourceError::new(
                ErrorKind::Invalid,
                format!(
                    "secret {id}: {name} is {} bytes, over BuildKit's limit of {} KiB for one \
                     secret; {fix}",
                    value.len(),
                    MAX_SECRET_SIZE / 1024
                ),
            ));
        }
        Ok(value)
    }
}

/// Field `key` of the JSON object `whole`: a string as is, anything else as its JSON text
/// (`42`, `true`, `{"a":1}`). The parsed copy is not wiped on drop; the value it came from is.
fn field(id: &str, name: &str, whole: &SecretValue, key: &str) -> Result<SecretValue, SourceError> {
    let Ok(mut object) =
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(whole.expose())
    else {
        return Err(SourceError::new(
            ErrorKind::Invalid,
            format!(
                "secret {id}: {name} is not a JSON object, so key={key} cannot pick a field of \
                 it; drop key= to get the whole value"
            ),
        ));
    };
    match object.remove(key) {
        Some(serde_json::Value::String(text)) => Ok(SecretValue::from(text)),
        Some(other) => Ok(SecretValue::from(other.to_string())),
        None => {
            let fields: Vec<&str> = object.keys().map(String::as_str).collect();
            Err(SourceError::new(
                ErrorKind::Missing,
                format!(
                    "secret {id}: {name} has no field {key:?} (its fields: {}); correct key= or \
                     add the field to the secret",
                    fields.join(", ")
                ),
            ))
        }
    }
}

/// What the SDK says went wrong, without the raw response: an answer the SDK could not read
/// may be a value, so only its status is told.
fn detail<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(e) => format!(
            "{}: {}",
            e.err().code().unwrap_or("an unnamed error"),
            e.err().message().unwrap_or("no message")
        ),
        SdkError::ResponseError(e) => format!(
            "an answer the SDK could not read (HTTP {})",
            e.raw().status().as_u16()
        ),
        SdkError::TimeoutError(_) => "the call timed out".to_string(),
        // Connection and credential failures: no answer was received.
        other => {
            let mut text = other.to_string();
            let mut cause = std::error::Error::source(other);
            while let Some(e) = cause {
                text.push_str(": ");
                text.push_str(&e.to_string());
                cause = e.source();
            }
            text
        }
    }
}

/// A failed call for `id`, classified, with what to change. The SDK's text names the service's
/// error code and message, never the value (none was received).
fn call_error<E>(id: &str, entry: &Entry, err: SdkError<E, HttpResponse>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let name = entry.secret.name();
    let region = &entry.region;
    let detail = detail(&err);
    let (service, resource, needs) = match entry.secret.value {
        AwsValue::SecretsManager { .. } => {
            let arn = if name.starts_with("arn:") {
                name.to_string()
            } else {
                format!("arn:aws:secretsmanager:{region}:ACCOUNT:secret:{name}-*")
            };
            (
                "Secrets Manager",
                format!("secret {name}"),
                format!("secretsmanager:GetSecretValue on {arn}"),
            )
        }
        AwsValue::Parameter { .. } => {
            let arn = if name.starts_with("arn:") {
                name.to_string()
            } else {
                format!(
                    "arn:aws:ssm:{region}:ACCOUNT:parameter/{}",
                    name.trim_start_matches('/')
                )
            };
            (
                "Parameter Store",
                format!("parameter {name}"),
                format!("ssm:GetParameter on {arn} and kms:Decrypt on its KMS key"),
            )
        }
    };
    let (kind, fix) = match err.code() {
        Some("ResourceNotFoundException" | "ParameterNotFound" | "ParameterVersionNotFound") => (
            ErrorKind::Missing,
            format!(
                "{service} has no {resource} in {region}: correct name= (a full ARN selects its \
                 own region){}",
                match &entry.secret.value {
                    AwsValue::SecretsManager {
                        version_stage: Some(stage),
                        ..
                    } => format!(", or version-stage={stage}, which no version of it carries"),
                    _ => String::new(),
                }
            ),
        ),
        Some("AccessDeniedException" | "AccessDenied" | "DecryptionFailure" | "InvalidKeyId") => (
            ErrorKind::Denied,
            format!("the helper's role is refused: it needs {needs}"),
        ),
        Some(
            "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "ExpiredTokenException"
            | "InvalidClientTokenId",
        ) => (
            ErrorKind::Denied,
            "the helper's own credentials were refused: run `irsa-secrets doctor` to check the \
             identity"
                .to_string(),
        ),
        Some("InvalidRequestException" | "InvalidParameterException" | "ValidationException") => (
            ErrorKind::Invalid,
            format!("{service} refused the request for {resource} (scheduled for deletion?)"),
        ),
        _ => (
            ErrorKind::Io,
            format!(
                "{service} in {region} did not answer (endpoint override: {}); the cached value, \
                 if any, is served until it is twice its ttl old",
                entry.client.endpoint().unwrap_or("none")
            ),
        ),
    };
    SourceError::new(kind, format!("secret {id}: {fix}: {detail}"))
}

impl Source for AwsSecrets {
    fn name(&self) -> &'static str {
        self.name
    }

    fn ids(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    fn fetch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SecretValue>, SourceError>> {
        Box::pin(async move {
            let Some(entry) = self.entries.get(id) else {
                return Ok(None);
            };
            let what = Described {
                id,
                source: self.name(),
                name: entry.secret.name(),
            };
            entry.cache.get(&what, self.call(id, entry)).await.map(Some)
        })
    }

    /// The declared name (or ARN) behind `id`.
    fn origin(&self, id: &str) -> Option<&str> {
        self.entries.get(id).map(|e| e.secret.name())
    }
}

/// What a cache's log lines name.
struct Described<'a> {
    id: &'a str,
    source: &'a str,
    name: &'a str,
}

/// One value's cache and single flight.
#[derive(Debug)]
struct Cache {
    ttl: Duration,
    state: Mutex<State>,
    flight: Flight<Result<SecretValue, SourceError>>,
}

/// What the last calls left.
#[derive(Debug, Default)]
struct State {
    /// The last value fetched, and when.
    value: Option<(SecretValue, Instant)>,
    /// When the last call found the service unreachable, if it did.
    unreachable: Option<Instant>,
}

impl Cache {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            state: Mutex::new(State::default()),
            flight: Flight::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long after a failed refresh the stale value is served without another call.
    fn retry_pause(&self) -> Duration {
        (self.ttl / 4).min(MAX_RETRY_PAUSE)
    }

    /// The value to serve at `now` without calling: a fresh one, or a stale one (under twice the
    /// ttl old) while the service was just found unreachable.
    fn usable(&self, state: &State, now: Instant) -> Option<SecretValue> {
        let (value, fetched) = state.value.as_ref()?;
        let age = now.saturating_duration_since(*fetched);
        if age < self.ttl {
            return Some(value.clone());
        }
        let unreachable = state.unreachable?;
        (age < self.ttl * 2 && now.saturating_duration_since(unreachable) < self.retry_pause())
            .then(|| value.clone())
    }

    /// The cached value, or the outcome of `call` (one at a time; those who waited for a call
    /// take its outcome).
    async fn get(
        &self,
        what: &Described<'_>,
        call: impl Future<Output = Result<SecretValue, SourceError>>,
    ) -> Result<SecretValue, SourceError> {
        let asked = Instant::now();
        if let Some(value) = self.usable(&self.state(), asked) {
            return Ok(value);
        }
        self.flight
            .join_or_call(asked, || self.refresh(what, asked, call))
            .await
    }

    /// One call, stored; when the service is unreachable, the stale value while it is under
    /// twice the ttl old at `asked`, the time of the request (a call that takes its retries'
    /// time does not age the value past what the caller was promised).
    async fn refresh(
        &self,
        what: &Described<'_>,
        asked: Instant,
        call: impl Future<Output = Result<SecretValue, SourceError>>,
    ) -> Result<SecretValue, SourceError> {
        let outcome = call.await;
        let now = Instant::now();
        let mut state = self.state();
        let error = match outcome {
            Ok(value) => {
                state.value = Some((value.clone(), now));
                state.unreachable = None;
                return Ok(value);
            }
            Err(error) => error,
        };
        if error.kind != ErrorKind::Io {
            state.unreachable = None;
            return Err(error);
        }
        state.unreachable = Some(now);
        let Some((value, fetched)) = &state.value else {
            return Err(error);
        };
        let age = asked.saturating_duration_since(*fetched);
        if age >= self.ttl * 2 {
            return Err(SourceError::new(
                error.kind,
                format!(
                    "{error}. The value fetched {} ago is past twice its ttl of {}, so it is no \
                     longer served",
                    jwt::human(age),
                    jwt::human(self.ttl)
                ),
            ));
        }
        tracing::warn!(
            id = what.id,
            source = what.source,
            name = what.name,
            error = %error,
            "fetching the secret failed; serving the value fetched {} ago until it is twice its \
             ttl of {} old",
            jwt::human(age),
            jwt::human(self.ttl)
        );
        Ok(value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::testing::capture_log;

    const WHAT: Described<'static> = Described {
        id: "npm",
        source: "aws-sm",
        name: "ci/npm",
    };

    fn value(s: &str) -> SecretValue {
        SecretValue::from(s.to_string())
    }

    fn down() -> SourceError {
        SourceError::new(ErrorKind::Io, "down")
    }

    /// Moves the cache's past back by `by`, as if that much time had passed.
    fn age(cache: &Cache, by: Duration) {
        let mut state = cache.state();
        if let Some((_, fetched)) = &mut state.value {
            *fetched -= by;
        }
        if let Some(unreachable) = &mut state.unreachable {
            *unreachable -= by;
        }
    }

    #[tokio::test]
    async fn a_value_is_kept_for_its_ttl_and_stale_only_while_the_service_is_down() {
        let cache = Cache::new(Duration::from_secs(8));
        let got = cache.get(&WHAT, async { Ok(value("one")) }).await.unwrap();
        assert_eq!(got.expose(), b"one");
        // Within the ttl: no call.
        age(&cache, Duration::from_secs(7));
        let got = cache.get(&WHAT, async { unreachable!() }).await.unwrap();
        assert_eq!(got.expose(), b"one");
        // Past it: a call; down, the cached value is served (and not asked again at once).
        age(&cache, Duration::from_secs(2));
        let got = cache.get(&WHAT, async { Err(down()) }).await.unwrap();
        assert_eq!(got.expose(), b"one");
        let got = cache.get(&WHAT, async { unreachable!() }).await.unwrap();
        assert_eq!(got.expose(), b"one");
        // Past twice the ttl: the error, saying why the cached value is not served.
        age(&cache, Duration::from_secs(8));
        let err = cache.get(&WHAT, async { Err(down()) }).await.unwrap_err();
        assert!(err.message.contains("past twice its ttl"), "{err}");
        // Back: a fresh value.
        let got = cache.get(&WHAT, async { Ok(value("two")) }).await.unwrap();
        assert_eq!(got.expose(), b"two");
    }

    /// Moved from an end-to-end test that polled the helper until the ttl passed.
    #[tokio::test]
    async fn a_new_value_is_served_once_the_ttl_has_passed_with_a_call_per_ttl_not_per_request() {
        let cache = Cache::new(Duration::from_secs(2));
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let stored = Mutex::new("npm-token-first-0000000");
        let get = || {
            let (calls, stored) = (&calls, &stored);
            cache.get(&WHAT, async move {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(value(*stored.lock().unwrap()))
            })
        };
        assert_eq!(get().await.unwrap().expose(), b"npm-token-first-0000000");
        // Rotated: a request every 20 ms until the new value is served.
        *stored.lock().unwrap() = "npm-token-second-1111111";
        let mut elapsed = Duration::ZERO;
        while get().await.unwrap().expose() != b"npm-token-second-1111111" {
            assert!(elapsed < Duration::from_secs(20), "the new value is served");
            age(&cache, Duration::from_millis(20));
            elapsed += Duration::from_millis(20);
        }
        assert_eq!(
            elapsed,
            Duration::from_secs(2),
            "at the first request after the ttl, not before"
        );
        let calls = calls.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (1..=3).contains(&calls),
            "a call per ttl, not per request: {calls}"
        );
    }

    /// Moved from an end-to-end test that waited for the ttl with the service down.
    #[tokio::test]
    async fn while_the_service_is_down_the_cached_value_is_served_then_it_fails_clearly() {
        let (log, _guard) = capture_log();
        let cache = Cache::new(Duration::from_secs(2));
        let cached = "npm-token-cached-7777777";
        let got = cache.get(&WHAT, async { Ok(value(cached)) }).await;
        assert_eq!(got.unwrap().expose(), cached.as_bytes());
        // The service goes away: past the ttl, the cached value is served and the failure logged.
        age(&cache, Duration::from_secs(2));
        let got = cache.get(&WHAT, async { Err(down()) }).await;
        assert_eq!(got.unwrap().expose(), cached.as_bytes());
        assert!(log.contains("fetching the secret failed; serving the value fetched"));
        // Past twice the ttl: the request fails, saying why, without the value.
        age(&cache, Duration::from_secs(2));
        let err = cache.get(&WHAT, async { Err(down()) }).await.unwrap_err();
        assert!(!err.message.contains(cached), "{err}");
        assert_eq!(err.kind, ErrorKind::Io, "{err}");
        assert!(
            err.message
                .contains("past twice its ttl of 2s, so it is no longer served"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_definite_refusal_is_not_covered_by_the_cached_value() {
        let cache = Cache::new(Duration::from_secs(8));
        cache.get(&WHAT, async { Ok(value("one")) }).await.unwrap();
        age(&cache, Duration::from_secs(9));
        let denied = SourceError::new(ErrorKind::Denied, "revoked");
        let err = cache.get(&WHAT, async { Err(denied) }).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied);
    }

    #[test]
    fn a_json_field_is_picked_strings_as_is_others_as_json() {
        let whole = value(r#"{"user":"ci","password":"hunter2-x","port":5432,"tags":["a"]}"#);
        let pick = |k| field("db", "ci/db", &whole, k);
        assert_eq!(pick("password").unwrap().expose(), b"hunter2-x");
        assert_eq!(pick("port").unwrap().expose(), b"5432");
        assert_eq!(pick("tags").unwrap().expose(), br#"["a"]"#);
        let err = pick("token").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Missing);
        assert!(err.message.contains("no field \"token\""), "{err}");
        assert!(!err.message.contains("hunter2"), "{err}");
        let err = field("db", "ci/db", &value("plain hunter2-x"), "password").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(!err.message.contains("hunter2"), "{err}");
    }
}
