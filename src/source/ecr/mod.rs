//! Registry passwords from ECR: `ecr:GetAuthorizationToken` (or `ecr-public:` for
//! `public.ecr.aws`) with the helper's own credentials, decoded from `AWS:PASSWORD`, cached per
//! ECR endpoint (region, partition, FIPS; see [`Registry::password_scope`]) until 70% of their
//! validity, one call at a time per endpoint however many pulls ask.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_ecr::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use base64::Engine;
use futures_util::future::BoxFuture;

use super::aws::Aws;
use super::clock;
use super::flight::Flight;
use super::remote::scrub;
use super::{ErrorKind, SourceError};
use crate::secret::SecretValue;

pub mod host;
pub use host::{Hosts, Registry};

/// The user name ECR passwords go with.
pub const USER: &str = "AWS";

/// How long ECR says its passwords last; also what is assumed when a fresh password says it has
/// already expired.
pub const VALIDITY: Duration = Duration::from_secs(12 * 3600);

/// The share of a password's validity after which it is fetched again.
const REFRESH_SHARE: f64 = 0.7;

/// What ECR answered: the `base64(AWS:PASSWORD)` token and when ECR says it expires.
pub struct Token {
    /// The encoded token, as ECR sends it.
    pub encoded: SecretValue,
    /// `expiresAt`, when ECR gives it.
    pub expires_at: Option<SystemTime>,
}

/// Who issues tokens: ECR itself, or a stand-in in tests.
pub trait Issuer: Send + Sync {
    /// One `GetAuthorizationToken` call for `registry`.
    fn issue<'a>(&'a self, registry: &'a Registry) -> BoxFuture<'a, Result<Token, SourceError>>;
}

/// A password ready to serve.
#[derive(Clone)]
struct Cached {
    password: SecretValue,
    refresh_at: SystemTime,
}

/// One endpoint's cached password and its single flight.
#[derive(Default)]
struct Slot {
    cached: Mutex<Option<Cached>>,
    flight: Flight<Result<SecretValue, SourceError>>,
}

/// ECR passwords per endpoint, cached.
pub struct Passwords {
    issuer: Box<dyn Issuer>,
    clock: clock::Shared,
    slots: Mutex<HashMap<Registry, Arc<Slot>>>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords").finish_non_exhaustive()
    }
}

impl Passwords {
    /// Passwords issued by ECR with the helper's own credentials.
    pub fn from_aws(aws: Aws) -> Self {
        Self::new(Box::new(Ecr { aws }))
    }

    /// Passwords issued by `issuer`.
    pub fn new(issuer: Box<dyn Issuer>) -> Self {
        Self {
            issuer,
            clock: clock::system(),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The same, deciding freshness by `clock`.
    pub fn with_clock(self, clock: clock::Shared) -> Self {
        Self { clock, ..self }
    }

    /// The password of `registry` (user [`USER`]): the cached one while it is fresh, else a new
    /// one from ECR. A failed call caches nothing: it is the answer of those who waited for it,
    /// and the next request asks again.
    pub async fn password(&self, registry: &Registry) -> Result<SecretValue, SourceError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(slots.entry(registry.password_scope()).or_default())
        };
        let asked = Instant::now();
        if let Some(password) = slot.fresh(self.clock.now()) {
            return Ok(password);
        }
        slot.flight
            .join_or_call(asked, || self.fetch(registry, &slot))
            .await
    }

    /// One ECR call for `registry`, stored in `slot`.
    async fn fetch(&self, registry: &Registry, slot: &Slot) -> Result<SecretValue, SourceError> {
        tracing::debug!(%registry, "asking ECR for a registry password");
        let now = self.clock.now();
        let token = self.issuer.issue(registry).await?;
        let password = decode(&token.encoded)?;
        let (refresh_at, claimed_expired) = refresh_at(now, token.expires_at);
        if claimed_expired {
            tracing::warn!(
                %registry,
                "ECR's password for {registry} says it has already expired: the clock here or the \
                 ECR endpoint is off; serving it as valid for ECR's usual 12 hours"
            );
        }
        *slot.cached.lock().unwrap_or_else(PoisonError::into_inner) = Some(Cached {
            password: password.clone(),
            refresh_at,
        });
        Ok(password)
    }
}

