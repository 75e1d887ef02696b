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
struct RegistryLabels {
    listener: String,
    source: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpiryLabels {
    listener: String,
    source: String,
}

/// The `outcome` label of a request.
fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Served => "served",
        Outcome::NotFound => "not_found",
        Outcome::Denied => "denied",
        Outcome::Error => "error",
    }
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
    registry_requests: Family<RegistryLabels, Counter>,
    registry_latency: Histogram,
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
            registry_requests: Family::default(),
            registry_latency: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
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
            "registry_credential_requests",
            "Registry credential requests for ECR hosts, by source (ecr, client) and outcome",
            inner.registry_requests.clone(),
        );
        registry.register(
            "registry_credential_request_duration_seconds",
            "Time to answer a registry credential request for an ECR host",
            inner.registry_latency.clone(),
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
        let shown = crate::bound::quote(id).to_string();
        let id = self.id_label(listener, &shown);
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

    /// Counts a registry credential request for an ECR host and its latency. The labels are
    /// the helper's own words (`ecr`, `client`, `none`), never the host a build named, so they
    /// stay bounded.
    pub fn registry_request(
        &self,
        listener: &str,
        source: &str,
        outcome: Outcome,
        latency: Duration,
    ) {
        self.inner
            .registry_requests
            .get_or_create(&RegistryLabels {
                listener: listener.into(),
                source: source.into(),
                outcome: outcome_label(outcome).into(),
            })
            .inc();
        self.inner.registry_latency.observe(latency.as_secs_f64());
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

    /// The value of the one sample named exactly `series` (name and labels) in `text`.
    fn sample<'a>(text: &'a str, series: &str) -> &'a str {
        let mut found = text
            .lines()
            .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '));
        let value = found
            .next()
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert_eq!(found.next(), None, "{series} twice in\n{text}");
        value
    }

    #[test]
    fn requests_count_per_listener_id_and_outcome_with_their_latency() {
        let m = Metrics::default();
        let ms = Duration::from_millis;
        m.request("ci", "aws", Outcome::Served, ms(1));
        m.request("ci", "aws", Outcome::Served, ms(2));
        m.request("ci", "aws", Outcome::Error, ms(3));
        m.request("ci", OTHER, Outcome::NotFound, ms(4));
        m.request("gpu", "aws", Outcome::Denied, ms(10));
        let text = m.encode();
        let requests = "irsa_secrets_secret_requests_total";
        for (labels, count) in [
            (r#"listener="ci",id="aws",outcome="served""#, "2"),
            (r#"listener="ci",id="aws",outcome="error""#, "1"),
            (r#"listener="ci",id="other",outcome="not_found""#, "1"),
            (r#"listener="gpu",id="aws",outcome="denied""#, "1"),
        ] {
            assert_eq!(sample(&text, &format!("{requests}{{{labels}}}")), count);
        }
        assert_eq!(
            text.lines().filter(|l| l.starts_with(requests)).count(),
            4,
            "{text}"
        );
        let latency = "irsa_secrets_secret_request_duration_seconds";
        assert_eq!(sample(&text, &format!("{latency}_count")), "5");
        let sum: f64 = sample(&text, &format!("{latency}_sum")).parse().unwrap();
        assert!((sum - 0.020).abs() < 1e-9, "{sum}");
        // Buckets from 0.1 ms by fours: 1 ms falls under 1.6 ms, up to 4 ms under 6.4 ms.
        assert_eq!(
            sample(&text, &format!(r#"{latency}_bucket{{le="0.0016"}}"#)),
            "1"
        );
        assert_eq!(
            sample(&text, &format!(r#"{latency}_bucket{{le="0.0064"}}"#)),
            "4"
        );
        assert_eq!(
            sample(&text, &format!(r#"{latency}_bucket{{le="0.0256"}}"#)),
            "5"
        );
    }

    #[test]
    fn sessions_open_follow_their_guards_and_joined_only_grows() {
        let m = Metrics::default();
        let open = |text: &str, listener: &str| {
            sample(
                text,
                &format!(r#"irsa_secrets_sessions_open{{listener="{listener}"}}"#),
            )
            .to_string()
        };
        let joined = |text: &str, listener: &str| {
            sample(
                text,
                &format!(r#"irsa_secrets_sessions_total{{listener="{listener}"}}"#),
            )
            .to_string()
        };
        let first = m.session("ci");
        let second = m.session("ci");
        let gpu = m.clone().session("gpu");
        let text = m.encode();
        assert_eq!(
            [open(&text, "ci"), open(&text, "gpu")],
            ["2".to_string(), "1".to_string()]
        );
        drop(first);
        let text = m.encode();
        assert_eq!(open(&text, "ci"), "1");
        assert_eq!(joined(&text, "ci"), "2");
        drop((second, gpu));
        let text = m.encode();
        assert_eq!(
            [open(&text, "ci"), open(&text, "gpu")],
            ["0", "0"].map(String::from)
        );
        assert_eq!(
            [joined(&text, "ci"), joined(&text, "gpu")],
            ["2", "1"].map(String::from)
        );
    }

    #[test]
    fn forwarded_bytes_add_up_across_every_reporter() {
        let m = Metrics::default();
        assert_eq!(
            sample(&m.encode(), "irsa_secrets_forwarded_bytes_total"),
            "0"
        );
        let report = m.forwarded();
        let other = m.forwarded();
        report(1000);
        report.clone()(24);
        other(u64::from(u32::MAX));
        let total = 1024 + u64::from(u32::MAX);
        assert_eq!(
            sample(&m.encode(), "irsa_secrets_forwarded_bytes_total"),
            total.to_string()
        );
        // Each Metrics counts its own.
        assert_eq!(
            sample(
                &Metrics::default().encode(),
                "irsa_secrets_forwarded_bytes_total"
            ),
            "0"
        );
    }

    #[test]
    fn registry_requests_count_per_source_and_outcome() {
        let m = Metrics::default();
        m.registry_request("ci", "ecr", Outcome::Served, Duration::from_millis(3));
        m.registry_request("ci", "ecr", Outcome::Served, Duration::from_millis(1));
        m.registry_request("ci", "client", Outcome::Served, Duration::from_millis(1));
        m.registry_request("fork", "none", Outcome::Denied, Duration::from_millis(1));
        let text = m.encode();
        let name = "irsa_secrets_registry_credential_requests_total";
        for (labels, n) in [
            (r#"listener="ci",source="ecr",outcome="served""#, "2"),
            (r#"listener="ci",source="client",outcome="served""#, "1"),
            (r#"listener="fork",source="none",outcome="denied""#, "1"),
        ] {
            assert_eq!(sample(&text, &format!("{name}{{{labels}}}")), n, "{labels}");
        }
        assert_eq!(
            sample(
                &text,
                "irsa_secrets_registry_credential_request_duration_seconds_count"
            ),
            "4"
        );
    }

    #[test]
    fn the_expiry_gauge_holds_the_latest_time_left_per_listener_and_source() {
        let m = Metrics::default();
        m.expiry("ci", "irsa", 3600.0);
        m.expiry("ci", "irsa", 120.5);
        m.expiry("ci", "sts", -5.0);
        m.expiry("gpu", "irsa", 60.0);
        let text = m.encode();
        let expiry = "irsa_secrets_expiry_seconds";
        for (labels, seconds) in [
            (r#"listener="ci",source="irsa""#, 120.5),
            (r#"listener="ci",source="sts""#, -5.0),
            (r#"listener="gpu",source="irsa""#, 60.0),
        ] {
            let got: f64 = sample(&text, &format!("{expiry}{{{labels}}}"))
                .parse()
                .unwrap();
            assert_eq!(got, seconds, "{labels}");
        }
    }

    #[test]
    fn upstream_errors_count_per_listener() {
        let m = Metrics::default();
        m.upstream_error("ci");
        m.upstream_error("ci");
        m.upstream_error("gpu");
        let text = m.encode();
        let errors = "irsa_secrets_upstream_errors_total";
        assert_eq!(sample(&text, &format!(r#"{errors}{{listener="ci"}}"#)), "2");
        assert_eq!(
            sample(&text, &format!(r#"{errors}{{listener="gpu"}}"#)),
            "1"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// A probe server on a loopback port, stopped when the returned sender is dropped.
    async fn probes(
        metrics: Metrics,
        checks: Checks,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            serve(listener, metrics, Arc::new(checks), shutdown)
                .await
                .unwrap();
        });
        (addr, stop)
    }

    /// GETs `path`: the status, the content type and the body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (StatusCode, String, String) {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let res = send.send_request(req).await.unwrap();
        let status = res.status();
        let content_type = res.headers()[http::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    fn text(status: StatusCode, body: &str) -> (StatusCode, String, String) {
        (status, "text/plain".to_string(), body.to_string())
    }

    #[tokio::test]
    async fn probes_answer_healthz_readyz_and_unknown_paths() {
        let mut checks = Checks::default();
        checks.add("listener ci", || async { Vec::new() });
        let (addr, _stop) = probes(Metrics::default(), checks).await;
        assert_eq!(get(addr, "/healthz").await, text(StatusCode::OK, "ok\n"));
        assert_eq!(get(addr, "/readyz").await, text(StatusCode::OK, "ready\n"));
        for path in ["/", "/metricsz", "/healthz/", "/readyz/x"] {
            assert_eq!(
                get(addr, path).await,
                text(StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n"),
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn readyz_is_503_with_every_reason_and_healthz_stays_ok() {
        let mut checks = Checks::default();
        checks.add("listener ci", || async {
            vec!["irsa: the token expired".to_string()]
        });
        checks.add("listener gpu", || async { Vec::new() });
        checks.add("listener arm", || async {
            vec!["the daemon is unreachable".to_string()]
        });
        let (addr, _stop) = probes(Metrics::default(), checks).await;
        assert_eq!(
            get(addr, "/readyz").await,
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready:\nlistener ci: irsa: the token expired\n\
                 listener arm: the daemon is unreachable\n"
            )
        );
        assert_eq!(get(addr, "/healthz").await, text(StatusCode::OK, "ok\n"));
    }

    /// `/metrics` runs the checks first, so gauges they refresh are current; a failing check
    /// does not turn it into an error.
    #[tokio::test]
    async fn metrics_are_openmetrics_text_refreshed_by_the_checks() {
        let m = Metrics::default();
        m.request("ci", "aws", Outcome::Served, Duration::from_millis(1));
        let mut checks = Checks::default();
        let refreshed = m.clone();
        checks.add("listener ci", move || {
            refreshed.expiry("ci", "irsa", 42.0);
            async { vec!["irsa: about to expire".to_string()] }
        });
        let (addr, _stop) = probes(m.clone(), checks).await;
        let (status, content_type, body) = get(addr, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            content_type,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert_eq!(body, m.encode());
        let expiry: f64 = sample(
            &body,
            r#"irsa_secrets_expiry_seconds{listener="ci",source="irsa"}"#,
        )
        .parse()
        .unwrap();
        assert_eq!(expiry, 42.0);
        assert_eq!(
            sample(
                &body,
                r#"irsa_secrets_secret_requests_total{listener="ci",id="aws",outcome="served"}"#
            ),
            "1"
        );
    }

    #[tokio::test]
    async fn serve_returns_once_shutdown_resolves() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let served = serve(
            listener,
            Metrics::default(),
            Arc::new(Checks::default()),
            std::future::ready(()),
        );
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("serve returns at shutdown")
            .unwrap();
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

    /// docs/metrics-health-audit.md names every family `/metrics` serves, as `irsa_secrets_NAME`
    /// or `_NAME` (the page's shorthand after the first).
    #[test]
    fn the_metrics_page_names_every_family() {
        let page = include_str!("../../docs/metrics-health-audit.md");
        let m = Metrics::default();
        let _open = m.session("ci");
        m.request("ci", "aws", Outcome::Served, Duration::from_millis(1));
        m.registry_request("ci", "ecr", Outcome::Served, Duration::from_millis(1));
        m.forwarded()(1);
        m.upstream_error("ci");
        m.expiry("ci", "irsa", 60.0);
        let text = m.encode();
        let families: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| match l.split_once(' ') {
                Some((name, "counter")) => format!("{name}_total"),
                Some((name, _)) => name.to_string(),
                None => l.to_string(),
            })
            .collect();
        assert_eq!(families.len(), 9, "{text}");
        for family in families {
            let short = family.trim_start_matches("irsa_secrets");
            assert!(
                page.contains(&format!("`{family}")) || page.contains(&format!("`{short}")),
                "docs/metrics-health-audit.md does not name {family}"
            );
        }
    }
}
