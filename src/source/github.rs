//! The GitHub Actions OIDC identity: a web identity token requested from GitHub's token endpoint
//! (`ACTIONS_ID_TOKEN_REQUEST_URL`, authorised by `ACTIONS_ID_TOKEN_REQUEST_TOKEN`) for a job
//! with `permissions: id-token: write`, so a GitHub-hosted runner can assume a role the way an
//! IRSA runner does, with no stored AWS keys.
//!
//! Tokens live minutes: one is cached until it is within the expiry margin of its `exp`, then
//! requested again; one request is in flight at a time however many builds ask.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::flight::Flight;
use super::remote::{error_chain, retrying, scrub, Failure};
use super::{ErrorKind, SourceError};
use crate::secret::SecretValue;
use crate::source::jwt::{self, Expectations, TokenError};

/// Attempts per token request; 5xx answers and connection errors are retried.
pub const ATTEMPTS: u32 = 3;
/// Time allowed for one attempt, connection and body included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read: GitHub's is a JSON object with one JWT of a few KiB.
pub const MAX_ANSWER: usize = 64 * 1024;
/// First backoff; doubled per retry, with jitter.
const BACKOFF: Duration = Duration::from_millis(250);

/// Everything but RFC 3986's unreserved characters is escaped in the audience.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What to do when GitHub refuses the request token.
const PERMISSION_HINT: &str = "the job needs `permissions: id-token: write` (a workflow or job \
     that sets `permissions` grants only what it lists), and the helper must run in that job: \
     ACTIONS_ID_TOKEN_REQUEST_TOKEN is valid only for the job it was issued to and expires with it";

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A token GitHub issued, with its expiry for the cache.
#[derive(Debug, Clone)]
struct Issued {
    value: SecretValue,
    exp: u64,
}

/// What the last request left behind, for callers and for [`GitHubOidc::expiry`].
#[derive(Debug, Default)]
struct State {
    token: Option<Issued>,
    /// The last request's failure, cleared by the next success.
    failure: Option<SourceError>,
}

#[derive(Debug)]
struct Inner {
    client: HttpClient,
    /// The request URL with the audience, never logged whole (see `endpoint`).
    uri: http::Uri,
    /// `scheme://host/path` of the endpoint, for messages.
    endpoint: String,
    /// `Bearer <request token>`, the header GitHub authorises the request with.
    authorization: SecretValue,
    want: Expectations,
    state: Mutex<State>,
    /// One request at a time; callers who queued behind it share its outcome.
    flight: Flight<Result<SecretValue, SourceError>>,
}

/// Requests, checks and caches GitHub Actions OIDC tokens for one audience. Cheap to clone:
/// clones share the cache.
#[derive(Debug, Clone)]
pub struct GitHubOidc {
    inner: Arc<Inner>,
}

