//! Prometheus metrics and the Kubernetes probes (`/metrics`, `/healthz`, `/readyz`) on an
//! optional loopback HTTP listener, so the helper is monitored like any other sidecar.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::ready::Checks;
use super::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: String,
    id: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpiryLabels {
    listener: String,
    source: String,
}

/// Distinct secret ids one listener's request counter labels by name. Ids come from builds
/// (a Dockerfile names any id it likes), so past this many the rest count under [`OTHER`]:
/// a hostile build cannot grow the exposition, or the helper's memory, without limit.
pub const MAX_ID_LABELS: usize = 128;

/// The id label of requests for ids the helper does not serve, and of any id past
/// [`MAX_ID_LABELS`].
pub const OTHER: &str = "other";

/// The helper's metrics; cheap to clone, shared by every listener.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    sessions_open: Family<ListenerLabel, Gauge>,
    sessions: Family<ListenerLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    latency: Histogram,
    forwarded: Counter,
    upstream_errors: Family<ListenerLabel, Counter>,
    expiry: Family<ExpiryLabels, Gauge<f64, AtomicU64>>,
    /// The ids labelled by name so far, per listener.
    ids: Mutex<HashMap<String, HashSet<String>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("irsa_secrets");
        let inner = Inner {
            sessions_open: Family::default(),
            sessions: Family::default(),
            requests: Family::default(),
            latency: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            forwarded: Counter::default(),
            upstream_errors: Family::default(),
            expiry: Family::default(),
            ids: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sessions_open",
            "Build sessions open now",
            inner.sessions_open.clone(),
        );
        registry.register("sessions", "Build sessions joined", inner.sessions.clone());
        registry.register(
            "secret_requests",
            "GetSecret requests by id and outcome",
            inner.requests.clone(),
        );
        registry.register(
            "secret_request_duration_seconds",
            "Time to answer a GetSecret request",
            inner.latency.clone(),
        );
        registry.register(
            "forwarded_bytes",
            "Bytes of session streams forwarded between client and daemon",
            inner.forwarded.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failures to reach or talk to the daemon",
            inner.upstream_errors.clone(),
        );
        registry.register(
            "expiry_seconds",
            "Seconds until the served identity (token or STS credentials) expires",
            inner.expiry.clone(),
        );
        Self {
            inner: Arc::new(Inner { registry, ..inner }),
        }
    }
}

impl Metrics {
    /// A session started on `listener`; returns a guard that marks its end when dropped.
    pub fn session(&self, listener: &str) -> SessionGuard {
        let label = ListenerLabel {
            listener: listener.to_string(),
        };
        self.inner.sessions.get_or_create(&label).inc();
        self.inner.sessions_open.get_or_create(&label).inc();
        SessionGuard {
            metrics: self.clone(),
            label,
        }
    }

    /// Counts a GetSecret answer and its latency. Callers pass the ids they serve and
    /// [`OTHER`] for the rest; even so, at most [`MAX_ID_LABELS`] ids per listener are
    /// labelled by name, so the label set stays bounded whatever the caller passes.
    pub fn request(&self, listener: &str, id: &str, outcome: Outcome, latency: Duration) {
        let id = self.id_label(listener, id);
        let outcome = match outcome {
            Outcome::Served => "served",
            Outcome::NotFound => "not_found",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        };
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                listener: listener.into(),
                id: id.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.inner.latency.observe(latency.as_secs_f64());
    }

    /// `id`, or [`OTHER`] once the listener has [`MAX_ID_LABELS`] other ids labelled.
    fn id_label<'a>(&self, listener: &str, id: &'a str) -> &'a str {
        let mut ids = self
            .inner
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seen = match ids.get_mut(listener) {
            Some(seen) => seen,
            None => ids.entry(listener.to_string()).or_default(),
        };
        if id == OTHER || seen.contains(id) {
            id
        } else if seen.len() < MAX_ID_LABELS {
            seen.insert(id.to_string());
            id
        } else {
            OTHER
        }
    }

    /// Counts bytes forwarded through a session: what the byte layer reports each frame to.
    pub fn forwarded(&self) -> impl Fn(u64) + Clone + Send + Sync + 'static {
        let counter = self.inner.forwarded.clone();
        move |bytes| {
            counter.inc_by(bytes);
        }
    }

    /// Counts a failure to reach the daemon.
    pub fn upstream_error(&self, listener: &str) {
        self.inner
            .upstream_errors
            .get_or_create(&ListenerLabel {
                listener: listener.into(),
            })
            .inc();
    }

    /// Sets the time left on a source's identity (negative once expired).
    pub fn expiry(&self, listener: &str, source: &str, seconds: f64) {
        self.inner
            .expiry
            .get_or_create(&ExpiryLabels {
                listener: listener.into(),
                source: source.into(),
            })
            .set(seconds);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .expect("writing to a String");
        out
    }
}

/// Marks a session closed when dropped.
pub struct SessionGuard {
    metrics: Metrics,
    label: ListenerLabel,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.metrics
            .inner
            .sessions_open
            .get_or_create(&self.label)
            .dec();
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    ready: Arc<Checks>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "metrics and probes on /metrics, /healthz, /readyz");
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let (metrics, ready) = (metrics.clone(), Arc::clone(&ready));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                answer(req, metrics.clone(), Arc::clone(&ready))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    metrics: Metrics,
    ready: Arc<Checks>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body, content_type) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        "/readyz" => match ready.run().await {
            Ok(()) => (StatusCode::OK, "ready\n".to_string(), "text/plain"),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready:\n{why}\n"),
                "text/plain",
            ),
        },
        "/metrics" => {
            // Refreshes the expiry gauges; the verdict itself is /readyz's business.
            let _ = ready.run().await;
            (
                StatusCode::OK,
                metrics.encode(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "try /metrics, /healthz or /readyz\n".to_string(),
            "text/plain",
        ),
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The distinct `id` label values of the request counter in `text`.
    fn id_labels(text: &str) -> HashSet<String> {
        text.lines()
            .filter(|l| l.starts_with("irsa_secrets_secret_requests_total{"))
            .filter_map(|l| l.split("id=\"").nth(1)?.split('"').next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn request_labels_stay_bounded_whatever_ids_callers_pass() {
        let m = Metrics::default();
        let latency = Duration::from_millis(1);
        for i in 0..5000 {
            m.request("ci", &format!("junk-{i}"), Outcome::NotFound, latency);
        }
        m.request("ci", "junk-0", Outcome::Served, latency);
        m.request("other-listener", "aws-role-arn", Outcome::Served, latency);
        let text = m.encode();
        let ids = id_labels(&text);
        assert_eq!(ids.len(), MAX_ID_LABELS + 2, "{ids:?}");
        assert!(ids.contains("junk-0") && ids.contains(OTHER) && ids.contains("aws-role-arn"));
        let other = text
            .lines()
            .find(|l| l.contains(r#"id="other""#) && l.contains(r#"listener="ci""#))
            .unwrap();
        let past_the_bound = 5000 - MAX_ID_LABELS;
        assert!(other.ends_with(&format!(" {past_the_bound}")), "{other}");
    }
}
