//! Registry credentials: which ECR hosts a listener answers `Auth/Credentials` for, with the
//! build client's own credentials winning, and the record of every answer.
//!
//! What BuildKit does with the answer (moby/buildkit `util/resolver/authorizer.go` and
//! `session/auth/auth.go`; the flow is the same in the v0.8-era `authHandlerNS` and in the
//! newest `authFetcher` code):
//! - Basic challenge (private ECR, distribution with htpasswd): `Credentials` alone, sent as
//!   `user:secret`. `Unimplemented` counts as no credentials; an empty user or secret makes the
//!   authorizer give up ("failed to find supported auth scheme") and the registry's 401 stands
//!   (the tests' control build shows it); any other error fails the pull with its message,
//!   which is why ECR failures are errors here, not empty answers.
//! - Bearer challenge (`public.ecr.aws`): `GetTokenAuthority` first. Given a key, the client
//!   fetches the tokens (`FetchToken`); on `Unimplemented` or `Unavailable` BuildKit calls
//!   `Credentials` and fetches the token from the realm itself (v0.8, in tests/it/registry_public.rs:
//!   one GET with the Basic credentials; the token is then cached across sessions).
//! - A later session is offered the cached fetchers of the host: one made with a key if the
//!   client proves it (`VerifyTokenAuthority`; a client without credentials proves the
//!   anonymous key, which depends on BuildKit's salt alone), one made with `Credentials` if
//!   `Credentials` gives the same pair again. So every session asks at least once per host, and
//!   the router declines both key methods where the helper answers.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tonic::{Code, Status};

use super::Provider;
use crate::bound::quote;
use crate::observe::{Answer, Caller, Outcome};
use crate::secret::SecretValue;
use crate::source::ecr::{self, Hosts, Passwords, Registry};
use crate::source::{ErrorKind, SourceError};

/// A registry login, as `Auth/Credentials` carries it (the session's router converts): an empty
/// user or password is no login at all.
#[derive(Debug, Clone)]
pub struct Login {
    /// The user (`AWS` for ECR's passwords).
    pub username: String,
    /// The password, redacted and wiped like any served value.
    pub secret: SecretValue,
}

impl Login {
    /// True when this is no login: BuildKit answers the registry's Basic challenge with nothing
    /// then (a 401).
    pub fn is_empty(&self) -> bool {
        self.username.is_empty() || self.secret.is_empty()
    }
}

/// The ECR failures one build session has met, by ECR endpoint. BuildKit asks `Credentials`
/// again at every resolve of a host (seven times in one `public.ecr.aws` build, whose pull goes
/// on anonymously after a refusal), so a session that met a failure gets it again at once
/// instead of another ECR call, each with the SDK's retries. The next session asks ECR again:
/// a policy fixed between two builds is seen by the second.
#[derive(Debug, Default)]
pub struct SessionFailures(Mutex<HashMap<Registry, SourceError>>);

impl SessionFailures {
    fn of(&self, registry: &Registry) -> Option<SourceError> {
        let failures = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        failures.get(&registry.password_scope()).cloned()
    }

    fn remember(&self, registry: &Registry, error: &SourceError) {
        let mut failures = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        failures.insert(registry.password_scope(), error.clone());
    }
}

/// The registry side of one listener.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    hosts: Arc<Hosts>,
    passwords: Option<Arc<Passwords>>,
    allowed: Option<Arc<BTreeSet<String>>>,
}

impl Registries {
    /// Answers for ECR's own hosts and `hosts`' aliases with `passwords` (none: the helper has no
    /// AWS identity of its own, and every call goes on to the client). `allowed`, when given,
    /// limits the answers to those hosts: what a restricted listener gets.
    pub fn new(
        hosts: Hosts,
        passwords: Option<Passwords>,
        allowed: Option<BTreeSet<String>>,
    ) -> Self {
        Self {
            hosts: Arc::new(hosts),
            passwords: passwords.map(Arc::new),
            allowed: allowed.map(|a| Arc::new(a.iter().map(|h| h.to_ascii_lowercase()).collect())),
        }
    }

