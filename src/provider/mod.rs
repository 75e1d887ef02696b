//! The Secrets service: maps ids to sources, applies the listener's policy (which ids it
//! serves), enforces BuildKit's value rules, turns source failures into gRPC statuses BuildKit
//! reports precisely, and records every answer in the audit trail and the metrics. Knows
//! nothing of sockets or sessions.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::bound::quote;
use crate::observe::audit::Audit;
use crate::observe::metrics::Metrics;
use crate::observe::{Answer, Caller, Outcome};
use crate::secret::{SecretValue, MAX_SECRET_SIZE};
use crate::source::{ErrorKind, Source, SourceError};

mod precedence;
pub mod registry;
pub use precedence::ClientAnswer;
pub use registry::Registries;

/// Longest secret id answered, in bytes. BuildKit's ids are short: a Dockerfile's `id=` is a
/// word, and the longest it makes itself is `GIT_AUTH_HEADER.` and a host name (at most 253
/// bytes in DNS). A longer id is refused as `InvalidArgument` naming its length, before any
/// source, client or record sees more of it than [`crate::bound::quote`] shows.
pub const MAX_ID_BYTES: usize = 512;

/// Answers `GetSecret` from a fixed table of ids built at start-up.
#[derive(Debug, Clone)]
pub struct Provider {
    routes: Arc<HashMap<String, Arc<dyn Source>>>,
    listener: Arc<str>,
    allowed: Option<Arc<BTreeSet<String>>>,
    audit: Audit,
    metrics: Metrics,
    registries: Registries,
}

impl Provider {
    /// Builds the id table. A later source wins an id it shares with an earlier one, so explicit
    /// `--secret` declarations (listed last) override the identity sources.
    pub fn new(sources: Vec<Arc<dyn Source>>) -> Self {
        let mut routes = HashMap::new();
        for source in sources {
            for id in source.ids() {
                routes.insert(id, Arc::clone(&source));
            }
        }
        Self {
            routes: Arc::new(routes),
            listener: Arc::from("default"),
            allowed: None,
            audit: Audit::default(),
            metrics: Metrics::default(),
            registries: Registries::default(),
        }
    }

    /// Names the listener this provider answers for and, if given, limits it to `allowed` ids:
    /// the others are refused as if nobody served them.
    pub fn with_policy(mut self, listener: &str, allowed: Option<BTreeSet<String>>) -> Self {
        self.listener = Arc::from(listener);
        self.allowed = allowed.map(Arc::new);
        self
    }

    /// Sends records to `audit` and counts into `metrics`.
    pub fn with_observers(mut self, audit: Audit, metrics: Metrics) -> Self {
        self.audit = audit;
        self.metrics = metrics;
        self
    }

