//! Fleet features through real builds on a private dockerd: per-listener policy from a config
//! file, a refused peer, the audit trail for every outcome (with no value in it), the metrics
//! endpoint, readiness that follows the token and the daemon, and `probe` on each listener
//! answering as that listener's builds are answered, with the daemon up and down. The
//! policy-and-audit test runs on each engine (tests/it/common/engine.rs).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::dockerd::{self, Dockerd, BASE_IMAGE};
use common::engine::Engine;
use common::{command, probe, probed, sha, token, Helper, Projected, Radioactive, ARN};

/// A build context on the base image with one `RUN run` step.
fn context(dir: &Path, name: &str, run: &str) -> std::path::PathBuf {
    dockerd::context(dir, name, &format!("FROM {BASE_IMAGE}\nRUN {run}\n"))
}

/// GET `path` from the metrics endpoint: (status code, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    common::http_exchange(addr, &request).expect("the metrics endpoint answers")
}

/// Parses the Prometheus text format into (name{labels}, value) pairs.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (
                name.to_string(),
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad value in {l}")),
            )
        })
        .collect()
}

fn metric(metrics: &[(String, f64)], name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .iter()
        .find(|(n, _)| n.starts_with(name) && labels.iter().all(|l| n.contains(l)))
        .map(|(_, v)| *v)
}

