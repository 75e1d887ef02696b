//! `serve --sts` end to end: the real binary exchanging the token with moto (credentials that
//! really sign S3 requests) and with a scripted fake STS (every error, expiry, outages, hangs,
//! throttling, concurrency). Every credential any STS issued is watched as radioactive.

use crate::common;

use std::time::{Duration, Instant};

use common::fake_sts::{FakeSts, Reply};
use common::moto::Moto;
use common::{command, run, sts_build, token, Helper, Radioactive, ARN, CREDENTIAL_IDS};
use tonic::Code;

/// A token file with a fresh token, watched.
fn token_file(dir: &std::path::Path, r: &Radioactive) -> std::path::PathBuf {
    let t = token(3600, -10);
    r.watch(t.as_bytes());
    let file = dir.join("token");
    std::fs::write(&file, &t).unwrap();
    file
}

/// `serve --sts` against `endpoint`, plus `extra` flags.
fn start(dir: &std::path::Path, endpoint: &str, extra: &[&str], r: &Radioactive) -> Helper {
    let file = token_file(dir, r);
    let mut args = vec![
        "--sts",
        "--sts-endpoint",
        endpoint,
        "--region",
        "us-east-1",
        "--token-file",
    ];
    let file = file.display().to_string();
    args.push(&file);
    args.extend(["--role-arn", ARN]);
    args.extend(extra);
    Helper::serve(dir, &args, &[], r)
}

/// Watches everything the fake issued (also what was never served).
fn watch_issued(fake: &FakeSts, r: &Radioactive) {
    for c in fake.issued() {
        r.watch(c.secret_access_key.as_bytes());
        r.watch(c.session_token.as_bytes());
        r.watch(c.access_key_id.as_bytes());
    }
}