    /// The listener's name, for records made elsewhere (sessions, refused peers).
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// The audit trail.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The ids this provider answers, sorted, for start-up logs and `doctor`.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self
            .routes
            .keys()
            .filter(|id| self.allows(id))
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    fn allows(&self, id: &str) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.contains(id))
    }

    /// True when `id` is one of ours on this listener.
    pub fn owns(&self, id: &str) -> bool {
        self.routes.contains_key(id) && self.allows(id)
    }

    /// Time left on each source's identity (token, credentials), for probes and metrics.
    fn expiries(&self) -> Vec<(&'static str, Result<Duration, SourceError>)> {
        let mut seen = BTreeSet::new();
        self.routes
            .values()
            .filter(|s| seen.insert(Arc::as_ptr(s) as *const () as usize))
            .filter_map(|s| s.expiry().map(|e| (s.name(), e)))
            .collect()
    }

    /// Readiness of this listener's identity: refreshes each source's time-to-expiry gauge and
    /// answers with one `SOURCE: WHY` per source that cannot serve now.
    pub fn identity_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (source, expiry) in self.expiries() {
            let left = match expiry {
                Ok(left) => left.as_secs_f64(),
                Err(e) => {
                    problems.push(format!("{source}: {e}"));
                    0.0
                }
            };
            self.metrics.expiry(&self.listener, source, left);
        }
        problems
    }

    /// Fetches `id` for `caller`. `NotFound` for ids not served here, so BuildKit treats them
    /// as absent (its `GIT_AUTH_TOKEN.*` and `HTTP_AUTH_*` probes rely on that); any other
    /// failure gets a code BuildKit reports as a hard error, with a message that says what to
    /// check.
    pub async fn get(&self, id: &str, caller: &Caller) -> Result<SecretValue, Status> {
        let started = Instant::now();
        self.check_id(id, caller, started).await?;
        let source = self.route(id, caller, started).await?;
        let result = checked(id, source.name(), source.fetch(id).await);
        let mut answer = answer_of(id, source.name(), &result, started);
        answer.origin = source.origin(id);
        self.answer(caller, answer).await?;
        result
    }

    /// Refuses, recorded, an id over [`MAX_ID_BYTES`]: `InvalidArgument` with its length, never
    /// its bytes. Sessions check before asking the build client, probes before the route.
    pub async fn check_id(
        &self,
        id: &str,
        caller: &Caller,
        started: Instant,
    ) -> Result<(), Status> {
        if id.len() <= MAX_ID_BYTES {
            return Ok(());
        }
        let message = format!(
            "irsa-secrets: the secret id is {} bytes, over the limit of {MAX_ID_BYTES}",
            id.len()
        );
        let refused = Answer {
            id,
            source: None,
            origin: None,
            outcome: Outcome::Error,
            value: None,
            error: Some(&message),
            started,
        };
        self.answer(caller, refused).await?;
        Err(Status::invalid_argument(message))
    }

    /// The source of `id` when this listener serves it; otherwise the refusal, recorded, as
    /// `NotFound`.
    async fn route(
        &self,
        id: &str,
        caller: &Caller,
        started: Instant,
    ) -> Result<&Arc<dyn Source>, Status> {
        let refused = |source, outcome| Answer {
            id,
            source,
            origin: None,
            outcome,
            value: None,
            error: None,
            started,
        };
        let Some(source) = self.routes.get(id) else {
            self.answer(caller, refused(None, Outcome::NotFound))
                .await?;
            return Err(Status::not_found(format!("secret {} not found", quote(id))));
        };
        if !self.allows(id) {
            tracing::warn!(listener = %self.listener, id = ?quote(id), "secret refused: this listener does not serve it");
            self.answer(caller, refused(Some(source.name()), Outcome::Denied))
                .await?;
            return Err(Status::not_found(format!("secret {} not found", quote(id))));
        }
        Ok(source)
    }

    /// Writes the audit record of one answer and waits until it is written, then counts it
    /// and logs it. When the record cannot be written the answer is not given: the request
    /// fails with `Unavailable`, so no value leaves without its record.
    async fn answer(&self, caller: &Caller, a: Answer<'_>) -> Result<(), Status> {
        if let Err(e) = self.audit.secret(&self.listener, caller, &a).await {
            let session = quote(caller.session.as_deref().unwrap_or("-"));
            tracing::error!(listener = %self.listener, ?session, id = ?quote(a.id), error = %e, "secret refused: its audit record cannot be written");
            self.count(&a, Outcome::Error);
            return Err(Status::unavailable(format!(
                "irsa-secrets: secret {} is not served: {e}",
                quote(a.id)
            )));
        }
        self.observe(caller, &a);
        Ok(())
    }

    /// Records an answer already given (the build client's own secrets): queues its audit
    /// record without waiting, counts it and logs it.
    fn record(&self, caller: &Caller, a: Answer<'_>) {
        self.audit.secret_queued(&self.listener, caller, &a);
        self.observe(caller, &a);
    }

    /// The log line and the metrics of one answer.
    fn observe(&self, caller: &Caller, a: &Answer<'_>) {
        let session = quote(caller.session.as_deref().unwrap_or("-"));
        let id = quote(a.id);
        let error = a.error.map(quote);
        match a.outcome {
            Outcome::Served => {
                tracing::info!(listener = %self.listener, ?session, probe = caller.probe, ?id, source = a.source, name = a.origin, bytes = a.value.map(SecretValue::len), "secret served")
            }
            Outcome::NotFound if caller.probe => {
                tracing::info!(listener = %self.listener, ?id, "a probe asked for secret {id}, which nobody serves here")
            }
            Outcome::NotFound if is_buildkit_probe(a.id) => {
                tracing::debug!(?session, ?id, "secret not served here")
            }
            Outcome::NotFound => tracing::warn!(
                listener = %self.listener,
                ?session,
                %id,
                "a build asked for secret {id}, which nobody serves: a RUN --mount without required=true silently runs without it",
            ),
            Outcome::Denied => {}
            Outcome::Error => {
                tracing::warn!(listener = %self.listener, ?session, ?id, source = a.source, name = a.origin, error = error.map(tracing::field::display), "secret refused")
            }
        }
        self.count(a, a.outcome);
    }

    fn count(&self, a: &Answer<'_>, outcome: Outcome) {
        let label = if self.routes.contains_key(a.id) {
            a.id
        } else {
            "other"
        };
        self.metrics
            .request(&self.listener, label, outcome, a.started.elapsed());
    }
}