    /// True when the helper has passwords to give: otherwise every `Auth` call is forwarded
    /// raw. A listener that may give none (`allow_id` without `allow_registry`) is still active,
    /// so its refusals are recorded.
    pub fn active(&self) -> bool {
        self.passwords.is_some()
    }

    fn allows(&self, host: &str) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|a| a.contains(&host.to_ascii_lowercase()))
    }
}

/// The source the audit trail names for ECR's passwords.
const ECR: &str = "ecr";
/// The source the audit trail names for the build client's own credentials.
const CLIENT: &str = "client";

impl Provider {
    /// Answers registry credentials with `registries`.
    pub fn with_registries(mut self, registries: Registries) -> Self {
        self.registries = registries;
        self
    }

    /// The registry side of this listener, for the router and the start-up log.
    pub fn registries(&self) -> &Registries {
        &self.registries
    }

    /// True when `host` is an ECR host this listener answers from ECR when the client has
    /// nothing for it.
    pub fn serves_registry(&self, host: &str) -> bool {
        self.registries.active()
            && self.registries.allows(host)
            && self.registries.hosts.registry(host).is_some()
    }

    /// Answers a session's `Auth/Credentials` for `host`, given the client's own answer: the
    /// client's credentials when it has some; for an ECR host this listener serves, `AWS` and
    /// ECR's password; otherwise the client's answer, whatever it was. Answers for ECR hosts
    /// are recorded; other hosts are none of the helper's business. `failures` are the
    /// session's, answered again without an ECR call.
    pub async fn registry_credentials(
        &self,
        host: &str,
        caller: &Caller,
        client: Result<Login, Status>,
        failures: &SessionFailures,
        started: Instant,
    ) -> Result<Login, Status> {
        let Some(registry) = self.registries.hosts.registry(host) else {
            return client;
        };
        let record = |source, outcome, value, error| Answer {
            id: host,
            source,
            origin: None,
            outcome,
            value,
            error,
            started,
        };
        let session = quote(caller.session.as_deref().unwrap_or("-"));
        let shown = quote(host);
        match &client {
            Ok(answer) if !answer.is_empty() => {
                tracing::info!(listener = %self.listener, ?session, host = ?shown, "registry credentials: the client's own");
                let a = record(Some(CLIENT), Outcome::Served, Some(&answer.secret), None);
                self.audit.registry_queued(&self.listener, caller, &a);
                self.registry_observe(&a);
                return client;
            }
            Err(status) if status.code() != Code::Unimplemented => {
                tracing::warn!(listener = %self.listener, ?session, host = ?shown, code = ?status.code(), "the client's own registry credentials failed; answering for it");
            }
            _ => {}
        }
        let Some(passwords) = self.registries.passwords.as_ref() else {
            return client;
        };
        if !self.registries.allows(host) {
            tracing::warn!(listener = %self.listener, ?session, host = ?shown, "registry credentials refused: this listener's allow_registry does not name {shown}");
            self.registry_answer(caller, record(None, Outcome::Denied, None, None))
                .await?;
            return client;
        }
        let password = match failures.of(&registry) {
            Some(failed) => Err(failed),
            None => passwords.password(&registry).await.inspect_err(|e| {
                failures.remember(&registry, e);
            }),
        };
        match password {
            Ok(password) => {
                self.registry_answer(
                    caller,
                    record(Some(ECR), Outcome::Served, Some(&password), None),
                )
                .await?;
                Ok(Login {
                    username: ecr::USER.into(),
                    secret: password,
                })
            }
            Err(e) => {
                let message = format!("irsa-secrets: registry credentials for {shown}: {e}");
                self.registry_answer(
                    caller,
                    record(Some(ECR), Outcome::Error, None, Some(&message)),
                )
                .await?;
                // ECR Public serves pulls anonymously: a role without `ecr-public:` rights
                // must not turn every `FROM public.ecr.aws/...` into an error.
                if registry == Registry::Public {
                    tracing::warn!(listener = %self.listener, ?session, host = ?shown, error = %e, "no ECR Public password; the pull goes on anonymously");
                    return client;
                }
                let code = match e.kind {
                    ErrorKind::Denied => Code::PermissionDenied,
                    ErrorKind::Missing | ErrorKind::Invalid => Code::FailedPrecondition,
                    ErrorKind::Io => Code::Unavailable,
                };
                Err(Status::new(code, message))
            }
        }
    }

