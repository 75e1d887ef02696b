//! Temporary AWS credentials, whatever issues them (an STS exchange, the EKS Pod Identity or
//! container agent, IMDS), served as a shared-credentials file and as single values.
//!
//! Credentials are cached and refreshed at about 70% of their lifetime; one call to the issuer
//! is in flight at a time however many builds ask; while the issuer is down, cached credentials
//! are served as long as they stay valid for the expiry margin.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::{self, ProvideCredentials};
use futures_util::future::BoxFuture;

use super::clock;
use super::flight::Flight;
use super::{jwt, Source, SourceError};
use crate::secret::SecretValue;

/// Id of the shared-credentials file (`[default]` profile), for `AWS_SHARED_CREDENTIALS_FILE`.
pub const CREDENTIALS_ID: &str = "aws-credentials";
/// Id of the access key id alone, for `env=` mounts.
pub const ACCESS_KEY_ID_ID: &str = "aws-access-key-id";
/// Id of the secret access key alone.
pub const SECRET_ACCESS_KEY_ID: &str = "aws-secret-access-key";
/// Id of the session token alone.
pub const SESSION_TOKEN_ID: &str = "aws-session-token";
/// Id of the expiry, RFC 3339, for tools that want to know when to stop.
pub const EXPIRATION_ID: &str = "aws-credentials-expiration";

/// After a failed refresh with usable credentials cached, how long to serve them before the
/// next attempt, so a down issuer is not hammered by every request.
const RETRY_PAUSE: Duration = Duration::from_secs(15);

/// Temporary AWS credentials, from STS, the container agent or IMDS. The three values live in
/// [`SecretValue`]s only.
#[derive(Debug)]
pub struct Issued {
    /// `AccessKeyId` (`ASIA...`).
    pub access_key_id: SecretValue,
    /// `SecretAccessKey`.
    pub secret_access_key: SecretValue,
    /// `SessionToken`.
    pub session_token: SecretValue,
    /// When the issuer says they stop working.
    pub expiration: SystemTime,
    /// When they were received, the start of their lifetime for refresh scheduling.
    pub received: SystemTime,
    /// Who they act as, when the issuer says (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`),
    /// for logs and `doctor`; empty when it does not.
    pub principal: String,
}

impl Issued {
    /// Lifetime left at `now` (zero once expired).
    pub fn valid_for(&self, now: SystemTime) -> Duration {
        self.expiration.duration_since(now).unwrap_or_default()
    }

    /// The expiry as RFC 3339, as `aws-credentials-expiration` serves it.
    pub fn expiration_rfc3339(&self) -> String {
        humantime::format_rfc3339_seconds(self.expiration).to_string()
    }
}

/// Where fresh credentials come from: one call to the issuer, with its own retries and errors
/// that name the fix. The cache in [`Credentials`] decides when to call.
pub trait Mint: Send + Sync + fmt::Debug {
    /// The issuer's name in logs, audit records and metrics (`sts`, `pod-identity`, ...).
    fn name(&self) -> &'static str;

    /// Fresh credentials from the issuer.
    fn mint(&self) -> BoxFuture<'_, Result<Issued, SourceError>>;
}

/// When to refresh credentials received at `received` and expiring at `expiration`: at 65 to 75%
/// of their lifetime, and no later than `margin` before expiry.
fn refresh_at(received: SystemTime, expiration: SystemTime, margin: Duration) -> SystemTime {
    let life = expiration.duration_since(received).unwrap_or_default();
    let planned = received + life.mul_f64(rand::random_range(0.65..0.75));
    let latest = expiration.checked_sub(margin).unwrap_or(received);
    planned.min(latest).max(received)
}

/// Cached credentials and when to refresh them.
#[derive(Debug, Clone)]
struct Cached {
    issued: Arc<Issued>,
    refresh_at: SystemTime,
}

/// The result of the last call, shared with everyone who waited for it.
type Outcome = Result<Arc<Issued>, SourceError>;