/// What source `name` fetched for `id`, held to BuildKit's value rules (not empty, within its
/// size limit), or its failure as a gRPC status.
// The status is what `get` answers, large or not.
#[allow(clippy::result_large_err)]
fn checked(
    id: &str,
    name: &str,
    fetched: Result<Option<SecretValue>, SourceError>,
) -> Result<SecretValue, Status> {
    match fetched {
        Ok(Some(value)) if value.is_empty() => Err(Status::failed_precondition(format!(
            "secret {id} from the {name} source is empty; an empty secret is refused rather than \
             mounted as an empty file"
        ))),
        Ok(Some(value)) if value.len() > MAX_SECRET_SIZE => {
            Err(Status::failed_precondition(format!(
                "secret {id} from the {name} source is {} bytes, over BuildKit's limit of {} KiB",
                value.len(),
                MAX_SECRET_SIZE / 1024
            )))
        }
        Ok(Some(value)) => Ok(value),
        Ok(None) => Err(Status::not_found(format!("secret {id} not found"))),
        Err(e) => {
            let code = match e.kind {
                ErrorKind::Missing | ErrorKind::Invalid => Code::FailedPrecondition,
                ErrorKind::Denied => Code::PermissionDenied,
                ErrorKind::Io => Code::Unavailable,
            };
            Err(Status::new(code, format!("irsa-secrets: {e}")))
        }
    }
}

/// The record of a fetch's `result`: served, not found, or an error.
fn answer_of<'a>(
    id: &'a str,
    source: &'a str,
    result: &'a Result<SecretValue, Status>,
    started: Instant,
) -> Answer<'a> {
    let (outcome, value, error) = match result {
        Ok(value) => (Outcome::Served, Some(value), None),
        Err(status) if status.code() == Code::NotFound => (Outcome::NotFound, None, None),
        Err(status) => (Outcome::Error, None, Some(status.message())),
    };
    Answer {
        id,
        source: Some(source),
        origin: None,
        outcome,
        value,
        error,
        started,
    }
}

/// BuildKit's own lookups for optional credentials (git and HTTP sources), which are expected
/// to miss.
fn is_buildkit_probe(id: &str) -> bool {
    [
        "GIT_AUTH_TOKEN",
        "GIT_AUTH_HEADER",
        "HTTP_AUTH_TOKEN_",
        "HTTP_AUTH_HEADER_",
    ]
    .iter()
    .any(|p| id.starts_with(p))
}

#[cfg(test)]
mod tests;