    /// Writes the record of an answer the helper gives and waits for it, as secrets do: no
    /// password leaves without its record.
    async fn registry_answer(&self, caller: &Caller, a: Answer<'_>) -> Result<(), Status> {
        if let Err(e) = self.audit.registry(&self.listener, caller, &a).await {
            let host = quote(a.id);
            tracing::error!(listener = %self.listener, ?host, error = %e, "registry credentials refused: their audit record cannot be written");
            return Err(Status::unavailable(format!(
                "irsa-secrets: registry credentials for {host} are not served: {e}"
            )));
        }
        self.registry_observe(&a);
        Ok(())
    }

    /// The log line and the metrics of one registry answer.
    fn registry_observe(&self, a: &Answer<'_>) {
        let host = quote(a.id);
        match a.outcome {
            Outcome::Served if a.source == Some(ECR) => {
                tracing::info!(listener = %self.listener, ?host, "registry credentials served from ECR")
            }
            Outcome::Error => {
                tracing::warn!(listener = %self.listener, ?host, error = a.error.map(|e| tracing::field::display(quote(e))), "registry credentials failed")
            }
            _ => {}
        }
        self.metrics.registry_request(
            &self.listener,
            a.source.unwrap_or("none"),
            a.outcome,
            a.started.elapsed(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use futures_util::future::BoxFuture;
    use tonic::{Code, Status};

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::source::ecr::{Issuer, Token};

    const ECR_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

    /// Issues `AWS:ecr-pw`, or refuses as a role without the permission does; counts calls.
    struct Fake {
        deny: bool,
        calls: Arc<AtomicUsize>,
    }

    impl Issuer for Fake {
        fn issue<'a>(&'a self, _: &'a Registry) -> BoxFuture<'a, Result<Token, SourceError>> {
            use base64::Engine;
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if self.deny {
                    return Err(SourceError::new(
                        ErrorKind::Denied,
                        "needs ecr:GetAuthorizationToken",
                    ));
                }
                let encoded = base64::engine::general_purpose::STANDARD.encode("AWS:ecr-pw");
                Ok(Token {
                    encoded: SecretValue::from(encoded),
                    expires_at: None,
                })
            })
        }
    }

    fn provider(deny: bool, allowed: Option<&[&str]>) -> Provider {
        counting_provider(deny, allowed).0
    }

    /// A provider on [`Fake`], and its count of ECR calls.
    fn counting_provider(deny: bool, allowed: Option<&[&str]>) -> (Provider, Arc<AtomicUsize>) {
        let hosts = Hosts::new(&[format!("127.0.0.1:5000={ECR_HOST}")]).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let fake = Fake {
            deny,
            calls: Arc::clone(&calls),
        };
        let passwords = Passwords::new(Box::new(fake));
        let allowed = allowed.map(|a| a.iter().map(|h| h.to_string()).collect());
        let registries = Registries::new(hosts, Some(passwords), allowed);
        (Provider::new(Vec::new()).with_registries(registries), calls)
    }

    fn creds(user: &str, secret: &str) -> Login {
        Login {
            username: user.into(),
            secret: SecretValue::from(secret.to_string()),
        }
    }

    /// Asks as a new session would.
    async fn ask(p: &Provider, host: &str, client: Result<Login, Status>) -> Result<Login, Status> {
        ask_in(&SessionFailures::default(), p, host, client).await
    }

    async fn ask_in(
        session: &SessionFailures,
        p: &Provider,
        host: &str,
        client: Result<Login, Status>,
    ) -> Result<Login, Status> {
        p.registry_credentials(host, &Caller::default(), client, session, Instant::now())
            .await
    }

    fn assert_names_the_ecr_fix(e: &Status) {
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(
            e.message().contains("needs ecr:GetAuthorizationToken"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn ecr_hosts_and_aliases_get_ecrs_password_when_the_client_has_none() {
        let p = provider(false, None);
        for host in [ECR_HOST, "127.0.0.1:5000"] {
            let got = ask(&p, host, Ok(creds("", ""))).await.unwrap();
            assert_eq!(
                (got.username.as_str(), got.secret.expose()),
                ("AWS", &b"ecr-pw"[..])
            );
            let unimplemented = Err(Status::unimplemented("no Auth"));
            assert_eq!(
                ask(&p, host, unimplemented).await.unwrap().secret.expose(),
                b"ecr-pw"
            );
        }
    }

    #[tokio::test]
    async fn the_clients_own_credentials_win() {
        let got = ask(&provider(false, None), ECR_HOST, Ok(creds("me", "mine")))
            .await
            .unwrap();
        assert_eq!(
            (got.username.as_str(), got.secret.expose()),
            ("me", &b"mine"[..])
        );
    }

    #[tokio::test]
    async fn other_hosts_get_the_clients_answer_whatever_it_is() {
        let p = provider(false, None);
        let got = ask(&p, "ghcr.io", Ok(creds("", ""))).await.unwrap();
        assert!(got.is_empty());
        let e = ask(&p, "127.0.0.1:5001", Err(Status::internal("helper broke")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
    }

    #[tokio::test]
    async fn a_restricted_listener_answers_only_the_hosts_it_names() {
        let p = provider(false, Some(&[]));
        assert!(!p.serves_registry(ECR_HOST));
        assert!(ask(&p, ECR_HOST, Ok(creds("", "")))
            .await
            .unwrap()
            .is_empty());
        let p = provider(false, Some(&["127.0.0.1:5000"]));
        assert!(p.serves_registry("127.0.0.1:5000") && !p.serves_registry(ECR_HOST));
        assert_eq!(
            ask(&p, "127.0.0.1:5000", Ok(creds("", "")))
                .await
                .unwrap()
                .secret
                .expose(),
            b"ecr-pw"
        );
        assert!(ask(&p, ECR_HOST, Ok(creds("", "")))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn an_ecr_refusal_is_an_error_that_names_the_fix() {
        let e = ask(&provider(true, None), ECR_HOST, Ok(creds("", "")))
            .await
            .unwrap_err();
        assert_names_the_ecr_fix(&e);
        assert!(e.message().contains(ECR_HOST), "{e}");
    }

    #[tokio::test]
    async fn without_an_ecr_public_password_public_pulls_go_on_anonymously() {
        let got = ask(&provider(true, None), "public.ecr.aws", Ok(creds("", "")))
            .await
            .unwrap();
        assert!(got.is_empty());
    }

    /// A session asks ECR once per endpoint however often BuildKit asks after a failure (both
    /// hosts here are one endpoint); a new session asks again.
    #[tokio::test]
    async fn a_session_meets_an_ecr_failure_once_and_the_next_session_asks_again() {
        let (p, calls) = counting_provider(true, None);
        let session = SessionFailures::default();
        for host in [ECR_HOST, "127.0.0.1:5000", ECR_HOST] {
            let e = ask_in(&session, &p, host, Ok(creds("", "")))
                .await
                .unwrap_err();
            assert_names_the_ecr_fix(&e);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(ask(&p, ECR_HOST, Ok(creds("", ""))).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2, "a new session asks ECR");
    }
}