#[derive(Debug)]
struct Inner {
    mint: Box<dyn Mint>,
    margin: Duration,
    clock: clock::Shared,
    cached: Mutex<Option<Cached>>,
    flight: Flight<Outcome>,
}

/// Serves the credentials one [`Mint`] issues (the cache is per mint), plus the region when set.
#[derive(Debug, Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
    region: Option<(String, String)>,
}

impl Credentials {
    /// A source serving what `mint` issues; `region` is `(id, value)` when the region is served.
    /// Credentials within `margin` of expiry are not served.
    pub fn new(
        mint: impl Mint + 'static,
        margin: Duration,
        region: Option<(String, String)>,
    ) -> Self {
        Self::with_clock(mint, margin, region, clock::system())
    }

    /// [`Credentials::new`], deciding freshness and expiry by `clock` (the credentials'
    /// `received` and `expiration` come from the mint).
    pub fn with_clock(
        mint: impl Mint + 'static,
        margin: Duration,
        region: Option<(String, String)>,
        clock: clock::Shared,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                mint: Box::new(mint),
                margin,
                clock,
                cached: Mutex::new(None),
                flight: Flight::default(),
            }),
            region,
        }
    }

    /// The same credentials and cache (one issuer call serves both), serving `region` instead:
    /// builds and the helper's own calls share the credentials of one identity.
    pub fn with_region(&self, region: Option<(String, String)>) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            region,
        }
    }

    /// Current credentials: cached if fresh, else from the issuer (one call for all concurrent
    /// callers).
    pub async fn current(&self) -> Result<Arc<Issued>, SourceError> {
        let inner = &self.inner;
        // Before the cache is read: a call that finishes after this answers the question.
        let asked = Instant::now();
        let now = inner.clock.now();
        if let Some(c) = inner.cached() {
            if now < c.refresh_at {
                return Ok(c.issued);
            }
            if c.issued.valid_for(now) >= inner.margin {
                // Due for refresh but still good: serve it and refresh in the background,
                // unless a refresh is already running.
                let refreshing = Arc::clone(inner);
                inner
                    .flight
                    .spawn_if_idle(async move { refreshing.refresh().await });
                return Ok(c.issued);
            }
        }
        inner.flight.join_or_call(asked, || inner.refresh()).await
    }
}

impl Inner {
    fn cached(&self) -> Option<Cached> {
        self.cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn store(&self, cached: Cached) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(cached);
    }

    /// One call to the issuer; on failure, the cached credentials while they are valid for the
    /// margin.
    async fn refresh(&self) -> Outcome {
        let issuer = self.mint.name();
        let error = match self.mint.mint().await {
            Ok(issued) => {
                let issued = Arc::new(issued);
                let now = self.clock.now();
                tracing::info!(
                    issuer,
                    principal = %issued.principal,
                    expires = %issued.expiration_rfc3339(),
                    "credentials issued"
                );
                if issued.valid_for(now) < self.margin {
                    tracing::warn!(
                        issuer,
                        expires = %issued.expiration_rfc3339(),
                        margin = %jwt::human(self.margin),
                        "the issuer gave credentials that expire within the margin; they are \
                         served, and refreshed on every request"
                    );
                }
                self.store(Cached {
                    refresh_at: refresh_at(issued.received, issued.expiration, self.margin),
                    issued: Arc::clone(&issued),
                });
                return Ok(issued);
            }
            Err(e) => e,
        };
        let now = self.clock.now();
        match self.cached() {
            Some(c) if c.issued.valid_for(now) >= self.margin => {
                tracing::warn!(
                    issuer,
                    error = %error,
                    expires = %c.issued.expiration_rfc3339(),
                    "refreshing the credentials failed; serving the cached credentials meanwhile"
                );
                let latest = c.issued.expiration - self.margin;
                self.store(Cached {
                    refresh_at: (now + RETRY_PAUSE).min(latest),
                    issued: Arc::clone(&c.issued),
                });
                Ok(c.issued)
            }
            Some(c) => Err(SourceError::new(
                error.kind,
                format!(
                    "{error}. The cached credentials expire at {}, within the {} margin, so they \
                     are no longer served",
                    c.issued.expiration_rfc3339(),
                    jwt::human(self.margin)
                ),
            )),
            None => Err(error),
        }
    }
}