/// Parses a shared-credentials file's `[default]` profile.
fn parse_ini(text: &str) -> std::collections::HashMap<String, String> {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("[default]"));
    lines
        .map(|l| {
            let (k, v) = l.split_once(" = ").expect("key = value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_issued_credentials_are_served_and_sign_s3_requests() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let moto = Moto::start(dir.path());
    moto.create_role_with_s3_access("ci-builder").await;
    moto.create_bucket("build-cache").await;
    let h = start(
        dir.path(),
        &moto.url,
        &["--role-session-name", "ci-{unix_time}", "--duration", "30m"],
        &r,
    );
    let mut c = h.client().await;
    let file = h.get(&mut c, "aws-credentials").await.unwrap();
    let ini = parse_ini(std::str::from_utf8(file.expose()).unwrap());
    for id in &CREDENTIAL_IDS[..4] {
        h.get(&mut c, id).await.unwrap();
    }
    let key_id = h.get(&mut c, "aws-access-key-id").await.unwrap();
    let secret = h.get(&mut c, "aws-secret-access-key").await.unwrap();
    let session = h.get(&mut c, "aws-session-token").await.unwrap();
    let text =
        |v: &irsa_secrets::secret::SecretValue| String::from_utf8(v.expose().to_vec()).unwrap();
    assert_eq!(ini["aws_access_key_id"], text(&key_id));
    assert_eq!(ini["aws_secret_access_key"], text(&secret));
    assert_eq!(ini["aws_session_token"], text(&session));
    assert!(text(&key_id).starts_with("ASIA"));
    // The expiry is no credential (and is logged): fetched unwatched.
    let expiration = common::get_secret(&mut c, "aws-credentials-expiration")
        .await
        .unwrap();
    let expiration = text(&expiration);
    humantime::parse_rfc3339(&expiration).expect("RFC 3339 expiration");

    // Exactly one exchange, and it issued exactly what was served.
    let issued = moto.issued().await;
    for i in &issued {
        r.watch(i.secret_access_key.as_bytes());
        r.watch(i.session_token.as_bytes());
    }
    assert_eq!(issued.len(), 1, "one STS call for all requests");
    assert_eq!(issued[0].access_key_id, text(&key_id));
    assert_eq!(issued[0].secret_access_key, text(&secret));
    assert_eq!(issued[0].session_token, text(&session));
    assert!(
        issued[0].session_name.starts_with("ci-1"),
        "{}",
        issued[0].session_name
    );

    // The build-step script parses the served file and the build check recognizes moto's keys.
    let served = dir.path().join("served-credentials");
    std::fs::write(&served, file.expose()).unwrap();
    let out = run(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(sts_build::script(&served.display().to_string())),
        &r,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sts_build::check_credentials_file(&String::from_utf8_lossy(&out.stdout), &issued[0]);

    // With enforcement on, the served credentials sign S3 requests moto accepts...
    moto.enforce_auth().await;
    let creds = (
        ini["aws_access_key_id"].as_str(),
        ini["aws_secret_access_key"].as_str(),
        ini["aws_session_token"].as_str(),
    );
    let put = moto
        .s3("PUT", "/build-cache/ci/object", b"cached bytes", creds)
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    let get = moto.s3("GET", "/build-cache/ci/object", b"", creds).await;
    assert_eq!(
        (get.status, &get.body[..]),
        (200, &b"cached bytes"[..]),
        "{}",
        get.text()
    );
    // ...and a wrong secret key or session token is refused, so the check above can fail.
    let wrong_secret = "x".repeat(40);
    let bad = moto
        .s3(
            "GET",
            "/build-cache/ci/object",
            b"",
            (creds.0, &wrong_secret, creds.2),
        )
        .await;
    assert_eq!(bad.status, 403, "{}", bad.text());
    assert!(
        bad.text().contains("SignatureDoesNotMatch"),
        "{}",
        bad.text()
    );
    let bad = moto
        .s3(
            "GET",
            "/build-cache/ci/object",
            b"",
            (creds.0, creds.1, "not-the-token"),
        )
        .await;
    assert!(bad.text().contains("InvalidToken"), "{}", bad.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_hides_the_raw_identity_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let fake = FakeSts::start(Reply::ok());
    let h = start(dir.path(), &fake.url, &[], &r);
    let mut c = h.client().await;
    for id in ["aws-web-identity-token", "aws-role-arn"] {
        assert_eq!(
            h.get(&mut c, id).await.unwrap_err().code(),
            Code::NotFound,
            "{id}"
        );
    }
    // The region is no credential (and the SDK logs it): fetched unwatched.
    assert_eq!(
        common::get_secret(&mut c, "aws-region")
            .await
            .unwrap()
            .expose(),
        b"us-east-1"
    );
    assert!(h.get(&mut c, "aws-session-token").await.is_ok());
    watch_issued(&fake, &r);
    drop(h);

    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &fake.url, &["--serve-identity"], &r);
    let mut c = h.client().await;
    assert_eq!(
        h.get(&mut c, "aws-role-arn").await.unwrap().expose(),
        ARN.as_bytes()
    );
    assert!(h.get(&mut c, "aws-web-identity-token").await.unwrap().len() > 100);
    assert!(h.get(&mut c, "aws-credentials").await.is_ok());
    watch_issued(&fake, &r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scope_reaches_sts_and_bad_scopes_fail_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let fake = FakeSts::start(Reply::ok());
    let policy = dir.path().join("policy.json");
    let policy_text = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::cache/ci/*"}]}"#;
    std::fs::write(&policy, policy_text).unwrap();
    let policy_arg = policy.display().to_string();
    let h = start(
        dir.path(),
        &fake.url,
        &[
            "--session-policy",
            &policy_arg,
            "--policy-arn",
            "arn:aws:iam::aws:policy/ReadOnlyAccess",
            "--policy-arn",
            "arn:aws:iam::123456789012:policy/cache-rw",
            "--duration",
            "30m",
            "--role-session-name",
            "build-{unix_time}",
        ],
        &r,
    );
    let mut c = h.client().await;
    h.get(&mut c, "aws-credentials").await.unwrap();
    watch_issued(&fake, &r);
    let req = &fake.requests()[0];
    assert_eq!(req["Action"], "AssumeRoleWithWebIdentity");
    assert_eq!(req["RoleArn"], ARN);
    assert_eq!(req["Policy"], policy_text);
    assert_eq!(
        req["PolicyArns.member.1.arn"],
        "arn:aws:iam::aws:policy/ReadOnlyAccess"
    );
    assert_eq!(
        req["PolicyArns.member.2.arn"],
        "arn:aws:iam::123456789012:policy/cache-rw"
    );
    assert_eq!(req["DurationSeconds"], "1800");
    assert!(
        req["RoleSessionName"].starts_with("build-1"),
        "{}",
        req["RoleSessionName"]
    );
    assert!(!req.contains_key("ProviderId"));
    assert!(h.log_text().contains("credentials issued"));

    // Bad scopes are refused before anything is served.
    let big = dir.path().join("big.json");
    std::fs::write(&big, format!("\"{}\"", "a".repeat(2100))).unwrap();
    let not_json = dir.path().join("bad.json");
    std::fs::write(&not_json, "{\"Version\": ").unwrap();
    let file = token_file(dir.path(), &r).display().to_string();
    // `serve --sts` with the identity and the given flags; its stderr once it has refused.
    let refused = |flags: &[&str]| {
        let out = run(
            command()
                .args(["serve", "--listen", "unix:///tmp/never.sock", "--sts"])
                .args(["--token-file", &file, "--role-arn", ARN])
                .args(flags),
            &r,
        );
        assert!(!out.status.success(), "{flags:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let endpoint = ["--region", "us-east-1", "--sts-endpoint", &fake.url];
    for (flags, why) in [
        (
            vec!["--session-policy", big.to_str().unwrap()],
            "STS accepts 1 to 2048",
        ),
        (
            vec!["--session-policy", not_json.to_str().unwrap()],
            "not valid JSON",
        ),
        (
            vec!["--policy-arn", "arn:aws:iam::aws:role/x"],
            "is not a policy",
        ),
        (vec!["--duration", "14m"], "900 to 43200"),
        (vec!["--duration", "13h"], "900 to 43200"),
        (
            vec!["--role-session-name", "has space"],
            "STS accepts letters",
        ),
        (
            vec!["--role-session-name", "x-{user}"],
            "unknown placeholder",
        ),
    ] {
        let err = refused(&[&endpoint[..], &flags[..]].concat());
        assert!(err.contains(why), "{flags:?}: {err}");
    }
    let eleven: Vec<String> = (0..11)
        .flat_map(|i| {
            [
                "--policy-arn".to_string(),
                format!("arn:aws:iam::aws:policy/P{i}"),
            ]
        })
        .collect();
    let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
    assert!(refused(&[&endpoint[..], &eleven[..]].concat()).contains("at most 10"));
    assert!(refused(&[]).contains("needs a region"));
    assert_eq!(fake.calls(), 1, "no exchange for refused configurations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sts_error_says_what_went_wrong_and_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let fake = FakeSts::start(Reply::ok());
    let h = start(dir.path(), &fake.url, &[], &r);
    let mut c = h.client().await;
    let cases = [
        (
            "ExpiredTokenException",
            Code::FailedPrecondition,
            "kubelet rotates",
        ),
        (
            "InvalidIdentityToken",
            Code::FailedPrecondition,
            "IAM OIDC identity provider",
        ),
        (
            "IDPRejectedClaim",
            Code::PermissionDenied,
            ":sub = system:serviceaccount:ci:runner",
        ),
        ("AccessDenied", Code::PermissionDenied, "trust policy"),
        (
            "MalformedPolicyDocument",
            Code::FailedPrecondition,
            "--session-policy",
        ),
        (
            "PackedPolicyTooLarge",
            Code::FailedPrecondition,
            "fewer --policy-arn",
        ),
        (
            "RegionDisabledException",
            Code::PermissionDenied,
            "not activated in us-east-1",
        ),
        (
            "ValidationError",
            Code::FailedPrecondition,
            "maximum session duration",
        ),
    ];
    for (code, grpc, hint) in cases {
        let before = fake.calls();
        fake.push([Reply::error(code)]);
        let err = h.get(&mut c, "aws-credentials").await.unwrap_err();
        assert_eq!(err.code(), grpc, "{code}: {}", err.message());
        assert!(
            err.message().contains(code) && err.message().contains(hint),
            "{code}: {}",
            err.message()
        );
        assert!(
            err.message().contains("fake STS says"),
            "quotes STS: {}",
            err.message()
        );
        assert_eq!(fake.calls(), before + 1, "{code} is not retried");
    }

    // Not XML at all: not retried, and the message points at the endpoint.
    let before = fake.calls();
    fake.push([Reply::BadXml]);
    let err = h.get(&mut c, "aws-credentials").await.unwrap_err();
    assert_eq!(fake.calls(), before + 1);
    assert!(err.message().contains(&fake.url), "{}", err.message());

    // An STS message that echoes the token is quoted without it.
    let t = std::fs::read_to_string(dir.path().join("token")).unwrap();
    fake.push([Reply::Error {
        status: 400,
        code: "InvalidIdentityToken",
        message: format!("bad token {t}"),
    }]);
    let err = h.get(&mut c, "aws-credentials").await.unwrap_err();
    assert!(
        err.message().contains("bad token [redacted]"),
        "{}",
        err.message()
    );

    // IdP unreachable is transient: retried, then Unavailable with the count.
    let before = fake.calls();
    fake.push(vec![Reply::error("IDPCommunicationError"); 3]);
    let err = h.get(&mut c, "aws-credentials").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(
        err.message().contains("failed 3 times"),
        "{}",
        err.message()
    );
    assert_eq!(fake.calls(), before + 3);

    // A bad token never reaches STS.
    let before = fake.calls();
    std::fs::write(dir.path().join("token"), token(-10, -3600)).unwrap();
    let err = h.get(&mut c, "aws-credentials").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("expired at"), "{}", err.message());
    assert_eq!(fake.calls(), before);
    watch_issued(&fake, &r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_are_retried_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let fake = FakeSts::start(Reply::ok());
    fake.push([
        Reply::error("Throttling"),
        Reply::error("ServiceUnavailable"),
    ]);
    let h = start(dir.path(), &fake.url, &[], &r);
    let mut c = h.client().await;
    let started = Instant::now();
    let key = h.get(&mut c, "aws-access-key-id").await.unwrap();
    watch_issued(&fake, &r);
    assert_eq!(fake.calls(), 3, "two failures, then success");
    assert_eq!(key.expose(), fake.issued()[0].access_key_id.as_bytes());
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "backoff waited: {:?}",
        started.elapsed()
    );
    assert_eq!(h.log_text().matches("STS call failed; retrying").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_are_awaited_and_a_hanging_sts_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let fake = FakeSts::start(Reply::Hang);
    fake.push([Reply::Issue {
        expires_in: Duration::from_secs(3600),
        delay: Duration::from_millis(1500),
    }]);
    let h = start(dir.path(), &fake.url, &[], &r);
    let mut c = h.client().await;
    assert!(
        h.get(&mut c, "aws-session-token").await.is_ok(),
        "1.5 s is within the attempt timeout"
    );
    watch_issued(&fake, &r);
    drop(h);

    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), &fake.url, &[], &r);
    let mut c = h.client().await;
    let before = fake.calls();
    let started = Instant::now();
    let err = h.get(&mut c, "aws-session-token").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(
        err.message().contains("no answer within 3s"),
        "{}",
        err.message()
    );
    assert_eq!(fake.calls() - before, 3);
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(12),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_simultaneous_requests_cause_one_sts_call() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let fake = FakeSts::start(Reply::Issue {
        expires_in: Duration::from_secs(3600),
        delay: Duration::from_millis(500),
    });
    let h = start(dir.path(), &fake.url, &[], &r);
    let c = h.client().await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let mut c = c.clone();
        let id = CREDENTIAL_IDS[i % CREDENTIAL_IDS.len()];
        set.spawn(async move { (id, common::get_secret(&mut c, id).await) });
    }
    let mut keys = std::collections::HashSet::new();
    let mut n = 0;
    while let Some(joined) = set.join_next().await {
        let (id, value) = joined.unwrap();
        let value = value.unwrap();
        if id != "aws-credentials-expiration" {
            r.watch(value.expose());
        }
        if id == "aws-access-key-id" {
            keys.insert(value.expose().to_vec());
        }
        n += 1;
    }
    watch_issued(&fake, &r);
    assert_eq!(n, 200);
    assert_eq!(fake.calls(), 1, "exactly one STS call");
    assert_eq!(keys.len(), 1);
}

/// The timing of refreshes (cached, refreshed ahead of expiry in the background, served through
/// an outage until the margin) is unit-tested under paused time in `source::credentials`. End to
/// end, without waiting on a refresh: `--expiry-margin` reaches the cache (credentials that
/// expire within it are asked for again on every request), and an outage once the cached ones
/// are within it reaches the build as Unavailable naming the margin and STS's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_within_the_margin_are_asked_for_on_every_request_and_not_served_in_an_outage()
{
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    // 30 s credentials with a 1 min margin: due for refresh, and unusable in an outage, at once.
    let fake = FakeSts::start(Reply::expiring(Duration::from_secs(30)));
    let h = start(dir.path(), &fake.url, &["--expiry-margin", "1m"], &r);
    let mut c = h.client().await;
    let key =
        |v: irsa_secrets::secret::SecretValue| String::from_utf8(v.expose().to_vec()).unwrap();
    let first = key(h.get(&mut c, "aws-access-key-id").await.unwrap());
    let second = key(h.get(&mut c, "aws-access-key-id").await.unwrap());
    assert_ne!(
        first, second,
        "within the margin: fresh credentials each time"
    );
    assert_eq!(fake.calls(), 2);
    watch_issued(&fake, &r);
    assert!(
        h.log_text()
            .contains("the issuer gave credentials that expire within the margin"),
        "{}",
        h.log_text()
    );

    // STS goes down: the cached credentials are within the margin, so a clear error.
    fake.set_default(Reply::error("ServiceUnavailable"));
    let err = h.get(&mut c, "aws-access-key-id").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(
        err.message().contains("within the 1m margin")
            && err.message().contains("ServiceUnavailable"),
        "{}",
        err.message()
    );
    watch_issued(&fake, &r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_exchanges_and_shows_the_role_and_expiry_never_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let fake = FakeSts::start(Reply::ok());
    let file = token_file(dir.path(), &r).display().to_string();
    let doctor = |r: &Radioactive| {
        run(
            command()
                .args([
                    "doctor",
                    "--sts",
                    "--region",
                    "us-east-1",
                    "--sts-endpoint",
                    &fake.url,
                ])
                .args([
                    "--token-file",
                    &file,
                    "--role-arn",
                    ARN,
                    "--role-session-name",
                    "doc-check",
                ]),
            r,
        )
    };
    // The keys are only known after the run, so check the output afterwards too.
    let out = doctor(&r);
    watch_issued(&fake, &r);
    r.assert_absent("doctor's stdout", &out.stdout);
    r.assert_absent("doctor's stderr", &out.stderr);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("STS issued credentials for arn:aws:sts::123456789012:assumed-role/ci-builder/doc-check expiring at"),
        "{text}"
    );
    fake.push([Reply::error("AccessDenied")]);
    let out = doctor(&r);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  the STS exchange failed: STS answered AccessDenied"),
        "{text}"
    );
}
