//! The credential identities end to end: the real binary's `serve` pointed at hand-written fakes
//! of the EKS Pod Identity agent, an ECS credentials endpoint, IMDSv2 and GitHub's OIDC token
//! endpoint, all on 127.0.0.1 (never 169.254.x).

use crate::common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::fake_endpoints::{FakeCredentials, FakeEndpoint, Reply, Request};
use common::{command, run, token, Helper, Radioactive, ARN, CREDENTIAL_IDS};

/// A command for the binary with no AWS or GitHub Actions setting from this machine: only
/// what the test passes reaches it.
fn isolated() -> Command {
    let mut cmd = command();
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("AWS_") || n.starts_with("ACTIONS_") || n.starts_with("IRSA_SECRETS_") {
            cmd.env_remove(&name);
        }
    }
    cmd.env("RUST_LOG", "trace");
    cmd
}

/// `serve` on DIR/helper.sock with `args` and exactly the identity settings in `env`.
fn serve(dir: &Path, args: &[&str], env: &[(&str, String)], r: &Radioactive) -> Helper {
    launch(dir, "serve", args, env, r)
}

/// `proxy` on DIR/helper.sock like [`serve`], in front of the daemon at `upstream` (secrets are
/// answered also without one there), with its audit trail in DIR/audit.jsonl.
fn proxy(dir: &Path, upstream: &Path, env: &[(&str, String)], r: &Radioactive) -> Helper {
    let upstream = format!("unix://{}", upstream.display());
    let audit = dir.join("audit.jsonl").display().to_string();
    let args = ["--upstream", &upstream, "--audit-log", &audit];
    launch(dir, "proxy", &args, env, r)
}

/// `irsa-secrets COMMAND --listen unix://DIR/helper.sock ARGS...` with only `env`'s settings.
fn launch(
    dir: &Path,
    command: &str,
    args: &[&str],
    env: &[(&str, String)],
    r: &Radioactive,
) -> Helper {
    let socket = dir.join("helper.sock");
    let mut cmd = isolated();
    cmd.arg(command)
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()))
        .args(args);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Helper::spawn(cmd, socket, dir, &env, r)
}

/// Watches the values of `c` as radioactive.
fn watch(r: &Radioactive, c: &FakeCredentials) {
    for v in [&c.access_key_id, &c.secret_access_key, &c.token] {
        r.watch(v.as_bytes());
    }
}

/// Checks that the helper serves `c` under the five ids.
async fn assert_serves(h: &Helper, c: &FakeCredentials) {
    let mut client = h.client().await;
    let mut got = Vec::new();
    for id in CREDENTIAL_IDS {
        // The expiry is no secret (the log names it): it is not watched.
        let v = if id == "aws-credentials-expiration" {
            common::get_secret(&mut client, id).await
        } else {
            h.get(&mut client, id).await
        };
        let v = v.unwrap_or_else(|e| panic!("{id}: {e:?}\n{}", common::tail(&h.log_text())));
        got.push(v.expose().to_vec());
    }
    let file = format!(
        "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\n",
        c.access_key_id, c.secret_access_key, c.token
    );
    let want: [&[u8]; 5] = [
        file.as_bytes(),
        c.access_key_id.as_bytes(),
        c.secret_access_key.as_bytes(),
        c.token.as_bytes(),
        c.expiration.as_bytes(),
    ];
    for ((id, got), want) in CREDENTIAL_IDS.iter().zip(&got).zip(want) {
        assert!(got == want, "{id} is not what the fake issued");
    }
}

/// The error message for `id`, which must fail.
async fn error_for(h: &Helper, id: &str) -> String {
    let mut client = h.client().await;
    match h.get(&mut client, id).await {
        Ok(_) => panic!("{id} was served"),
        Err(e) => e.message().to_string(),
    }
}

/// For each `(what, reply, says)`: once `install` makes the endpoint answer `reply`, reading
/// `id` fails with an error naming the endpoint `base` and holding `says`.
async fn faults_are_named<const N: usize>(
    h: &Helper,
    id: &str,
    base: &str,
    cases: [(&str, Reply, &str); N],
    install: impl Fn(Reply),
) {
    for (what, reply, says) in cases {
        install(reply);
        let err = error_for(h, id).await;
        assert!(err.contains(says) && err.contains(base), "{what}: {err}");
    }
}

/// A Pod Identity agent that answers `reply` to requests bearing the token file's current
/// content, and 401 to any other.
fn agent(
    token_file: &Path,
    reply: impl Fn() -> Reply + Send + Sync + 'static,
) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    let token_file = token_file.to_path_buf();
    move |req: &Request| {
        let want = std::fs::read_to_string(&token_file).unwrap();
        if req.method != "GET" || req.path() != "/v1/credentials" {
            return Reply::Status(404, "{}".into());
        }
        if req.header("authorization") != Some(want.as_str()) {
            return Reply::Status(401, r#"{"message":"bad token"}"#.into());
        }
        reply()
    }
}