impl Slot {
    /// The cached password while it is not due for refresh at `now`.
    fn fresh(&self, now: SystemTime) -> Option<SecretValue> {
        let cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        cached
            .as_ref()
            .filter(|c| now < c.refresh_at)
            .map(|c| c.password.clone())
    }
}

/// When a password received at `received` is fetched again: at 70% of its validity. ECR says
/// 12 hours; a token that says it has expired already (a skewed clock, or an emulator such as
/// moto, whose `expiresAt` lies in 2015) is taken as valid for those 12 hours, and the second
/// value says so, so it can be warned about: refusing it would fail every build on a clock
/// error the registry itself may not share.
fn refresh_at(received: SystemTime, expires_at: Option<SystemTime>) -> (SystemTime, bool) {
    let (validity, claimed_expired) = match expires_at.map(|e| e.duration_since(received)) {
        Some(Ok(left)) if !left.is_zero() => (left, false),
        Some(_) => (VALIDITY, true),
        None => (VALIDITY, false),
    };
    (received + validity.mul_f64(REFRESH_SHARE), claimed_expired)
}

/// The password in ECR's token: `base64("AWS:" + PASSWORD)`.
fn decode(encoded: &SecretValue) -> Result<SecretValue, SourceError> {
    let malformed = |what: &str| {
        SourceError::new(
            ErrorKind::Invalid,
            format!(
                "ECR's authorization token is {what}: is AWS_ENDPOINT_URL_ECR an ECR endpoint?"
            ),
        )
    };
    let decoded = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.expose())
            .map_err(|_| malformed("not base64"))?,
    );
    let prefix = format!("{USER}:");
    match decoded.strip_prefix(prefix.as_bytes()) {
        Some(password) if !password.is_empty() => Ok(SecretValue::new(password.to_vec())),
        _ => Err(malformed("not AWS:PASSWORD")),
    }
}

/// ECR and ECR Public, called with the helper's own credentials.
struct Ecr {
    aws: Aws,
}

impl Issuer for Ecr {
    fn issue<'a>(&'a self, registry: &'a Registry) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(async move {
            match registry {
                // No `registryIds`: deprecated, since a token opens every registry the
                // principal may use; passwords are still cached per account and region.
                Registry::Private { region, fips, .. } => {
                    let config = self.aws.config(Some(region)).await;
                    let mut config = aws_sdk_ecr::config::Builder::from(&config);
                    if *fips {
                        config = config.use_fips(true);
                    }
                    let out = aws_sdk_ecr::Client::from_conf(config.build())
                        .get_authorization_token()
                        .send()
                        .await
                        .map_err(|e| self.failed(registry, e))?;
                    let data = out
                        .authorization_data
                        .unwrap_or_default()
                        .into_iter()
                        .next();
                    let data = data.ok_or_else(|| empty(registry))?;
                    token(registry, data.authorization_token, data.expires_at)
                }
                Registry::Public => {
                    let config = self.aws.config(Some("us-east-1")).await;
                    let out = aws_sdk_ecrpublic::Client::new(&config)
                        .get_authorization_token()
                        .send()
                        .await
                        .map_err(|e| self.failed(registry, e))?;
                    let data = out.authorization_data.ok_or_else(|| empty(registry))?;
                    token(registry, data.authorization_token, data.expires_at)
                }
            }
        })
    }
}