impl GitHubOidc {
    /// A client for the endpoint at `request_url` (`ACTIONS_ID_TOKEN_REQUEST_URL`), authorised
    /// by `request_token` (`ACTIONS_ID_TOKEN_REQUEST_TOKEN`), asking for tokens that meet `want`
    /// (its audience is sent as the `audience` parameter). Refuses, now rather than mid-build, a
    /// URL that is not https (plain http only to a loopback address, for tests), an empty or
    /// unsendable request token, and a machine with no CA certificates.
    pub fn new(
        request_url: &str,
        request_token: SecretValue,
        want: Expectations,
    ) -> Result<Self, SourceError> {
        let (uri, endpoint) = request_uri(request_url, &want.audience)?;
        let authorization = bearer(&request_token)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| {
                SourceError::new(
                    ErrorKind::Io,
                    format!(
                        "cannot load the system's CA certificates to reach GitHub's token \
                         endpoint: {e}; install the ca-certificates package"
                    ),
                )
            })?
            .https_or_http()
            .enable_http1();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(ATTEMPT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).build(tls.wrap_connector(http));
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                uri,
                endpoint,
                authorization,
                want,
                state: Mutex::default(),
                flight: Flight::default(),
            }),
        })
    }

    /// The current token, checked: the cached one while it has more than the expiry margin
    /// left, else a new one from GitHub (one request for all concurrent callers). A token within
    /// the margin is not served once a request for its successor failed: the error is.
    pub async fn checked_token(&self) -> Result<(SecretValue, jwt::Checked), SourceError> {
        let inner = &self.inner;
        if let Some(issued) = inner.fresh() {
            return inner.check(issued.value);
        }
        let asked = Instant::now();
        let outcome = inner.flight.join_or_call(asked, || inner.refresh()).await;
        inner.check(outcome?)
    }

    /// Time left on the cached token, without a request: `None` before the first request and
    /// once the cached token has run out (a new one is requested on demand, so an idle helper
    /// is not reported as broken); the last request's error while it is the latest news.
    pub fn expiry(&self) -> Option<Result<Duration, SourceError>> {
        let state = self.inner.state();
        if let Some(failure) = &state.failure {
            return Some(Err(failure.clone()));
        }
        let left = state.token.as_ref()?.exp.checked_sub(now_secs())?;
        (left > 0).then(|| Ok(Duration::from_secs(left)))
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached token while it has more than the margin left.
    fn fresh(&self) -> Option<Issued> {
        let margin = self.want.expiry_margin.as_secs();
        let state = self.state();
        state
            .token
            .clone()
            .filter(|t| t.exp > now_secs().saturating_add(margin))
    }

    /// Checks `value` now: a shared outcome may have aged since it was received.
    fn check(&self, value: SecretValue) -> Result<(SecretValue, jwt::Checked), SourceError> {
        let checked = jwt::check(value.expose(), &self.want, SystemTime::now())
            .map_err(|e| self.token_error(&e))?;
        Ok((value, checked))
    }

    /// One request (with retries), recorded in the state.
    async fn refresh(&self) -> Result<SecretValue, SourceError> {
        let outcome = self.request().await;
        let mut state = self.state();
        match &outcome {
            Ok(issued) => {
                state.token = Some(issued.clone());
                state.failure = None;
            }
            Err(e) => state.failure = Some(e.clone()),
        }
        outcome.map(|issued| issued.value)
    }

    async fn request(&self) -> Result<Issued, SourceError> {
        match retrying("GitHub OIDC token request", ATTEMPTS, BACKOFF, || {
            self.attempt()
        })
        .await
        {
            Ok(issued) => Ok(issued),
            Err(Failure::Fatal(e)) => Err(e),
            Err(Failure::Transient(why)) => Err(SourceError::new(
                ErrorKind::Io,
                format!(
                    "GitHub's OIDC token endpoint {} failed {ATTEMPTS} times, last: {why}; check \
                     that the runner reaches it (proxy, DNS, egress rules) and \
                     https://www.githubstatus.com",
                    self.endpoint
                ),
            )),
        }
    }

    async fn attempt(&self) -> Result<Issued, Failure> {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.exchange()).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Transient(format!(
                "no answer within {}",
                jwt::human(ATTEMPT_TIMEOUT)
            ))),
        }
    }

    /// One GET, its answer read (bounded) and judged.
    async fn exchange(&self) -> Result<Issued, Failure> {
        let mut authorization = http::HeaderValue::from_bytes(self.authorization.expose())
            .map_err(|_| self.fatal(ErrorKind::Invalid, "cannot send the request token".into()))?;
        authorization.set_sensitive(true);
        let request = http::Request::get(self.uri.clone())
            .header(http::header::AUTHORIZATION, authorization)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("irsa-secrets/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| {
                self.fatal(ErrorKind::Invalid, format!("cannot build the request: {e}"))
            })?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| Failure::Transient(format!("cannot reach it: {}", error_chain(&e))))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    self.fatal(
                        ErrorKind::Invalid,
                        format!(
                            "answered more than {} KiB; check that ACTIONS_ID_TOKEN_REQUEST_URL \
                             is GitHub's token endpoint",
                            MAX_ANSWER / 1024
                        ),
                    )
                } else {
                    Failure::Transient(format!("the answer broke off: {}", error_chain(&*e)))
                }
            })?;
        let mut body = Vec::from(body.to_bytes());
        let judged = self.judge(status, &body);
        zeroize::Zeroize::zeroize(&mut body);
        judged
    }

    /// Turns the answer into a checked token or a failure that says what to fix.
    fn judge(&self, status: http::StatusCode, body: &[u8]) -> Result<Issued, Failure> {
        let said = || {
            let text = String::from_utf8_lossy(body);
            format!(
                "HTTP {}: {:?}",
                status.as_u16(),
                scrub(&text, self.request_token())
            )
        };
        match status.as_u16() {
            200..=299 => {}
            401 | 403 => {
                return Err(self.fatal(
                    ErrorKind::Denied,
                    format!("refused the request token ({}): {PERMISSION_HINT}", said()),
                ))
            }
            404 => {
                return Err(self.fatal(
                    ErrorKind::Missing,
                    format!(
                        "answered {}: check that ACTIONS_ID_TOKEN_REQUEST_URL is the one GitHub \
                         set for this job, passed on unchanged",
                        said()
                    ),
                ))
            }
            429 | 500..=599 => return Err(Failure::Transient(said())),
            _ => {
                return Err(self.fatal(
                    ErrorKind::Io,
                    format!(
                        "answered {}; check ACTIONS_ID_TOKEN_REQUEST_URL and any proxy between",
                        said()
                    ),
                ))
            }
        }
        let answer: Answer = serde_json::from_slice(body).map_err(|e| {
            // serde's own message may quote the body, and the body may hold the token.
            let what = match e.classify() {
                serde_json::error::Category::Data => {
                    "JSON that is not an object with a string `value`"
                }
                _ => "something that is not JSON",
            };
            self.fatal(
                ErrorKind::Invalid,
                format!(
                    "answered {what} (line {}, column {}); GitHub answers \
                     {{\"count\": N, \"value\": \"<JWT>\"}}: check that ACTIONS_ID_TOKEN_REQUEST_URL \
                     is GitHub's token endpoint",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let value = answer.value.map(SecretValue::from).ok_or_else(|| {
            self.fatal(
                ErrorKind::Invalid,
                "answered JSON without a `value`; check that ACTIONS_ID_TOKEN_REQUEST_URL is \
                 GitHub's token endpoint"
                    .into(),
            )
        })?;
        let checked = jwt::check(value.expose(), &self.want, SystemTime::now())
            .map_err(|e| Failure::Fatal(self.token_error(&e)))?;
        if checked.expiring_soon {
            tracing::warn!(
                expires = %jwt::rfc3339(checked.claims.exp),
                remaining = %jwt::human(checked.remaining),
                margin = %jwt::human(self.want.expiry_margin),
                "GitHub issued an OIDC token with less than the expiry margin left; it is served, \
                 and a new one is requested for every use: lower --expiry-margin"
            );
        }
        Ok(Issued {
            exp: checked.claims.exp,
            value,
        })
    }

    /// The request token, for scrubbing echoes of it.
    fn request_token(&self) -> &str {
        std::str::from_utf8(self.authorization.expose())
            .unwrap_or_default()
            .trim_start_matches("Bearer ")
    }

    fn fatal(&self, kind: ErrorKind, what: String) -> Failure {
        Failure::Fatal(SourceError::new(
            kind,
            format!("GitHub's OIDC token endpoint {} {what}", self.endpoint),
        ))
    }

    fn token_error(&self, err: &TokenError) -> SourceError {
        let hint = match err {
            TokenError::Malformed(_) => {
                "check that ACTIONS_ID_TOKEN_REQUEST_URL is GitHub's token endpoint"
            }
            TokenError::Expired { .. } | TokenError::NotYetValid { .. } => {
                "check this machine's clock (`date -u`)"
            }
            TokenError::WrongAudience { .. } => {
                "GitHub sets `aud` from the `audience` parameter: check that nothing between \
                 (a proxy) drops the query string, and that --audience is what the role's trust \
                 policy expects"
            }
        };
        SourceError::new(
            ErrorKind::Invalid,
            format!(
                "the token from GitHub's OIDC token endpoint {} {err}; {hint}",
                self.endpoint
            ),
        )
    }
}

/// GitHub's answer: `{"count": N, "value": "<JWT>"}`; only `value` matters. No `Debug`: it
/// holds the token until it moves into a [`SecretValue`].
#[derive(serde::Deserialize)]
struct Answer {
    value: Option<String>,
}

/// The request URL with `audience` appended, and the endpoint without its query for messages.
fn request_uri(request_url: &str, audience: &str) -> Result<(http::Uri, String), SourceError> {
    let invalid = |why: &str| {
        SourceError::new(
            ErrorKind::Invalid,
            format!(
                "ACTIONS_ID_TOKEN_REQUEST_URL {why}; GitHub sets it in jobs with \
                 `permissions: id-token: write`: pass it on unchanged"
            ),
        )
    };
    let separator = if request_url.contains('?') { '&' } else { '?' };
    let audience = utf8_percent_encode(audience, QUERY_VALUE);
    let uri: http::Uri = format!("{request_url}{separator}audience={audience}")
        .parse()
        .map_err(|_| invalid("is not a URL"))?;
    let host = uri.host().ok_or_else(|| invalid("has no host"))?;
    let endpoint = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or_default(),
        uri.authority().map(|a| a.as_str()).unwrap_or(host),
        uri.path()
    );
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback(host) => {}
        Some("http") => {
            return Err(invalid(&format!(
                "{endpoint} is plain http, which would send the request token in the clear; \
                 GitHub's is https"
            )))
        }
        _ => return Err(invalid(&format!("{endpoint} is not an https URL"))),
    }
    Ok((uri, endpoint))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `Bearer <token>`, refused when the token is empty or holds bytes a header cannot carry.
fn bearer(request_token: &SecretValue) -> Result<SecretValue, SourceError> {
    let token = request_token.expose().trim_ascii();
    if token.is_empty() {
        return Err(SourceError::new(
            ErrorKind::Missing,
            format!("ACTIONS_ID_TOKEN_REQUEST_TOKEN is empty; {PERMISSION_HINT}"),
        ));
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err(SourceError::new(
            ErrorKind::Invalid,
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN holds characters other than printable ASCII; pass \
             on the value GitHub set, unchanged",
        ));
    }
    let mut header = b"Bearer ".to_vec();
    header.extend_from_slice(token);
    Ok(SecretValue::new(header))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::{watch, Semaphore};

    use super::*;
    use crate::source::irsa::Irsa;
    use crate::source::jwt::{Audience, Claims};
    use crate::source::mock::MOCK_SIGNATURE;
    use crate::source::{IdentityIds, Source};

    const REQUEST_TOKEN: &str = "ghs-request-token-0123456789abcdef";
    const AUDIENCE: &str = "sts.amazonaws.com";
    const MARGIN: Duration = Duration::from_secs(300);
    const ROLE: &str = "arn:aws:iam::111122223333:role/fork-pull-requests";

    /// A token as GitHub would issue it, unsigned like the mock's, expiring `life` seconds from
    /// now (negative: in the past).
    fn token(aud: &str, life: i64) -> String {
        let now = now_secs();
        let claims = Claims {
            iss: Some("https://token.actions.githubusercontent.com".into()),
            sub: Some("repo:example/app:pull_request".into()),
            aud: Audience::One(aud.into()),
            exp: now.saturating_add_signed(life),
            nbf: Some(now - 5),
            iat: Some(now - 5),
            other: Default::default(),
        };
        jwt::encode_unverifiable(&claims, "github-test", MOCK_SIGNATURE)
    }

    fn answer(token: &str) -> (u16, String) {
        (200, format!(r#"{{"count":1,"value":"{token}"}}"#))
    }

    /// GitHub's token endpoint, faked on 127.0.0.1 by hand on tokio's sockets (not hyper's
    /// server): one request per connection, answered with the next scripted reply (the last
    /// repeats) once the gate lets it through.
    struct Fake {
        url: String,
        heads: watch::Receiver<Vec<String>>,
        gate: Arc<Semaphore>,
    }

    impl Fake {
        async fn start(replies: Vec<(u16, String)>) -> Self {
            Self::gated(replies, Semaphore::MAX_PERMITS).await
        }

        async fn gated(replies: Vec<(u16, String)>, permits: usize) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!(
                "http://{}/idtoken?api-version=2.0",
                listener.local_addr().unwrap()
            );
            let (record, heads) = watch::channel(Vec::new());
            let gate = Arc::new(Semaphore::new(permits));
            let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
            let server_gate = Arc::clone(&gate);
            tokio::spawn(async move {
                let record = Arc::new(record);
                loop {
                    let (mut conn, _) = listener.accept().await.unwrap();
                    let (record, gate, replies) = (
                        Arc::clone(&record),
                        Arc::clone(&server_gate),
                        Arc::clone(&replies),
                    );
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.ends_with(b"\r\n\r\n") {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        record.send_modify(|h| h.push(String::from_utf8_lossy(&head).into()));
                        gate.acquire().await.unwrap().forget();
                        let (status, body) = {
                            let mut replies = replies.lock().unwrap();
                            let next = replies.front().cloned().unwrap();
                            if replies.len() > 1 {
                                replies.pop_front();
                            }
                            next
                        };
                        let response = format!(
                            "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = conn.write_all(response.as_bytes()).await;
                        let _ = conn.shutdown().await;
                    });
                }
            });
            Self { url, heads, gate }
        }

        fn requests(&self) -> usize {
            self.heads.borrow().len()
        }

        /// Waits, without a fixed sleep, until `n` requests have arrived.
        async fn wait_for_requests(&self, n: usize) {
            let mut heads = self.heads.clone();
            tokio::time::timeout(Duration::from_secs(10), heads.wait_for(|h| h.len() >= n))
                .await
                .expect("the requests arrive")
                .unwrap();
        }
    }

    fn want() -> Expectations {
        Expectations {
            audience: AUDIENCE.into(),
            expiry_margin: MARGIN,
        }
    }

    fn client(url: &str) -> GitHubOidc {
        GitHubOidc::new(url, SecretValue::from(REQUEST_TOKEN.to_string()), want()).unwrap()
    }

    /// Neither the request token nor any token the fake handed out shows in `err`.
    fn assert_clean(err: &SourceError, tokens: &[&str]) {
        let shown = format!("{err} {err:?}");
        for secret in tokens.iter().chain([&REQUEST_TOKEN]) {
            assert!(!shown.contains(secret), "{shown}");
            // The signature is the part of a JWT nothing else repeats.
            if let Some(signature) = secret.rsplit('.').next().filter(|s| s.len() >= 8) {
                assert!(!shown.contains(signature), "{shown}");
            }
        }
    }

    #[tokio::test]
    async fn a_token_is_requested_with_the_bearer_and_the_audience() {
        let issued = token(AUDIENCE, 3600);
        let fake = Fake::start(vec![answer(&issued)]).await;
        let github = client(&fake.url);
        let (value, checked) = github.checked_token().await.unwrap();
        assert_eq!(value.expose(), issued.as_bytes());
        assert_eq!(
            checked.claims.sub.as_deref(),
            Some("repo:example/app:pull_request")
        );
        let head = fake.heads.borrow()[0].to_ascii_lowercase();
        assert!(
            head.starts_with(
                "get /idtoken?api-version=2.0&audience=sts.amazonaws.com http/1.1\r\n"
            ),
            "{head}"
        );
        let bearer = format!(
            "authorization: bearer {}\r\n",
            REQUEST_TOKEN.to_ascii_lowercase()
        );
        assert!(head.contains(&bearer), "{head}");
        assert!(head.contains("accept: application/json\r\n"), "{head}");
        assert!(!format!("{github:?}").contains(REQUEST_TOKEN));
    }

    #[tokio::test]
    async fn the_token_is_cached_until_it_nears_its_expiry() {
        let lasting = token(AUDIENCE, 3600);
        let fake = Fake::start(vec![answer(&lasting)]).await;
        let github = client(&fake.url);
        assert_eq!(
            github.expiry().map(|e| e.is_ok()),
            None,
            "nothing asked yet"
        );
        for _ in 0..2 {
            assert_eq!(
                github.checked_token().await.unwrap().0.expose(),
                lasting.as_bytes()
            );
        }
        assert_eq!(fake.requests(), 1);
        let left = github.expiry().unwrap().unwrap();
        assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600));

        // A token within the margin of its expiry is served, and a new one asked for next time.
        let (short, next) = (token(AUDIENCE, 60), token(AUDIENCE, 3600));
        let fake = Fake::start(vec![answer(&short), answer(&next)]).await;
        let github = client(&fake.url);
        let (value, checked) = github.checked_token().await.unwrap();
        assert_eq!(value.expose(), short.as_bytes());
        assert!(checked.expiring_soon);
        assert_eq!(
            github.checked_token().await.unwrap().0.expose(),
            next.as_bytes()
        );
        assert_eq!(fake.requests(), 2);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_request() {
        let issued = token(AUDIENCE, 3600);
        // The fake holds its answer until every caller has missed the cache.
        let fake = Fake::gated(vec![answer(&issued)], 0).await;
        let github = client(&fake.url);
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (all_started, mut wait_started) = watch::channel(());
        let all_started = Arc::new(all_started);
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let (github, started, all_started) = (
                    github.clone(),
                    Arc::clone(&started),
                    Arc::clone(&all_started),
                );
                tokio::spawn(async move {
                    let call = github.checked_token();
                    let mut call = std::pin::pin!(call);
                    // The first poll checks the cache before anything can fill it.
                    let first = futures_util::poll!(call.as_mut());
                    assert!(first.is_pending());
                    if started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 19 {
                        all_started.send_replace(());
                    }
                    call.await.map(|(value, _)| value)
                })
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(10), wait_started.changed())
            .await
            .unwrap()
            .unwrap();
        fake.wait_for_requests(1).await;
        fake.gate.add_permits(Semaphore::MAX_PERMITS / 2);
        for caller in callers {
            assert_eq!(caller.await.unwrap().unwrap().expose(), issued.as_bytes());
        }
        assert_eq!(fake.requests(), 1);
    }

    #[tokio::test]
    async fn a_refused_request_token_names_the_permission_and_is_not_retried() {
        let echo = format!(r#"{{"message":"Bearer {REQUEST_TOKEN} is not valid"}}"#);
        let fake = Fake::start(vec![(401, echo)]).await;
        let github = client(&fake.url);
        let err = github.checked_token().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Denied);
        assert!(
            err.message.contains("`permissions: id-token: write`"),
            "{err}"
        );
        assert!(err.message.contains("HTTP 401"), "{err}");
        assert!(err.message.contains("[redacted]"), "{err}");
        assert_clean(&err, &[]);
        assert_eq!(fake.requests(), 1);
        let reported = github.expiry().unwrap().unwrap_err();
        assert!(reported.message.contains("id-token: write"), "{reported}");
    }

    #[tokio::test]
    async fn a_server_error_is_retried_and_then_the_token_served() {
        let issued = token(AUDIENCE, 3600);
        let fake = Fake::start(vec![(500, "oops".into()), answer(&issued)]).await;
        let github = client(&fake.url);
        assert_eq!(
            github.checked_token().await.unwrap().0.expose(),
            issued.as_bytes()
        );
        assert_eq!(fake.requests(), 2);
        assert!(github.expiry().unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_server_that_keeps_failing_is_given_up_on_after_the_attempts() {
        let fake = Fake::start(vec![(503, "unavailable".into())]).await;
        let err = client(&fake.url).checked_token().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Io);
        assert!(
            err.message.contains("failed 3 times, last: HTTP 503"),
            "{err}"
        );
        assert_eq!(fake.requests(), ATTEMPTS as usize);
    }

    #[tokio::test]
    async fn unusable_answers_get_errors_that_say_what_is_wrong() {
        let expired = token(AUDIENCE, -60);
        let foreign = token("https://github.com/example", 3600);
        let cases: Vec<((u16, String), &str)> = vec![
            (
                (200, "<html>proxy login</html>".into()),
                "answered something that is not JSON",
            ),
            ((200, r#"{"count":1}"#.into()), "without a `value`"),
            (
                (200, format!(r#""{foreign}""#)),
                "JSON that is not an object",
            ),
            ((200, r#"{"value":"not-a-jwt"}"#.into()), "is not a JWT"),
            (answer(&expired), "expired at"),
            (answer(&foreign), "expected \"sts.amazonaws.com\""),
            (
                (404, "Not Found".into()),
                "ACTIONS_ID_TOKEN_REQUEST_URL is the one GitHub set",
            ),
            (
                (200, "x".repeat(MAX_ANSWER + 1)),
                "answered more than 64 KiB",
            ),
        ];
        for (reply, expected) in cases {
            let fake = Fake::start(vec![reply]).await;
            let err = client(&fake.url).checked_token().await.unwrap_err();
            assert!(err.message.contains(expected), "{expected}: {err}");
            assert!(
                err.message
                    .contains(&fake.url[..fake.url.find('?').unwrap()]),
                "{err}"
            );
            assert_clean(&err, &[&expired, &foreign]);
            assert_eq!(fake.requests(), 1, "{expected}: not retried");
        }
    }

    #[tokio::test]
    async fn an_endpoint_that_is_down_is_a_clear_error() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/idtoken?api-version=2.0",
            closed.local_addr().unwrap()
        );
        drop(closed);
        let github = client(&url);
        let err = github.checked_token().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Io);
        assert!(
            err.message
                .contains("failed 3 times, last: cannot reach it"),
            "{err}"
        );
        assert!(
            err.message.to_lowercase().contains("connection refused"),
            "{err}"
        );
        assert!(err.message.contains("egress"), "{err}");
        assert_clean(&err, &[]);
        assert!(github.expiry().unwrap().is_err());
    }

    #[test]
    fn the_audience_is_appended_encoded_and_only_https_or_loopback_is_accepted() {
        let (uri, endpoint) =
            request_uri("https://gh.example/idtoken?api-version=2.0", "a b&c").unwrap();
        assert_eq!(
            uri.to_string(),
            "https://gh.example/idtoken?api-version=2.0&audience=a%20b%26c"
        );
        assert_eq!(endpoint, "https://gh.example/idtoken");
        let (uri, _) = request_uri("https://gh.example/idtoken", AUDIENCE).unwrap();
        assert_eq!(
            uri.to_string(),
            "https://gh.example/idtoken?audience=sts.amazonaws.com"
        );
        for ok in [
            "http://127.0.0.1:1/t",
            "http://[::1]:1/t",
            "http://localhost:1/t",
        ] {
            assert!(request_uri(ok, AUDIENCE).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("http://gh.example/t", "in the clear"),
            ("ftp://gh.example/t", "not an https URL"),
            ("not a url", "is not a URL"),
            ("/idtoken", "has no host"),
        ] {
            let err = request_uri(bad, AUDIENCE).unwrap_err();
            assert!(err.message.contains(why), "{bad}: {err}");
        }
        // Built outside any runtime, as a CLI would before starting one.
        let request_token = || SecretValue::from(REQUEST_TOKEN.to_string());
        assert!(GitHubOidc::new("https://gh.example/t", request_token(), want()).is_ok());
        let empty = GitHubOidc::new(
            "https://gh.example/t",
            SecretValue::from(" ".to_string()),
            want(),
        );
        assert!(empty.unwrap_err().message.contains("is empty"));
        let odd = GitHubOidc::new(
            "https://gh.example/t",
            SecretValue::from("a\nb".to_string()),
            want(),
        );
        assert!(odd.unwrap_err().message.contains("printable ASCII"));
    }

    #[tokio::test]
    async fn the_web_identity_source_serves_github_tokens_under_its_own_name() {
        let issued = token(AUDIENCE, 3600);
        let fake = Fake::start(vec![answer(&issued)]).await;
        let ids = IdentityIds::default();
        let irsa = Irsa::github(ids.clone(), client(&fake.url), ROLE.into(), None).unwrap();
        assert_eq!(irsa.name(), "github-oidc");
        assert_eq!(irsa.expiry().map(|e| e.is_ok()), None);
        let served = irsa.fetch(&ids.token).await.unwrap().unwrap();
        assert_eq!(served.expose(), issued.as_bytes());
        let role = irsa.fetch(&ids.role_arn).await.unwrap().unwrap();
        assert_eq!(role.expose(), ROLE.as_bytes());
        assert!(irsa.expiry().unwrap().is_ok());
        assert!(irsa.checked_token().await.is_ok());
        assert_eq!(fake.requests(), 1);
        assert!(
            Irsa::github(ids, client(&fake.url), "arn:aws:iam::1:role/x".into(), None).is_err()
        );
    }
}