/// A Pod Identity setup in DIR: the token file (watched) and the helper's environment.
fn pod_identity_env(
    dir: &Path,
    fake: &FakeEndpoint,
    r: &Radioactive,
) -> Vec<(&'static str, String)> {
    let token_file = dir.join("eks-pod-identity-token");
    let t = token(3600, -10);
    r.watch(t.as_bytes());
    std::fs::write(&token_file, &t).unwrap();
    vec![
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{}/v1/credentials", fake.base()),
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            token_file.display().to_string(),
        ),
    ]
}

/// When the cache refreshes (at about 70% of the lifetime) is unit-tested under paused time in
/// `source::credentials`; here, without waiting for it: concurrent reads make one agent call
/// and are cached, and every call to the agent sends the token file as it is then (the kubelet
/// rotates it), shown with credentials within the expiry margin, which are asked for again on
/// every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_identity_is_served_cached_in_one_flight_and_follows_the_token_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let token_file = dir.path().join("eks-pod-identity-token");
    let current = Arc::new(std::sync::Mutex::new(FakeCredentials::new(3600)));
    watch(&r, &current.lock().unwrap());
    let fake = {
        let current = current.clone();
        // Slow enough that the concurrent reads below all ask while the first call runs.
        FakeEndpoint::start(agent(&token_file, move || {
            Reply::Slow(
                Duration::from_millis(300),
                Box::new(Reply::Status(200, current.lock().unwrap().container_json())),
            )
        }))
    };
    let env = pod_identity_env(dir.path(), &fake, &r);
    let h = serve(dir.path(), &["--expiry-margin", "1s"], &env, &r);
    let log = h.log_text();
    assert!(log.contains("pod-identity"), "{}", common::tail(&log));

    // Ten concurrent reads, one call to the agent.
    let mut reads = Vec::new();
    for i in 0..10 {
        let mut client = h.client().await;
        reads.push(tokio::spawn(async move {
            common::get_secret(&mut client, CREDENTIAL_IDS[i % 5]).await
        }));
    }
    for read in reads {
        read.await.unwrap().expect("a concurrent read");
    }
    assert_eq!(fake.requests().len(), 1, "{:?}", fake.requests());
    let first = current.lock().unwrap().clone();
    assert_serves(&h, &first).await;
    assert_eq!(fake.requests().len(), 1, "served from the cache");
    drop(h);

    // A margin longer than the lifetime: each request refreshes.
    let dir = tempfile::tempdir().unwrap();
    let h = serve(dir.path(), &["--expiry-margin", "2h"], &env, &r);
    assert_serves(&h, &first).await;
    // The kubelet rotates the token; the agent issues new credentials; the next refresh sends
    // the new token and serves the new values.
    let rotated = token(3600, -10);
    r.watch(rotated.as_bytes());
    std::fs::write(&token_file, &rotated).unwrap();
    let next = FakeCredentials::new(3600);
    watch(&r, &next);
    *current.lock().unwrap() = next.clone();
    let mut client = h.client().await;
    let v = h.get(&mut client, "aws-access-key-id").await.unwrap();
    assert!(
        v.expose() == next.access_key_id.as_bytes(),
        "the new credentials are served"
    );
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.header("authorization"), Some(rotated.as_str()));
    assert_serves(&h, &next).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_identity_faults_are_clear_errors_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let token_file = dir.path().join("eks-pod-identity-token");
    let fake = FakeEndpoint::start(|_: &Request| Reply::Status(500, "{}".into()));
    let env = pod_identity_env(dir.path(), &fake, &r);
    let h = serve(dir.path(), &[], &env, &r);

    // A token the agent does not accept.
    fake.set(|_: &Request| Reply::Status(401, r#"{"message":"no association"}"#.into()));
    let err = error_for(&h, "aws-access-key-id").await;
    assert!(err.contains("Pod Identity association"), "{err}");

    let cases = [
        ("500", Reply::Status(500, "{}".into()), "StatusCode(500)"),
        (
            "malformed JSON",
            Reply::Status(200, r#"{"AccessKeyId": "#.into()),
            "invalid JSON",
        ),
        (
            "expired credentials",
            Reply::Status(200, FakeCredentials::new(-60).container_json()),
            "expired at",
        ),
        (
            "the agent down",
            Reply::Hangup,
            "eks-pod-identity-agent add-on runs",
        ),
    ];
    faults_are_named(&h, "aws-access-key-id", &fake.base(), cases, |reply| {
        fake.set(agent(&token_file, move || reply.clone()))
    })
    .await;

    // Back: the next read succeeds.
    let good = FakeCredentials::new(3600);
    watch(&r, &good);
    let json = good.container_json();
    fake.set(agent(&token_file, move || Reply::Status(200, json.clone())));
    assert_serves(&h, &good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecs_style_endpoint_with_a_token_value_is_the_container_identity() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let c = FakeCredentials::new(3600);
    watch(&r, &c);
    let auth = format!("ecs-auth-{:016x}", rand::random::<u64>());
    r.watch(auth.as_bytes());
    let fake = {
        let (json, auth) = (c.container_json(), auth.clone());
        FakeEndpoint::start(move |req: &Request| {
            if req.header("authorization") == Some(auth.as_str()) {
                Reply::Status(200, json.clone())
            } else {
                Reply::Status(403, "{}".into())
            }
        })
    };
    let env = [
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{}/v2/credentials/task", fake.base()),
        ),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", auth),
    ];
    let h = serve(dir.path(), &[], &env, &r);
    assert!(h.log_text().contains("container"), "{}", h.log_text());
    assert_serves(&h, &c).await;
    assert_eq!(fake.requests()[0].path(), "/v2/credentials/task");
}

/// An IMDSv2 fake: a session token for a PUT with a TTL, then the role name and `role` (its
/// credentials) for GETs bearing that token.
fn imds(session: String, role: Reply) -> impl Fn(&Request) -> Reply + Send + Sync {
    move |req: &Request| match (req.method.as_str(), req.path()) {
        ("PUT", "/latest/api/token") => match req.header("x-aws-ec2-metadata-token-ttl-seconds") {
            Some(ttl) if ttl.parse::<u32>().is_ok() => Reply::Headed(
                200,
                vec![("x-aws-ec2-metadata-token-ttl-seconds".into(), ttl.into())],
                session.clone(),
            ),
            _ => Reply::Status(400, String::new()),
        },
        _ if req.header("x-aws-ec2-metadata-token") != Some(session.as_str()) => {
            Reply::Status(401, String::new())
        }
        ("GET", "/latest/meta-data/iam/security-credentials/") => {
            Reply::Status(200, "ci-node-role".into())
        }
        ("GET", "/latest/meta-data/iam/security-credentials/ci-node-role") => role.clone(),
        _ => Reply::Status(404, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_asked_for_serves_the_instance_role_and_names_a_refused_session() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let c = FakeCredentials::new(3600);
    watch(&r, &c);
    let session = format!("imds-session-{:016x}", rand::random::<u64>());
    r.watch(session.as_bytes());
    let fake = FakeEndpoint::start(imds(session.clone(), Reply::Status(200, c.imds_json())));
    let env = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake.base())];
    let h = serve(dir.path(), &["--identity", "imds"], &env, &r);
    assert_serves(&h, &c).await;
    let asked: Vec<String> = fake
        .requests()
        .iter()
        .map(|q| format!("{} {}", q.method, q.path()))
        .collect();
    assert!(
        asked.contains(&"PUT /latest/api/token".to_string())
            && asked
                .contains(&"GET /latest/meta-data/iam/security-credentials/ci-node-role".into()),
        "{asked:?}"
    );

    // A second helper, whose IMDS refuses the session token.
    let dir = tempfile::tempdir().unwrap();
    let refusing = FakeEndpoint::start(|_: &Request| Reply::Status(403, String::new()));
    let env = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", refusing.base())];
    let h = serve(dir.path(), &["--identity", "imds"], &env, &r);
    let err = error_for(&h, "aws-access-key-id").await;
    assert!(err.contains("IMDS") && err.contains("IMDSv2"), "{err}");
}

/// Runs `serve` with `env` to its exit: (success, stderr).
fn serve_to_exit(dir: &Path, env: &[(&str, String)], r: &Radioactive) -> (bool, String) {
    let mut cmd = isolated();
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("unix://{}", dir.join("helper.sock").display()));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd, r);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn auto_without_an_identity_exits_and_never_asks_imds() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let (ok, err) = serve_to_exit(dir.path(), &[], &r);
    assert!(!ok && err.contains("--identity imds"), "{err}");

    let fake = FakeEndpoint::start(|_: &Request| Reply::Status(500, String::new()));
    let env = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake.base())];
    let (ok, err) = serve_to_exit(dir.path(), &env, &r);
    assert!(!ok && err.contains("--identity imds"), "{err}");
    assert_eq!(fake.connections(), 0, "auto contacted IMDS");
}