impl Ecr {
    /// A failed call, in words that name the fix.
    fn failed<E, R>(&self, registry: &Registry, err: SdkError<E, R>) -> SourceError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let api = match registry {
            Registry::Public => "ecr-public:GetAuthorizationToken",
            Registry::Private { .. } => "ecr:GetAuthorizationToken",
        };
        let identity = self.aws.identity();
        let SdkError::ServiceError(service) = &err else {
            let said = scrub(&DisplayErrorContext(&err).to_string(), "");
            return SourceError::new(
                ErrorKind::Io,
                format!(
                    "{api} for {registry} failed: {said}; check that ECR can be reached (or \
                     AWS_ENDPOINT_URL_ECR) and that the {identity} identity has credentials"
                ),
            );
        };
        let code = service.err().code().unwrap_or("an error");
        let message = scrub(service.err().message().unwrap_or_default(), "");
        let said = format!("{api} for {registry} was refused: {code} ({message:?})");
        if code.starts_with("AccessDenied") {
            return SourceError::new(
                ErrorKind::Denied,
                format!(
                    "{said}: the role of the helper's {identity} identity needs {api} and the \
                     repository actions (pull: ecr:BatchGetImage, ecr:GetDownloadUrlForLayer; \
                     push: also ecr:InitiateLayerUpload, ecr:UploadLayerPart, \
                     ecr:CompleteLayerUpload, ecr:PutImage, ecr:BatchCheckLayerAvailability); \
                     the policy is in docs/registry-credentials.md"
                ),
            );
        }
        SourceError::new(ErrorKind::Io, said)
    }
}

/// An answer with no authorization data.
fn empty(registry: &Registry) -> SourceError {
    SourceError::new(
        ErrorKind::Invalid,
        format!("ECR answered GetAuthorizationToken for {registry} with no authorization data"),
    )
}