/// The `[default]` profile of a shared-credentials file, built without intermediate copies.
fn credentials_file(issued: &Issued) -> SecretValue {
    let parts: [&[u8]; 7] = [
        b"[default]\naws_access_key_id = ",
        issued.access_key_id.expose(),
        b"\naws_secret_access_key = ",
        issued.secret_access_key.expose(),
        b"\naws_session_token = ",
        issued.session_token.expose(),
        b"\n",
    ];
    let mut file = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        file.extend_from_slice(part);
    }
    SecretValue::new(file)
}

/// The SDK's view of the cached credentials, so an STS client can sign AssumeRole with them.
impl ProvideCredentials for Credentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            let issued = self
                .current()
                .await
                .map_err(provider::error::CredentialsError::provider_error)?;
            let text = |v: &SecretValue| String::from_utf8_lossy(v.expose()).into_owned();
            Ok(aws_credential_types::Credentials::new(
                text(&issued.access_key_id),
                text(&issued.secret_access_key),
                Some(text(&issued.session_token)).filter(|t| !t.is_empty()),
                Some(issued.expiration),
                "irsa-secrets",
            ))
        })
    }
}

impl Source for Credentials {
    fn name(&self) -> &'static str {
        self.inner.mint.name()
    }

    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = [
            CREDENTIALS_ID,
            ACCESS_KEY_ID_ID,
            SECRET_ACCESS_KEY_ID,
            SESSION_TOKEN_ID,
            EXPIRATION_ID,
        ]
        .map(String::from)
        .into();
        ids.extend(self.region.as_ref().map(|(id, _)| id.clone()));
        ids
    }

    fn fetch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SecretValue>, SourceError>> {
        Box::pin(async move {
            if let Some((region_id, region)) = &self.region {
                if id == region_id {
                    return Ok(Some(SecretValue::from(region.clone())));
                }
            }
            let render: fn(&Issued) -> SecretValue = match id {
                CREDENTIALS_ID => credentials_file,
                ACCESS_KEY_ID_ID => |i| i.access_key_id.clone(),
                SECRET_ACCESS_KEY_ID => |i| i.secret_access_key.clone(),
                SESSION_TOKEN_ID => |i| i.session_token.clone(),
                EXPIRATION_ID => |i| SecretValue::from(i.expiration_rfc3339()),
                _ => return Ok(None),
            };
            Ok(Some(render(&*self.current().await?)))
        })
    }
}
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::source::clock::Clock;
    use crate::source::testing::{capture_log, settle};
    use crate::source::ErrorKind;

    /// Issues `ASIAKEY<n>` credentials that live `life` from its clock's now, or fails the way
    /// an STS exchange does after its retries while `down`.
    #[derive(Debug)]
    struct Scripted {
        clock: Arc<clock::Manual>,
        life: Duration,
        calls: AtomicUsize,
        down: AtomicBool,
    }

    impl Mint for Arc<Scripted> {
        fn name(&self) -> &'static str {
            "sts"
        }

        fn mint(&self) -> BoxFuture<'_, Result<Issued, SourceError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                if self.down.load(Ordering::SeqCst) {
                    return Err(SourceError::new(
                        ErrorKind::Io,
                        "STS failed 3 times: ServiceUnavailable",
                    ));
                }
                let received = self.clock.now();
                Ok(Issued {
                    access_key_id: SecretValue::from(format!("ASIAKEY{n}")),
                    secret_access_key: SecretValue::from(format!("secret{n}")),
                    session_token: SecretValue::from(format!("token{n}")),
                    expiration: received + self.life,
                    received,
                    principal: String::new(),
                })
            })
        }
    }

    #[tokio::test]
    async fn credentials_refresh_ahead_of_expiry_and_outlive_an_outage_only_within_the_margin() {
        let (log, _guard) = capture_log();
        let clock = clock::Manual::shared();
        // 10 s credentials with a 1 s margin: refresh due at 6.5..7.5 s, unusable from 9 s.
        let mint = Arc::new(Scripted {
            clock: Arc::clone(&clock),
            life: Duration::from_secs(10),
            calls: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        });
        let calls = || mint.calls.load(Ordering::SeqCst);
        let creds = Credentials::with_clock(
            Arc::clone(&mint),
            Duration::from_secs(1),
            None,
            clock.clone(),
        );
        let key = |c: &Credentials| {
            let c = c.clone();
            async move {
                let issued = c.current().await.unwrap();
                String::from_utf8(issued.access_key_id.expose().to_vec()).unwrap()
            }
        };
        let first = key(&creds).await;
        clock.advance(Duration::from_secs(2));
        assert_eq!(key(&creds).await, first, "fresh: cached");
        assert_eq!(calls(), 1);

        // Past the refresh point: still served at once, refreshed in the background.
        clock.advance(Duration::from_millis(5700)); // 7.7 s
        assert_eq!(key(&creds).await, first);
        settle("the background refresh", || calls() == 2).await;
        let second = key(&creds).await;
        assert_ne!(second, first, "refreshed credentials are served");
        assert_eq!(calls(), 2, "one background refresh");

        // STS goes down: the cached credentials are served while valid for the margin...
        mint.down.store(true, Ordering::SeqCst);
        clock.advance(Duration::from_millis(7700)); // 7.7 s after the refresh
        assert_eq!(key(&creds).await, second);
        settle("the failed refresh is logged", || {
            log.contains("serving the cached credentials meanwhile")
        })
        .await;
        // ...and no longer once within it: a clear error.
        clock.advance(Duration::from_millis(1600)); // 9.3 s after it
        let err = creds.current().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Io, "{err}");
        assert!(
            err.message
                .contains("within the 1s margin, so they are no longer served")
                && err.message.contains("ServiceUnavailable"),
            "{err}"
        );
    }

    #[test]
    fn refresh_is_planned_at_about_70_percent_and_before_the_margin() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        for _ in 0..100 {
            let at = refresh_at(t0, t0 + hour, Duration::from_secs(300));
            let offset = at.duration_since(t0).unwrap().as_secs();
            assert!((2340..=2700).contains(&offset), "{offset}");
        }
        // A margin larger than 30% of the lifetime wins.
        let at = refresh_at(t0, t0 + hour, Duration::from_secs(2000));
        assert_eq!(at, t0 + Duration::from_secs(1600));
        // Credentials shorter than the margin are due at once.
        assert_eq!(refresh_at(t0, t0 + Duration::from_secs(60), hour), t0);
        let spread: std::collections::BTreeSet<u64> = (0..50)
            .map(|_| {
                refresh_at(t0, t0 + hour, Duration::ZERO)
                    .duration_since(t0)
                    .unwrap()
                    .as_secs()
            })
            .collect();
        assert!(spread.len() > 10, "jitter spreads refreshes: {spread:?}");
    }

    #[test]
    fn the_credentials_file_is_an_ini_default_profile() {
        let issued = Issued {
            access_key_id: SecretValue::from("ASIAEXAMPLE".to_string()),
            secret_access_key: SecretValue::from("secret/key+1".to_string()),
            session_token: SecretValue::from("tok==".to_string()),
            expiration: SystemTime::UNIX_EPOCH,
            received: SystemTime::UNIX_EPOCH,
            principal: String::new(),
        };
        assert_eq!(
            credentials_file(&issued).expose(),
            b"[default]\naws_access_key_id = ASIAEXAMPLE\naws_secret_access_key = secret/key+1\n\
              aws_session_token = tok==\n"
        );
        assert_eq!(issued.expiration_rfc3339(), "1970-01-01T00:00:00Z");
        assert!(!format!("{issued:?}").contains("secret/key"));
    }
}