/// A GitHub token endpoint handing out `jwt` to requests bearing `bearer` and asking for STS.
fn github(bearer: String, jwt: String) -> impl Fn(&Request) -> Reply + Send + Sync {
    move |req: &Request| {
        let query_ok =
            req.target.contains("x=1") && req.target.contains("audience=sts.amazonaws.com");
        let auth_ok = req
            .header("authorization")
            .is_some_and(|a| a.eq_ignore_ascii_case(&format!("bearer {bearer}")));
        match (req.path(), query_ok, auth_ok) {
            ("/token", true, true) => {
                Reply::Status(200, format!(r#"{{"count":1,"value":"{jwt}"}}"#))
            }
            ("/token", _, false) => Reply::Status(401, r#"{"message":"Bad credentials"}"#.into()),
            _ => Reply::Status(404, String::new()),
        }
    }
}

/// The GitHub Actions settings for a job whose token endpoint is `fake`.
fn github_env(fake: &FakeEndpoint, bearer: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            format!("{}/token?x=1", fake.base()),
        ),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", bearer.to_string()),
        ("AWS_ROLE_ARN", ARN.to_string()),
    ]
}

/// A GitHub job: its OIDC token, the bearer that asks for it (both watched in `r`), and the
/// token endpoint that hands the one out for the other.
fn github_job(r: &Radioactive) -> (String, String, FakeEndpoint) {
    let jwt = token(600, -10);
    let bearer = format!("gh-request-token-{:016x}", rand::random::<u64>());
    r.watch(jwt.as_bytes());
    r.watch(bearer.as_bytes());
    let fake = FakeEndpoint::start(github(bearer.clone(), jwt.clone()));
    (jwt, bearer, fake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_oidc_serves_the_job_token_and_names_the_permission_when_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let (jwt, bearer, fake) = github_job(&r);
    let h = serve(dir.path(), &[], &github_env(&fake, &bearer), &r);
    assert!(h.log_text().contains("github-oidc"), "{}", h.log_text());
    let mut client = h.client().await;
    let got = h.get(&mut client, "aws-web-identity-token").await.unwrap();
    assert!(got.expose() == jwt.as_bytes(), "not the fake's JWT");
    assert_eq!(
        h.get(&mut client, "aws-role-arn").await.unwrap().expose(),
        ARN.as_bytes()
    );

    // A job without `permissions: id-token: write` gets 401s.
    let dir = tempfile::tempdir().unwrap();
    let refusing = FakeEndpoint::start(github("another-request-token".into(), jwt));
    let h = serve(
        dir.path(),
        &["--identity", "github-oidc"],
        &github_env(&refusing, &bearer),
        &r,
    );
    let err = error_for(&h, "aws-web-identity-token").await;
    assert!(err.contains("id-token: write"), "{err}");
}

/// The GitHub-hosted workflow's step, `irsa-secrets run --identity github-oidc -- CMD`: CMD
/// reaches a helper serving the job's token and role at $DOCKER_HOST.
#[test]
fn run_with_github_oidc_gives_cmd_the_jobs_token() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let (jwt, bearer, fake) = github_job(&r);
    let no_daemon = format!("unix://{}", dir.path().join("no-daemon.sock").display());
    let out = isolated()
        .args([
            "run",
            "--identity",
            "github-oidc",
            "--upstream",
            &no_daemon,
            "--",
        ])
        .args([
            "sh",
            "-c",
            r#"exec "$0" probe --socket "$DOCKER_HOST" aws-web-identity-token aws-role-arn"#,
        ])
        .arg(env!("CARGO_BIN_EXE_irsa-secrets"))
        .envs(github_env(&fake, &bearer))
        .output()
        .unwrap();
    let (ok, text) = common::dockerd::build_output(&out, &r);
    assert!(ok, "{text}");
    assert!(
        text.contains(&common::probed("aws-web-identity-token", jwt.as_bytes())),
        "{text}"
    );
    assert!(
        text.contains(&common::probed("aws-role-arn", ARN.as_bytes())),
        "{text}"
    );
}

#[test]
fn the_audit_trail_names_the_identity_that_served() {
    let r = Radioactive::default();
    let c = FakeCredentials::new(3600);
    watch(&r, &c);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("eks-pod-identity-token");
    let json = c.container_json();
    let agent = FakeEndpoint::start(agent(&token_file, move || Reply::Status(200, json.clone())));
    let ecs = {
        let json = c.container_json();
        FakeEndpoint::start(move |_: &Request| Reply::Status(200, json.clone()))
    };
    let metadata = FakeEndpoint::start(imds(
        "imds-session-for-audit".into(),
        Reply::Status(200, c.imds_json()),
    ));
    let jwt = token(600, -10);
    r.watch(jwt.as_bytes());
    let gh = FakeEndpoint::start(github("gh-request-token-for-audit".into(), jwt));
    let setups = [
        (
            "pod-identity",
            "aws-access-key-id",
            pod_identity_env(dir.path(), &agent, &r),
        ),
        (
            "container",
            "aws-access-key-id",
            vec![(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("{}/v2/credentials/task", ecs.base()),
            )],
        ),
        (
            "imds",
            "aws-access-key-id",
            vec![
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", metadata.base()),
                ("IRSA_SECRETS_IDENTITY", "imds".into()),
            ],
        ),
        (
            "github-oidc",
            "aws-web-identity-token",
            github_env(&gh, "gh-request-token-for-audit"),
        ),
    ];
    for (source, id, env) in setups {
        let dir = tempfile::tempdir().unwrap();
        let h = proxy(dir.path(), &dir.path().join("no-daemon.sock"), &env, &r);
        let (ok, out) = common::probe(&h.socket, &[id], &r);
        assert!(ok, "{source}: {out}\n{}", common::tail(&h.log_text()));
        let trail = dir.path().join("audit.jsonl");
        let record =
            common::eventually(Duration::from_secs(10), "the probe's audit record", || {
                let text = std::fs::read(&trail).ok()?;
                r.assert_absent("the audit log", &text);
                text.split(|b| *b == b'\n')
                    .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
                    .find(|rec| rec["event"] == "secret" && rec["id"] == id)
            });
        assert_eq!(record["outcome"], "served", "{source}: {record}");
        assert_eq!(record["source"], source, "{record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_oidc_with_sts_serves_the_credentials_moto_issued_for_the_job_token() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let moto = common::moto::Moto::start(dir.path());
    let jwt = token(600, -10);
    r.watch(jwt.as_bytes());
    let gh = FakeEndpoint::start(github("gh-request-token-for-sts".into(), jwt));
    let args = [
        "--identity",
        "github-oidc",
        "--sts",
        "--sts-endpoint",
        &moto.url,
        "--region",
        "us-east-1",
    ];
    let h = serve(
        dir.path(),
        &args,
        &github_env(&gh, "gh-request-token-for-sts"),
        &r,
    );
    let mut client = h.client().await;
    let (key_id, issued) = key_id_and_issued(&h, &mut client, &moto, &r).await;
    assert_eq!(issued.len(), 1, "one AssumeRoleWithWebIdentity");
    let c = FakeCredentials {
        access_key_id: issued[0].access_key_id.clone(),
        secret_access_key: issued[0].secret_access_key.clone(),
        token: issued[0].session_token.clone(),
        expiration: String::from_utf8(
            common::get_secret(&mut client, "aws-credentials-expiration")
                .await
                .unwrap()
                .expose()
                .to_vec(),
        )
        .unwrap(),
    };
    assert!(key_id.expose() == c.access_key_id.as_bytes());
    assert_serves(&h, &c).await;
    assert_eq!(gh.requests().len(), 1, "the job token is asked for once");
}

/// The access key id the helper serves and what moto issued, its values watched before the
/// read is checked (so a failure message cannot print them unwatched).
async fn key_id_and_issued(
    h: &Helper,
    client: &mut common::Secrets,
    moto: &common::moto::Moto,
    r: &Radioactive,
) -> (irsa_secrets::secret::SecretValue, Vec<common::moto::Issued>) {
    let key_id = h.get(client, "aws-access-key-id").await;
    let issued = moto.issued().await;
    for c in &issued {
        for v in [&c.access_key_id, &c.secret_access_key, &c.session_token] {
            r.watch(v.as_bytes());
        }
    }
    let key_id = key_id.unwrap_or_else(|e| panic!("{e:?}\n{}", common::tail(&h.log_text())));
    (key_id, issued)
}

/// A `RUN` step through `proxy` on a private dockerd gets the Pod Identity agent's access key
/// and the GitHub job's token; the step prints only their SHA-256.
#[test]
fn a_docker_build_step_gets_pod_identity_credentials_and_the_github_token() {
    use common::dockerd::{self, Dockerd, BASE_IMAGE};
    if dockerd::skip() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("irsa-ident-")
        .tempdir()
        .unwrap();
    let r = Radioactive::default();
    let daemon = Dockerd::start(&dir.path().join("d"));
    let c = FakeCredentials::new(3600);
    watch(&r, &c);
    let token_file = dir.path().join("eks-pod-identity-token");
    let json = c.container_json();
    let agent = FakeEndpoint::start(agent(&token_file, move || Reply::Status(200, json.clone())));
    let jwt = token(600, -10);
    r.watch(jwt.as_bytes());
    let gh = FakeEndpoint::start(github("gh-request-token-for-build".into(), jwt.clone()));
    let builds = [
        (
            "pod-identity",
            "aws-access-key-id",
            c.access_key_id.clone(),
            pod_identity_env(dir.path(), &agent, &r),
        ),
        (
            "github-oidc",
            "aws-web-identity-token",
            jwt,
            github_env(&gh, "gh-request-token-for-build"),
        ),
    ];
    for (name, id, want, env) in builds {
        let at = dir.path().join(name);
        std::fs::create_dir_all(at.join("ctx")).unwrap();
        std::fs::write(
            at.join("ctx/Dockerfile"),
            format!(
                "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id={id},required \
                 sha256sum /run/secrets/{id}\n"
            ),
        )
        .unwrap();
        let h = proxy(&at, &daemon.socket, &env, &r);
        let (ok, text) = dockerd::build_on(&h.socket, &at.join("ctx"), &r);
        assert!(
            ok,
            "{name}: {text}\n{}\n{}",
            common::tail(&h.log_text()),
            daemon.log_tail()
        );
        let line = format!("{}  /run/secrets/{id}", common::sha(want.as_bytes()));
        assert!(text.contains(&line), "{name}: no `{line}` in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_identity_agent_not_running_or_too_slow_is_a_clear_error_until_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let token_file = dir.path().join("eks-pod-identity-token");
    // A port nothing listens on, until the agent starts there.
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let placeholder = FakeEndpoint::start(|_: &Request| Reply::Hangup);
    let env: Vec<_> = pod_identity_env(dir.path(), &placeholder, &r)
        .into_iter()
        .map(|(k, v)| (k, v.replace(&placeholder.base(), &base)))
        .collect();
    drop(placeholder);
    let h = serve(dir.path(), &[], &env, &r);
    let err = error_for(&h, "aws-access-key-id").await;
    assert!(
        err.contains(&base) && err.contains("eks-pod-identity-agent add-on runs"),
        "{err}"
    );

    // It starts, but answers after the SDK's 5 s read timeout.
    let fake = FakeEndpoint::start_on(
        port,
        agent(&token_file, || {
            Reply::Slow(
                Duration::from_secs(6),
                Box::new(Reply::Status(500, "{}".into())),
            )
        }),
    );
    let started = std::time::Instant::now();
    let err = error_for(&h, "aws-access-key-id").await;
    assert!(err.contains(&base) && err.contains("timeout"), "{err}");
    eprintln!("a slow agent failed the read after {:?}", started.elapsed());

    // It answers in time: served.
    let good = FakeCredentials::new(3600);
    watch(&r, &good);
    let json = good.container_json();
    fake.set(agent(&token_file, move || Reply::Status(200, json.clone())));
    assert_serves(&h, &good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_and_github_faults_are_clear_errors_and_recover() {
    let r = Radioactive::default();
    let session = format!("imds-session-{:016x}", rand::random::<u64>());
    r.watch(session.as_bytes());
    let dir = tempfile::tempdir().unwrap();
    let metadata = FakeEndpoint::start(|_: &Request| Reply::Hangup);
    let env = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", metadata.base())];
    let h = serve(dir.path(), &["--identity", "imds"], &env, &r);
    let late = FakeCredentials::new(3600);
    let cases = [
        ("500", Reply::Status(500, String::new()), "IMDS at"),
        (
            "malformed JSON",
            Reply::Status(200, r#"{"Code": "Success", "#.into()),
            "IMDS at",
        ),
        ("401", Reply::Status(401, String::new()), "session token"),
        ("the endpoint down", Reply::Hangup, "IMDS at"),
        (
            "slower than the client's timeout",
            Reply::Slow(
                Duration::from_secs(3),
                Box::new(Reply::Status(200, late.imds_json())),
            ),
            "IMDS at",
        ),
    ];
    faults_are_named(&h, "aws-access-key-id", &metadata.base(), cases, |reply| {
        metadata.set(imds(session.clone(), reply))
    })
    .await;
    watch(&r, &late);
    // Slow but within the client's timeouts: served.
    let good = FakeCredentials::new(3600);
    watch(&r, &good);
    let slow = Reply::Slow(
        Duration::from_millis(300),
        Box::new(Reply::Status(200, good.imds_json())),
    );
    metadata.set(imds(session.clone(), slow));
    assert_serves(&h, &good).await;

    let dir = tempfile::tempdir().unwrap();
    let gh = FakeEndpoint::start(|_: &Request| Reply::Hangup);
    let h = serve(
        dir.path(),
        &[],
        &github_env(&gh, "gh-request-token-faults"),
        &r,
    );
    let cases = [
        ("500", Reply::Status(500, String::new()), "500"),
        (
            "malformed JSON",
            Reply::Status(200, "{\"value\": ".into()),
            "JSON",
        ),
        (
            "an expired token",
            Reply::Status(200, format!(r#"{{"value":"{}"}}"#, token(-60, -600))),
            "expired",
        ),
        ("the endpoint down", Reply::Hangup, "GitHub"),
    ];
    faults_are_named(&h, "aws-web-identity-token", &gh.base(), cases, |reply| {
        gh.set(move |_: &Request| reply.clone())
    })
    .await;
    // A refused request token, then a slow but good answer: served.
    gh.set(|_: &Request| Reply::Status(401, r#"{"message":"Unauthorized"}"#.into()));
    let refused = error_for(&h, "aws-web-identity-token").await;
    assert!(refused.contains("id-token: write"), "{refused}");
    let jwt = token(600, -10);
    r.watch(jwt.as_bytes());
    let answer = github("gh-request-token-faults".into(), jwt.clone());
    gh.set(move |req: &Request| Reply::Slow(Duration::from_millis(500), Box::new(answer(req))));
    let mut client = h.client().await;
    let got = h.get(&mut client, "aws-web-identity-token").await.unwrap();
    assert!(
        got.expose() == jwt.as_bytes(),
        "not the fake's JWT after recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_credentials_that_already_expired_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let expired = FakeCredentials::new(-60);
    watch(&r, &expired);
    let metadata = FakeEndpoint::start(imds(
        "imds-session-expired".into(),
        Reply::Status(200, expired.imds_json()),
    ));
    let env = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", metadata.base())];
    let h = serve(dir.path(), &["--identity", "imds"], &env, &r);
    let mut client = h.client().await;
    if let Ok(served) = common::get_secret(&mut client, "aws-credentials-expiration").await {
        panic!(
            "credentials IMDS said expired at {} were served as expiring at {}",
            expired.expiration,
            String::from_utf8_lossy(served.expose())
        );
    }
    let err = error_for(&h, "aws-access-key-id").await;
    assert!(err.contains("expired at"), "{err}");
}

/// Cached credentials are served through a failed refresh until the expiry margin: unit-tested
/// under paused time in `source::credentials`. Here, without waiting for a refresh: credentials
/// within the margin are not served once the agent fails, and the error says why and what the
/// agent answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_credentials_within_the_expiry_margin_are_not_served_when_the_refresh_fails() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let token_file = dir.path().join("eks-pod-identity-token");
    // Ten minutes of life, a one-hour margin: due for refresh, and not served without one.
    let first = FakeCredentials::new(600);
    watch(&r, &first);
    let json = first.container_json();
    let fake = FakeEndpoint::start(agent(&token_file, move || Reply::Status(200, json.clone())));
    let env = pod_identity_env(dir.path(), &fake, &r);
    let h = serve(dir.path(), &["--expiry-margin", "1h"], &env, &r);
    assert_serves(&h, &first).await;
    fake.set(agent(&token_file, || Reply::Status(500, "{}".into())));
    let mut client = h.client().await;
    let err = h.get(&mut client, "aws-access-key-id").await.unwrap_err();
    assert!(
        err.message().contains("no longer served") && err.message().contains("StatusCode(500)"),
        "{}",
        err.message()
    );
}

/// `--assume-role` narrows the Pod Identity's credentials with STS AssumeRole (moto), signed
/// with them: builds get the assumed role's keys, never the agent's. The helper's own calls
/// (a Parameter Store value here) use the same cached answer of the agent: one agent call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_role_narrows_pod_identity_credentials_through_sts() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let moto = common::moto::Moto::start(dir.path());
    let token_file = dir.path().join("eks-pod-identity-token");
    let pod = FakeCredentials::new(3600);
    watch(&r, &pod);
    let json = pod.container_json();
    let fake = FakeEndpoint::start(agent(&token_file, move || Reply::Status(200, json.clone())));
    let mut env = pod_identity_env(dir.path(), &fake, &r);
    env.push(("AWS_ENDPOINT_URL_SSM", moto.url.clone()));
    let npm = "//registry.npmjs.org/:_authToken=npm_shared_cache_1";
    r.watch(npm.as_bytes());
    moto.ssm("us-east-1")
        .put_parameter()
        .name("/ci/npmrc")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .value(npm)
        .send()
        .await
        .unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#,
    )
    .unwrap();
    let policy = policy.display().to_string();
    let args = [
        "--assume-role",
        "arn:aws:iam::123456789012:role/ci-builder",
        "--external-id",
        "ext-1",
        "--session-policy",
        &policy,
        "--duration",
        "15m",
        "--sts-endpoint",
        &moto.url,
        "--region",
        "us-east-1",
        "--secret",
        "id=npmrc,type=aws-ssm,name=/ci/npmrc",
    ];
    let h = serve(dir.path(), &args, &env, &r);
    let mut client = h.client().await;
    let (key_id, issued) = key_id_and_issued(&h, &mut client, &moto, &r).await;
    assert_eq!(issued.len(), 1, "one AssumeRole");
    assert!(key_id.expose() == issued[0].access_key_id.as_bytes());
    assert!(key_id.expose() != pod.access_key_id.as_bytes());
    assert!(issued[0].session_name.starts_with("irsa-secrets-"));
    assert_eq!(fake.requests().len(), 1, "the agent signs the one STS call");
    let got = common::get_secret(&mut client, "npmrc").await;
    assert_eq!(got.unwrap().expose(), npm.as_bytes());
    assert_eq!(
        fake.requests().len(),
        1,
        "the helper's own call is signed with the same cached agent answer"
    );
    let region = common::get_secret(&mut client, "aws-region").await;
    assert_eq!(region.unwrap().expose(), b"us-east-1");
    assert!(h
        .log_text()
        .contains("narrowing the pod-identity identity with AssumeRole"));
}

/// `--assume-role` on a web identity is refused with what to use instead.
#[test]
fn assume_role_on_a_web_identity_says_to_use_sts() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let mut cmd = isolated();
    cmd.args([
        "serve",
        "--mock",
        "--assume-role",
        "arn:aws:iam::123456789012:role/x",
    ])
    .arg("--listen")
    .arg(format!(
        "unix://{}",
        dir.path().join("helper.sock").display()
    ));
    let out = run(&mut cmd, &r);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("narrow it with --sts"),
        "{err}"
    );
}

/// `doctor` asks the identity it finds once and says who and until when, or what to fix.
#[test]
fn doctor_checks_the_pod_identity_it_finds() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let pod = FakeCredentials::new(3600);
    watch(&r, &pod);
    let token_file = dir.path().join("eks-pod-identity-token");
    let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let json = pod.container_json();
    let fake = {
        let refusing = refusing.clone();
        FakeEndpoint::start(agent(&token_file, move || {
            if refusing.load(std::sync::atomic::Ordering::SeqCst) {
                Reply::Status(401, r#"{"message":"no association"}"#.into())
            } else {
                Reply::Status(200, json.clone())
            }
        }))
    };
    let env = pod_identity_env(dir.path(), &fake, &r);
    let doctor = || {
        let mut cmd = isolated();
        cmd.arg("doctor").envs(env.iter().map(|(k, v)| (k, v)));
        let out = run(&mut cmd, &r);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = doctor();
    assert!(ok, "{text}");
    assert!(text.contains("ok    identity pod-identity"), "{text}");
    assert!(
        text.contains("pod-identity issued credentials for account"),
        "{text}"
    );
    refusing.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, text) = doctor();
    assert!(!ok, "{text}");
    assert!(
        text.contains("FAIL") && text.contains("Pod Identity association"),
        "{text}"
    );
}

/// In `proxy --config`, the Pod Identity in the environment reaches only the listeners that
/// opt in (`identity = "process"` or `identity = "pod-identity"`): one that declares only
/// secrets serves no credentials and never makes the agent hand any out.
#[test]
fn a_config_listener_gets_the_pod_identity_only_when_it_opts_in() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let r = Radioactive::default();
    let token_file = dir.join("eks-pod-identity-token");
    let pod = FakeCredentials::new(3600);
    watch(&r, &pod);
    let json = pod.container_json();
    let fake = FakeEndpoint::start(agent(&token_file, move || Reply::Status(200, json.clone())));
    let env = pod_identity_env(dir, &fake, &r);
    let note = dir.join("note");
    std::fs::write(&note, "harmless").unwrap();
    let table = |name: &str, body: &str| {
        format!(
            "[[listener]]\nname = \"{name}\"\nlisten = \"unix://{}/{name}.sock\"\n\
             upstream = \"unix://{}/no-daemon.sock\"\n{body}\n",
            dir.display(),
            dir.display()
        )
    };
    let config = dir.join("irsa-secrets.toml");
    let text = [
        table("process", "identity = \"process\""),
        table("named", "identity = \"pod-identity\""),
        table(
            "secrets",
            &format!("secret = [\"id=note,src={}\"]", note.display()),
        ),
    ]
    .concat();
    std::fs::write(&config, text).unwrap();
    let mut cmd = isolated();
    cmd.args(["proxy", "--config"]).arg(&config);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let helper = Helper::spawn(cmd, dir.join("secrets.sock"), dir, &env, &r);
    let ask = |name: &str, id: &str| common::probe(&dir.join(format!("{name}.sock")), &[id], &r);

    let (ok, out) = ask("secrets", "aws-access-key-id");
    assert!(
        !ok && out.contains("NotFound"),
        "{out}\n{}",
        helper.log_text()
    );
    assert_eq!(
        fake.requests().len(),
        0,
        "the agent was asked for a listener that did not opt in"
    );
    let served = common::probed("aws-access-key-id", pod.access_key_id.as_bytes());
    for name in ["process", "named"] {
        let (ok, out) = ask(name, "aws-access-key-id");
        assert!(
            ok && out.contains(&served),
            "{name}: {out}\n{}",
            helper.log_text()
        );
    }
    let (ok, out) = ask("secrets", "note");
    assert!(ok, "{out}");
}