/// The token out of ECR's answer.
fn token(
    registry: &Registry,
    encoded: Option<String>,
    expires_at: Option<aws_sdk_ecr::primitives::DateTime>,
) -> Result<Token, SourceError> {
    let encoded = encoded.ok_or_else(|| empty(registry))?;
    Ok(Token {
        encoded: SecretValue::from(encoded),
        expires_at: expires_at.and_then(|t| SystemTime::try_from(t).ok()),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::source::clock::Clock;

    fn encoded(text: &str) -> SecretValue {
        SecretValue::from(base64::engine::general_purpose::STANDARD.encode(text))
    }

    #[test]
    fn the_password_is_what_follows_aws_colon() {
        let p = decode(&encoded("AWS:123456789012-auth-token")).unwrap();
        assert_eq!(p.expose(), b"123456789012-auth-token");
        for bad in ["AWS:", "root:pw", "AWSpw"] {
            assert!(decode(&encoded(bad)).is_err(), "{bad}");
        }
        let e = decode(&SecretValue::from("not base64!".to_string())).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
    }

    #[test]
    fn refresh_is_at_70_percent_and_an_expired_claim_means_twelve_hours() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let (at, expired) = refresh_at(now, Some(now + Duration::from_secs(1000)));
        assert_eq!((at, expired), (now + Duration::from_secs(700), false));
        let in_2015 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_420_070_400);
        let (at, expired) = refresh_at(now, Some(in_2015));
        assert_eq!(at, now + VALIDITY.mul_f64(0.7));
        assert!(expired);
        assert_eq!(refresh_at(now, None), (now + VALIDITY.mul_f64(0.7), false));
    }

    /// Counts calls; each answer is held until `release` lets it go, so calls overlap.
    struct Counting {
        clock: Arc<clock::Manual>,
        calls: AtomicU32,
        release: tokio::sync::Semaphore,
        /// `expiresAt`, as an offset from now (negative: in the past).
        expires_in: Option<i64>,
        fail_first: bool,
    }

    impl Issuer for Arc<Counting> {
        fn issue<'a>(&'a self, _: &'a Registry) -> BoxFuture<'a, Result<Token, SourceError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                self.release.acquire().await.unwrap().forget();
                if self.fail_first && n == 0 {
                    return Err(SourceError::new(ErrorKind::Io, "ECR is down"));
                }
                Ok(Token {
                    encoded: encoded(&format!("AWS:pw{n}")),
                    expires_at: self.expires_in.map(|s| {
                        let d = Duration::from_millis(s.unsigned_abs());
                        if s < 0 {
                            self.clock.now() - d
                        } else {
                            self.clock.now() + d
                        }
                    }),
                })
            })
        }
    }

    fn counting(expires_in: Option<i64>, fail_first: bool) -> Arc<Counting> {
        Arc::new(Counting {
            clock: clock::Manual::shared(),
            calls: AtomicU32::new(0),
            release: tokio::sync::Semaphore::new(0),
            expires_in,
            fail_first,
        })
    }

    /// Passwords from `issuer`, on its clock.
    fn passwords_from(issuer: &Arc<Counting>) -> Passwords {
        Passwords::new(Box::new(Arc::clone(issuer))).with_clock(issuer.clock.clone())
    }

    fn registry(account: &str) -> Registry {
        host::parse(&format!("{account}.dkr.ecr.us-east-1.amazonaws.com")).unwrap()
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_call_and_the_answer_is_cached() {
        let issuer = counting(Some(3_600_000), false);
        let passwords = Arc::new(passwords_from(&issuer));
        let r = registry("123456789012");
        let asks: Vec<_> = (0..8)
            .map(|_| {
                let (p, r) = (Arc::clone(&passwords), r.clone());
                tokio::spawn(async move { p.password(&r).await })
            })
            .collect();
        while issuer.calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        issuer.release.add_permits(1);
        for ask in asks {
            assert_eq!(ask.await.unwrap().unwrap().expose(), b"pw0");
        }
        assert_eq!(passwords.password(&r).await.unwrap().expose(), b"pw0");
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn regions_are_cached_apart_and_stale_passwords_fetched_again() {
        // 1000 s of validity: refreshed at 700 s.
        let issuer = counting(Some(1_000_000), false);
        issuer.release.add_permits(10);
        let passwords = passwords_from(&issuer);
        let a = registry("123456789012");
        let b = host::parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com").unwrap();
        passwords.password(&a).await.unwrap();
        passwords.password(&b).await.unwrap();
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 2);
        issuer.clock.advance(Duration::from_secs(699));
        assert_eq!(passwords.password(&a).await.unwrap().expose(), b"pw0");
        issuer.clock.advance(Duration::from_secs(1));
        assert_eq!(passwords.password(&a).await.unwrap().expose(), b"pw2");
    }

    #[tokio::test]
    async fn accounts_of_one_region_share_one_password() {
        let issuer = counting(Some(3_600_000), false);
        issuer.release.add_permits(10);
        let passwords = passwords_from(&issuer);
        for account in ["123456789012", "210987654321", "111111111111"] {
            assert_eq!(
                passwords
                    .password(&registry(account))
                    .await
                    .unwrap()
                    .expose(),
                b"pw0"
            );
        }
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failure_is_not_cached() {
        let issuer = counting(Some(3_600_000), true);
        issuer.release.add_permits(10);
        let passwords = passwords_from(&issuer);
        let r = registry("123456789012");
        assert!(passwords.password(&r).await.is_err());
        assert_eq!(passwords.password(&r).await.unwrap().expose(), b"pw1");
        assert_eq!(passwords.password(&r).await.unwrap().expose(), b"pw1");
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_token_claiming_to_have_expired_is_served_and_cached() {
        // As moto answers: an `expiresAt` years in the past.
        let issuer = counting(Some(-300_000_000_000), false);
        issuer.release.add_permits(10);
        let passwords = passwords_from(&issuer);
        let r = registry("123456789012");
        assert_eq!(passwords.password(&r).await.unwrap().expose(), b"pw0");
        assert_eq!(passwords.password(&r).await.unwrap().expose(), b"pw0");
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 1);
    }
}
