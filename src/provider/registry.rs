//! Registry credentials: which ECR hosts a listener answers `Auth/Credentials` for, with the
//! build client's own credentials winning, and the record of every answer.
//!
//! What BuildKit does with the answer (moby/buildkit `util/resolver/authorizer.go` and
//! `session/auth/auth.go`, the same from v0.8 to v0.2x): for a registry that challenges with
//! Basic (private ECR, distribution with htpasswd) it calls `Credentials` alone and sends
//! `user:secret` as Basic auth; an empty user or secret ends in the registry's 401 ("failed to
//! find supported auth scheme" is swallowed and the 401 stands); an error other than
//! `Unimplemented` fails the pull with that error's message, which is why ECR failures are
//! errors here, not empty answers. For Bearer (`public.ecr.aws`) it first calls
//! `GetTokenAuthority`; with a key it lets the client fetch tokens (`FetchToken`,
//! `VerifyTokenAuthority` for later sessions), and on `Unimplemented` or `Unavailable` it calls
//! `Credentials` and fetches the token itself. Later sessions reuse a cached handler after
//! `Credentials` gives the same pair again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Code, Status};

use super::Provider;
use crate::observe::{Answer, Caller, Outcome};
use crate::secret::SecretValue;
use crate::source::ecr::{self, Hosts, Passwords};
use crate::source::ErrorKind;
use crate::wire::proto::auth::CredentialsResponse;

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
    /// are recorded; other hosts are none of the helper's business.
    pub async fn registry_credentials(
        &self,
        host: &str,
        caller: &Caller,
        client: Result<CredentialsResponse, Status>,
        started: Instant,
    ) -> Result<CredentialsResponse, Status> {
        let Some(registry) = self.registries.hosts.registry(host) else {
            return client;
        };
        let record = |source, outcome, value, error| Answer {
            id: host,
            source,
            outcome,
            value,
            error,
            started,
        };
        let session = caller.session.as_deref().unwrap_or("-");
        match &client {
            Ok(answer) if !answer.is_empty() => {
                let value = SecretValue::from(answer.secret.clone());
                tracing::info!(listener = %self.listener, session, host, "registry credentials: the client's own");
                let a = record(Some(CLIENT), Outcome::Served, Some(&value), None);
                self.audit.registry_queued(&self.listener, caller, &a);
                self.registry_observe(&a);
                return client;
            }
            Err(status) if status.code() != Code::Unimplemented => {
                tracing::warn!(listener = %self.listener, session, host, code = ?status.code(), "the client's own registry credentials failed; answering for it");
            }
            _ => {}
        }
        let Some(passwords) = self.registries.passwords.as_ref() else {
            return client;
        };
        if !self.registries.allows(host) {
            tracing::warn!(listener = %self.listener, session, host, "registry credentials refused: this listener's allow_registry does not name {host}");
            self.registry_answer(caller, record(None, Outcome::Denied, None, None))
                .await?;
            return client;
        }
        match passwords.password(&registry).await {
            Ok(password) => {
                self.registry_answer(
                    caller,
                    record(Some(ECR), Outcome::Served, Some(&password), None),
                )
                .await?;
                Ok(CredentialsResponse {
                    username: ecr::USER.into(),
                    secret: String::from_utf8_lossy(password.expose()).into_owned(),
                })
            }
            Err(e) => {
                let message = format!("irsa-secrets: registry credentials for {host}: {e}");
                self.registry_answer(
                    caller,
                    record(Some(ECR), Outcome::Error, None, Some(&message)),
                )
                .await?;
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
            tracing::error!(listener = %self.listener, host = a.id, error = %e, "registry credentials refused: their audit record cannot be written");
            return Err(Status::unavailable(format!(
                "irsa-secrets: registry credentials for {} are not served: {e}",
                a.id
            )));
        }
        self.registry_observe(&a);
        Ok(())
    }

    /// The log line and the metrics of one registry answer.
    fn registry_observe(&self, a: &Answer<'_>) {
        match a.outcome {
            Outcome::Served if a.source == Some(ECR) => {
                tracing::info!(listener = %self.listener, host = a.id, "registry credentials served from ECR")
            }
            Outcome::Error => {
                tracing::warn!(listener = %self.listener, host = a.id, error = a.error, "registry credentials failed")
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