/// The fleet every test here runs against: a private dockerd, a projected token (the token
/// and the role ARN watched as radioactive) and one helper with four listeners from a config
/// file (trusted; untrusted with an allow list and one session; locked to uid 4242; canary
/// before a stand-in daemon socket the test controls), an audit trail and a metrics endpoint.
/// Fields drop in order: the helper, then the daemon, then the temp dir.
struct Fleet {
    helper: Helper,
    daemon: Dockerd,
    canary: Option<std::os::unix::net::UnixListener>,
    canary_path: PathBuf,
    projected: Projected,
    /// The token the helper serves.
    t: String,
    r: Radioactive,
    /// The metrics endpoint's address.
    addr: String,
    audit: PathBuf,
    /// Build contexts: a step that needs the token, one that needs the role ARN, one with an
    /// optional secret nobody has.
    token_step: PathBuf,
    arn_step: PathBuf,
    missing: PathBuf,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Fleet {
    /// The fleet, or None where the dockerd tests are skipped.
    fn start(engine: Engine) -> Option<Fleet> {
        if dockerd::skip() {
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix("irsa-policy-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        let r = Radioactive::default();
        let t = token(3600, -10);
        r.watch(t.as_bytes());
        r.watch(ARN.as_bytes());
        let projected = Projected::new(&dir.join("sa"), &t);
        let daemon = Dockerd::start_on(engine, &dir.join("d"));
        // A stand-in daemon for the readiness check of a fourth listener: a socket the test controls.
        let canary_path = dir.join("canary.sock");
        let canary = std::os::unix::net::UnixListener::bind(&canary_path).unwrap();
        let audit = dir.join("audit.jsonl");
        let config = dir.join("irsa-secrets.toml");
        let up = format!("unix://{}", daemon.socket.display());
        std::fs::write(
            &config,
            format!(
                r#"
audit_log = "{audit}"
metrics_listen = "127.0.0.1:0"

[[listener]]
name = "trusted"
listen = "unix://{dir}/trusted.sock"
upstream = "{up}"
identity = "process"

[[listener]]
name = "untrusted"
listen = "unix://{dir}/untrusted.sock"
upstream = "{up}"
identity = "process"
allow_id = ["aws-role-arn"]
max_sessions = 1

[[listener]]
name = "locked"
listen = "unix://{dir}/locked.sock"
upstream = "{up}"
identity = "process"
allow_uid = [4242]

[[listener]]
name = "canary"
listen = "unix://{dir}/canary-front.sock"
upstream = "unix://{canary}"
upstream_kind = "docker"
identity = "process"
"#,
                audit = audit.display(),
                dir = dir.display(),
                canary = canary_path.display(),
            ),
        )
        .unwrap();
        let mut cmd = command();
        cmd.args(["proxy", "--config"]).arg(&config);
        let tf = projected.token_path().display().to_string();
        let helper = Helper::spawn(
            cmd,
            dir.join("trusted.sock"),
            dir,
            &[("AWS_WEB_IDENTITY_TOKEN_FILE", &tf), ("AWS_ROLE_ARN", ARN)],
            &r,
        );
        let addr = common::eventually(
            Duration::from_secs(10),
            "a metrics address in the log",
            || {
                let log = helper.log_text();
                let line = log.lines().find(|l| l.contains("metrics and probes"))?;
                Some(
                    line.split("addr=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .to_string(),
                )
            },
        );

        let token_step = context(dir, "token", "--mount=type=secret,id=aws-web-identity-token,required sha256sum /run/secrets/aws-web-identity-token");
        let arn_step = context(
            dir,
            "arn",
            "--mount=type=secret,id=aws-role-arn,required sha256sum /run/secrets/aws-role-arn",
        );
        let missing = context(
            dir,
            "missing",
            "--mount=type=secret,id=nobody-has-this true",
        );
        Some(Fleet {
            helper,
            daemon,
            canary: Some(canary),
            canary_path,
            projected,
            t,
            r,
            addr,
            audit,
            token_step,
            arn_step,
            missing,
            dir: dir.to_path_buf(),
            _tmp: tmp,
        })
    }

    /// The socket of listener `name`.
    fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    /// A build of `ctx` through listener `name`: (success, output).
    fn build(&self, name: &str, ctx: &Path) -> (bool, String) {
        dockerd::build_with(self.daemon.engine, &self.sock(name), ctx, &self.r)
    }

    /// `probe IDS` on listener `name`: (success, output).
    fn probe(&self, name: &str, ids: &[&str]) -> (bool, String) {
        probe(&self.sock(name), ids, &self.r)
    }
}

engines!(
    builds_and_probes_are_answered_by_listener_policy_and_recorded_in_metrics_and_audit,
    past_max_sessions_a_second_session_is_refused_with_the_reason_and_probes_still_answer,
    readiness_follows_the_token_and_the_daemon,
    with_the_daemon_down_a_probe_answers_and_a_build_is_told_why
);

/// One test per engine, as the metrics and the audit trail checked at its end are the record of
/// the builds and probes before them: every outcome (served, denied, not found, a refused peer,
/// a source error) on the listeners that gave it.
fn builds_and_probes_are_answered_by_listener_policy_and_recorded_in_metrics_and_audit(
    engine: Engine,
) {
    let Some(mut f) = Fleet::start(engine) else {
        return;
    };
    let (t, addr) = (f.t.clone(), f.addr.clone());

    // Per-listener policy through real builds.
    let (ok, token_build) = f.build("trusted", &f.token_step);
    assert!(ok, "the trusted listener serves the token:\n{token_build}");
    let (ok, out) = f.build("untrusted", &f.token_step);
    assert!(
        !ok && dockerd::says_secret_not_found(&out, "aws-web-identity-token"),
        "the untrusted listener does not serve the token:\n{out}"
    );
    let (ok, out) = f.build("untrusted", &f.arn_step);
    assert!(ok, "the untrusted listener serves what it allows:\n{out}");
    let (ok, out) = f.build("trusted", &f.missing);
    assert!(ok, "an optional secret nobody has is absent:\n{out}");

    // A probe on each listener gets what that listener's builds get: the value the trusted
    // build's step hashed, the untrusted listener's refusal word for word, the refused peer's
    // reason; and it counts in the metrics as a request.
    let requests = |listener: &str, id: &str| {
        let labels = [
            format!(r#"listener="{listener}""#),
            format!(r#"id="{id}""#),
            r#"outcome="served""#.to_string(),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let m = parse_metrics(&get(&addr, "/metrics").1);
        metric(&m, "irsa_secrets_secret_requests_total", &labels).unwrap_or(0.0)
    };
    let before = requests("trusted", "aws-role-arn");
    let (ok, out) = f.probe("trusted", &["aws-web-identity-token", "aws-role-arn"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&probed("aws-web-identity-token", t.as_bytes())),
        "{out}"
    );
    assert!(
        out.contains(&probed("aws-role-arn", ARN.as_bytes())),
        "{out}"
    );
    let hashed = format!("{}  /run/secrets/aws-web-identity-token", sha(t.as_bytes()));
    assert!(token_build.contains(&hashed), "{token_build}");
    assert_eq!(requests("trusted", "aws-role-arn"), before + 1.0);
    let (ok, out) = f.probe("untrusted", &["aws-web-identity-token"]);
    assert!(
        !ok && out
            .contains("aws-web-identity-token: NotFound: secret aws-web-identity-token not found"),
        "the untrusted listener refuses the token to a probe as to a build:\n{out}"
    );
    let (ok, out) = f.probe("untrusted", &["aws-role-arn"]);
    assert!(
        ok && out.contains(&probed("aws-role-arn", ARN.as_bytes())),
        "{out}"
    );
    let (ok, out) = f.probe("locked", &["aws-role-arn"]);
    assert!(
        !ok && out.contains(
            "aws-role-arn: PermissionDenied: irsa-secrets: uid 0 gid 0 may not use this socket"
        ),
        "a refused peer's probe is refused as its builds are:\n{out}"
    );

    // A refused peer: root is not uid 4242.
    let (ok, out) = f.build("locked", &f.arn_step);
    assert!(
        !ok && out.contains("may not use this socket"),
        "a refused peer is told why:\n{out}"
    );

    // A source error: an expired token fails the step with the reason.
    let expired = token(-60, -7200);
    f.r.watch(expired.as_bytes());
    f.projected.swap(&expired);
    let (ok, out) = f.build("trusted", &f.token_step);
    assert!(!ok && out.contains("expired at"), "{out}");
    f.projected.swap(&t);
    let (code, body) = get(&addr, "/readyz");
    assert_eq!(code, 200, "ready again with a valid token: {body}");

    // The metrics tell the same story.
    let (code, text) = get(&addr, "/metrics");
    assert_eq!(code, 200);
    let m = parse_metrics(&text);
    let served = metric(
        &m,
        "irsa_secrets_secret_requests_total",
        &[
            r#"listener="trusted""#,
            r#"id="aws-web-identity-token""#,
            r#"outcome="served""#,
        ],
    );
    assert!(served >= Some(1.0), "{text}");
    let denied = metric(
        &m,
        "irsa_secrets_secret_requests_total",
        &[r#"listener="untrusted""#, r#"outcome="denied""#],
    );
    assert!(denied >= Some(1.0), "{text}");
    assert!(
        metric(
            &m,
            "irsa_secrets_secret_requests_total",
            &[r#"outcome="error""#]
        ) >= Some(1.0),
        "{text}"
    );
    assert!(
        metric(
            &m,
            "irsa_secrets_sessions_total",
            &[r#"listener="trusted""#]
        ) >= Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&m, "irsa_secrets_sessions_open", &[r#"listener="trusted""#]),
        Some(0.0),
        "{text}"
    );
    let expiry = metric(
        &m,
        "irsa_secrets_expiry_seconds",
        &[r#"listener="trusted""#, r#"source="irsa""#],
    )
    .unwrap();
    assert!(expiry > 3000.0 && expiry <= 3600.0, "{text}");
    assert!(
        metric(&m, "irsa_secrets_forwarded_bytes_total", &[]) > Some(100.0),
        "the build contexts passed: {text}"
    );
    assert!(
        metric(
            &m,
            "irsa_secrets_secret_request_duration_seconds_count",
            &[]
        ) >= Some(5.0),
        "{text}"
    );

    // The audit trail: every outcome, sessions with durations, the refused peer; no value.
    let trail = std::fs::read(&f.audit).unwrap();
    f.r.assert_absent("the audit log", &trail);
    let records: Vec<serde_json::Value> = trail
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let find = |event: &str, outcome: Option<&str>, listener: &str| {
        records.iter().find(|r| {
            r["event"] == event
                && r["listener"] == listener
                && outcome.is_none_or(|o| r["outcome"] == o)
                && r.get("probe").is_none()
        })
    };
    let served = find("secret", Some("served"), "trusted").expect("a served record");
    assert_eq!(served["id"], "aws-web-identity-token");
    assert_eq!(served["source"], "irsa");
    assert_eq!(served["fingerprint"].as_str().unwrap().len(), 32);
    assert!(served["session"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(served["peer"]["uid"], 0);
    // Probes are audited as builds are, marked `probe` and without a session; the probe's
    // fingerprint is the build's, so it got the same value.
    let probes: Vec<_> = records.iter().filter(|r| r["probe"] == true).collect();
    let token_probe = probes
        .iter()
        .find(|r| r["listener"] == "trusted" && r["id"] == "aws-web-identity-token")
        .expect("a probe record");
    assert_eq!(token_probe["event"], "secret");
    assert_eq!(token_probe["outcome"], "served");
    assert_eq!(token_probe["source"], "irsa");
    assert_eq!(token_probe["fingerprint"], served["fingerprint"]);
    assert_eq!(token_probe["peer"]["uid"], 0);
    assert!(token_probe.get("session").is_none(), "{token_probe}");
    assert!(probes.iter().any(|r| r["listener"] == "untrusted"
        && r["id"] == "aws-web-identity-token"
        && r["outcome"] == "denied"
        && r["source"] == "irsa"));
    assert!(
        records
            .iter()
            .filter(|r| r["session"].is_string())
            .all(|r| r.get("probe").is_none()),
        "a build's records carry no probe mark"
    );
    assert!(find("secret", Some("denied"), "untrusted").is_some());
    assert!(find("secret", Some("error"), "trusted")
        .is_some_and(|r| r["error"].as_str().unwrap().contains("expired")));
    assert!(records.iter().any(|r| r["event"] == "secret"
        && r["outcome"] == "not_found"
        && r["id"] == "nobody-has-this"));
    assert!(find("session_start", None, "trusted").is_some());
    assert!(find("session_end", None, "trusted").is_some_and(|r| r["seconds"].as_f64().is_some()));
    assert!(find("connection_denied", None, "locked").is_some_and(|r| r["peer"]["uid"] == 0));
    assert!(
        f.helper.log_text().contains("which nobody serves"),
        "the silent required=false case is a warning"
    );
}

fn past_max_sessions_a_second_session_is_refused_with_the_reason_and_probes_still_answer(
    engine: Engine,
) {
    let Some(f) = Fleet::start(engine) else {
        return;
    };
    // max_sessions is 1 on the untrusted listener.
    let long = context(
        &f.dir,
        "long",
        "--mount=type=secret,id=aws-role-arn,required sleep 4",
    );
    let joined = || f.helper.log_text().matches("build session joined").count();
    let before = joined();
    let first = dockerd::cli_on(engine, &f.sock("untrusted"))
        .args(["build", "--network=none", "--progress=plain", "--no-cache"])
        .arg(&long)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::eventually(
        Duration::from_secs(60),
        "the first build's session joins",
        || (joined() > before).then_some(()),
    );
    // A probe is no session: a full listener still answers it.
    let (ok, out) = f.probe("untrusted", &["aws-role-arn"]);
    assert!(
        ok && out.contains(&probed("aws-role-arn", ARN.as_bytes())),
        "{out}"
    );
    let (ok, out) = f.build("untrusted", &f.arn_step);
    assert!(!ok, "a session past the limit is refused:\n{out}");
    // The docker CLI reports the status code only ("unable to upgrade to h2c, received 429");
    // the helper's log says why.
    assert!(out.contains("429"), "{out}");
    assert!(f.helper.log_text().contains("max_sessions 1 full"));
    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
}

fn readiness_follows_the_token_and_the_daemon(engine: Engine) {
    let Some(mut f) = Fleet::start(engine) else {
        return;
    };
    let addr = f.addr.clone();
    // The token...
    let expired = token(-60, -7200);
    f.r.watch(expired.as_bytes());
    f.projected.swap(&expired);
    let (code, body) = get(&addr, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("expired"), "{body}");
    let t = f.t.clone();
    f.projected.swap(&t);
    let (code, body) = get(&addr, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(&addr, "/healthz").0, 200);

    // ...and the daemon.
    drop(f.canary.take());
    std::fs::remove_file(&f.canary_path).unwrap();
    let (code, body) = get(&addr, "/readyz");
    assert_eq!(code, 503);
    assert!(
        body.contains("canary") && body.contains("unreachable"),
        "{body}"
    );
}

/// The identity does not need the daemon: with it down a probe still answers, and a build on
/// the same socket is told the daemon does not answer.
fn with_the_daemon_down_a_probe_answers_and_a_build_is_told_why(engine: Engine) {
    let Some(mut f) = Fleet::start(engine) else {
        return;
    };
    f.daemon.stop();
    let (ok, out) = f.probe("trusted", &["aws-role-arn"]);
    assert!(
        ok && out.contains(&probed("aws-role-arn", ARN.as_bytes())),
        "{out}"
    );
    let (ok, out) = f.build("trusted", &f.arn_step);
    assert!(!ok && out.contains("cannot be reached"), "{out}");
}
