//! Registry credentials end to end: a private dockerd pulls `FROM` an image in a real registry
//! (distribution with htpasswd Basic auth, as ECR answers) mapped to an ECR registry with
//! `--ecr-alias`, through the helper, whose password comes from moto's ECR
//! (`123456789012-auth-token`) with the helper's own IRSA identity exchanged at moto's STS. ECR
//! is reached through a switchable loopback relay, so the test can count the calls and make ECR
//! go down or refuse. The pulls run on each engine (tests/it/common/engine.rs).
//!
//! Pushes run on the current engine's containerd image store: Debian's dockerd 20.10 has no
//! BuildKit `image` exporter (Solve answers `exporter "image" could not be found`) and its
//! `moby` exporter does not push.

use crate::common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::grpc::build::{ImageBuildFrontendOptions, ImageBuildLoadInput, ImageBuildNetworkMode};
use bollard::grpc::driver::buildkitd::{BuildkitDaemon, Endpoint};
use bollard::grpc::driver::Build as _;
use common::bollard::{context as tar_context, forward_to};
use common::dockerd::{self, docker_on, Stack};
use common::engine::Engine;
use common::moto::Moto;
use common::registry::{self, client_login, context, error_line, registry_records, Registry};

/// moto's ECR password for its default account, and the user ECR passwords go with.
const PASSWORD: &str = "123456789012-auth-token";
const USER: &str = "AWS";
const TARGET: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

/// What the relay in front of moto's ECR does with a call.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// Passes it to moto, counting `GetAuthorizationToken` calls.
    Forward = 0,
    /// Closes the connection unanswered: ECR down.
    Down = 1,
    /// Answers AccessDeniedException: a role without `ecr:GetAuthorizationToken`.
    Deny = 2,
}

/// A loopback relay to moto, for `AWS_ENDPOINT_URL_ECR`.
struct Relay {
    url: String,
    mode: Arc<AtomicU8>,
    calls: Arc<AtomicU32>,
}

impl Relay {
    fn start(moto: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = moto.trim_start_matches("http://").to_string();
        let (mode, calls) = (Arc::new(AtomicU8::new(0)), Arc::new(AtomicU32::new(0)));
        let (m, c) = (Arc::clone(&mode), Arc::clone(&calls));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (m, c, upstream) = (Arc::clone(&m), Arc::clone(&c), upstream.clone());
                std::thread::spawn(move || relay(conn, &m, &c, &upstream));
            }
        });
        Relay { url, mode, calls }
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Reads one HTTP request (head and Content-Length body), if the peer sends one.
fn read_request(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if buf.len() >= end + 4 + length {
            return Some(buf);
        }
    }
}

fn relay(mut conn: TcpStream, mode: &AtomicU8, calls: &AtomicU32, upstream: &str) {
    while let Some(request) = read_request(&mut conn) {
        match mode.load(Ordering::SeqCst) {
            1 => return,
            2 => {
                let body = r#"{"__type":"AccessDeniedException","message":"User: arn:aws:sts::123456789012:assumed-role/ci-builder/x is not authorized to perform: ecr:GetAuthorizationToken"}"#;
                let _ = write!(
                    conn,
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\n\
                     x-amzn-ErrorType: AccessDeniedException\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
            _ => {
                if String::from_utf8_lossy(&request).contains("GetAuthorizationToken") {
                    calls.fetch_add(1, Ordering::SeqCst);
                }
                let mut up = TcpStream::connect(upstream).unwrap();
                up.write_all(&request).unwrap();
                let Some(answer) = read_request(&mut up) else {
                    return;
                };
                if conn.write_all(&answer).is_err() {
                    return;
                }
            }
        }
    }
}

/// The helper's flags and environment: its own IRSA identity exchanged at moto's STS, ECR at the
/// relay, the registry aliased to an ECR registry, the audit trail in `audit`.
fn configure(cmd: &mut Command, moto: &Moto, relay: &Relay, host: &str, audit: &Path) {
    cmd.args(["--ecr-alias", &format!("{host}={TARGET}")])
        .arg("--audit-log")
        .arg(audit)
        .env("AWS_ENDPOINT_URL_STS", &moto.url)
        .env("AWS_ENDPOINT_URL_ECR", &relay.url)
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_ENDPOINT_URL");
}

fn timed(s: &Stack, ctx: &Path) -> (bool, String, Duration) {
    let started = Instant::now();
    let (ok, text) = s.build(ctx, &[]);
    (ok, text, started.elapsed())
}

/// moto, the relay, the registry seeded with `base`, and a private dockerd behind the helper
/// with the registry aliased to an ECR registry.
struct World {
    s: Stack,
    image: String,
    audit: PathBuf,
    host: String,
    relay: Relay,
    reg: Registry,
    moto: Moto,
    _scratch: tempfile::TempDir,
}

impl World {
    /// The world on `engine`; the registry listens where the daemon can reach it (in its
    /// network namespace), so the helper starts again once the registry's host is known.
    fn start(engine: Engine) -> World {
        registry::available().unwrap();
        let scratch = tempfile::Builder::new()
            .prefix("irsa-ecr")
            .tempdir()
            .unwrap();
        let moto = Moto::start(scratch.path());
        let relay = Relay::start(&moto.url);
        let audit = scratch.path().join("audit.jsonl");
        let mut s = Stack::start_on(engine, "irsa-ecr-stack", "debug", |_| {});
        s.r.watch(PASSWORD.as_bytes());
        let reg = Registry::start_in(
            s.daemon.netns_pid(),
            &scratch.path().join("registry"),
            USER,
            PASSWORD,
        );
        let host = reg.host.clone();
        s.restart_helper("debug", |cmd| configure(cmd, &moto, &relay, &host, &audit));
        let image = reg.seed(&s.daemon, "base", USER, PASSWORD);
        World {
            s,
            image,
            audit,
            host,
            relay,
            reg,
            moto,
            _scratch: scratch,
        }
    }
}

engines!(
    ecr_passwords_pull_through_the_helper,
    a_buildkit_client_pulls_with_ecrs_password
);

fn ecr_passwords_pull_through_the_helper(engine: Engine) {
    if dockerd::skip() {
        return;
    }
    let World {
        mut s,
        image,
        audit,
        host,
        relay,
        moto,
        reg: _reg,
        _scratch,
    } = World::start(engine);
    let ctx = context(&s.dir, "pull", &image);

    // The control: the daemon alone, with no credentials anywhere, gets the registry's 401.
    let (ok, text) = common::dockerd::build_on(&s.daemon.socket, &ctx, &s.r);
    assert!(!ok, "the control build passed:\n{text}");
    assert!(text.contains("401"), "no 401 in the control build:\n{text}");

    // The client's own login wins, and ECR is not asked.
    client_login(&s.helper.socket, &host, USER, PASSWORD);
    let (ok, text, took) = timed(&s, &ctx);
    s.assert_built(ok, &text);
    eprintln!("build with the client's own login: {took:?}");
    assert_eq!(
        relay.calls(),
        0,
        "ECR was called although the client had credentials"
    );
    let records = registry_records(&audit);
    assert!(!records.is_empty(), "no registry record");
    for r in &records {
        assert_eq!(r["source"], "client", "{r}");
        assert_eq!(r["outcome"], "served", "{r}");
        assert_eq!(r["host"], host.as_str(), "{r}");
        assert!(r["fingerprint"].is_string(), "{r}");
    }
    let out = docker_on(&s.helper.socket)
        .args(["logout", &host])
        .output()
        .unwrap();
    assert!(out.status.success());

    // ECR down: the build fails saying so; nothing is cached.
    relay.set(Mode::Down);
    let (ok, text, took) = timed(&s, &ctx);
    eprintln!("build with ECR down: {took:?}");
    assert!(!ok, "built with ECR down:\n{text}");
    assert!(
        text.contains("ecr:GetAuthorizationToken") && text.contains("irsa-secrets"),
        "the build error does not say ECR failed:\n{text}"
    );
    eprintln!("{}", error_line(&text));

    // ECR refusing: the build error names the permission.
    relay.set(Mode::Deny);
    let (ok, text, _) = timed(&s, &ctx);
    assert!(!ok, "built with ECR refusing:\n{text}");
    assert!(
        text.contains("needs ecr:GetAuthorizationToken"),
        "the build error does not name the permission:\n{text}"
    );
    eprintln!("{}", error_line(&text));

    // ECR back: builds pass, several of them on one ECR call, which moto's recorder counts.
    relay.set(Mode::Forward);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(moto.start_recording());
    let answered_before = registry_records(&audit).len();
    let builds = 3;
    for i in 0..builds {
        let (ok, text, took) = timed(&s, &ctx);
        s.assert_built(ok, &text);
        eprintln!("build {i} with ECR's password: {took:?}");
    }
    let ecr_calls = rt
        .block_on(moto.recorded("AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"))
        .len();
    let answered = registry_records(&audit).len() - answered_before;
    println!(
        "{engine:?}: {builds} pulls through the helper: {answered} Auth/Credentials answers \
         (audit), {ecr_calls} ECR calls (moto)"
    );
    assert_eq!(ecr_calls, 1, "ECR calls for {builds} builds");
    assert_eq!(relay.calls(), 1, "ECR calls for {builds} builds");
    assert_eq!(answered, builds, "one Credentials answer per pull");
    let log = s.helper.log_text();
    assert!(
        log.contains("says it has already expired"),
        "no warning about moto's expiresAt in 2015"
    );
    let records = registry_records(&audit);
    let served: Vec<_> = records
        .iter()
        .filter(|r| r["source"] == "ecr" && r["outcome"] == "served")
        .collect();
    assert!(served.len() >= builds, "{records:#?}");
    let errors = records.iter().filter(|r| r["outcome"] == "error").count();
    assert!(errors >= 2, "{records:#?}");
    let millis: Vec<_> = served
        .iter()
        .map(|r| r["millis"].as_u64().unwrap())
        .collect();
    eprintln!("ECR answers, ms: {millis:?}; errors: {errors}");
    let fingerprints: std::collections::BTreeSet<_> = served
        .iter()
        .map(|r| r["fingerprint"].to_string())
        .collect();
    assert_eq!(fingerprints.len(), 1, "one password, one fingerprint");
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    s.r.assert_absent("the audit log", audit_text.as_bytes());

    // A restricted listener answers no registry credentials: the registry's 401 stands.
    s.restart_helper("debug", |cmd| {
        configure(cmd, &moto, &relay, &host, &audit);
        cmd.args(["--allow-id", "aws-role-arn"]);
    });
    let (ok, text) = s.build(&ctx, &[]);
    assert!(!ok, "a restricted listener pulled:\n{text}");
    assert!(text.contains("401"), "no 401:\n{text}");
    assert_eq!(relay.calls(), 1, "a restricted listener called ECR");
    let denied = registry_records(&audit)
        .into_iter()
        .filter(|r| r["outcome"] == "denied")
        .count();
    assert!(denied >= 1, "no denied record");

    // A fresh helper, four builds at once: one ECR call between them.
    s.restart_helper("debug", |cmd| configure(cmd, &moto, &relay, &host, &audit));
    let started = Instant::now();
    let builds: Vec<_> = (0..4)
        .map(|_| s.build_cmd(&ctx, &[]).spawn().unwrap())
        .collect();
    for b in builds {
        let out = dockerd::wait_with_timeout(b, Duration::from_secs(300));
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        s.assert_built(out.status.success(), &text);
    }
    eprintln!(
        "four concurrent builds, cold cache: {:?}",
        started.elapsed()
    );
    assert_eq!(
        relay.calls(),
        2,
        "ECR calls for four concurrent builds on a cold cache"
    );
}

/// The BuildKit front door: bollard's BuildKit client (Control/Session and Solve, no
/// credentials of its own) pulls `FROM` the registry image with ECR's password.
fn a_buildkit_client_pulls_with_ecrs_password(engine: Engine) {
    if dockerd::skip() {
        return;
    }
    let w = World::start(engine);
    let dockerfile = format!("FROM {}\nRUN echo built > /built\n", w.image);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        let addr = forward_to(&w.s.helper.socket).await;
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
        let opts = ImageBuildFrontendOptions::builder()
            .force_network_mode(&ImageBuildNetworkMode::None)
            .nocache(true)
            .build();
        tokio::time::timeout(
            Duration::from_secs(300),
            BuildkitDaemon::new(endpoint).docker_build(
                "irsa-test-ecr-pulled",
                opts,
                ImageBuildLoadInput::Upload(tar_context(&dockerfile)),
                None,
                None,
            ),
        )
        .await
    });
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!(
            "bollard build failed: {e:?}\nhelper log:\n{}\ndockerd:\n{}",
            common::tail(&w.s.helper.log_text()),
            w.s.daemon.log_tail()
        ),
        Err(_) => panic!("bollard build still running after 300 s"),
    }
    assert_eq!(w.relay.calls(), 1, "ECR calls for one pull");
    let served = registry_records(&w.audit)
        .into_iter()
        .filter(|r| r["source"] == "ecr" && r["outcome"] == "served")
        .count();
    assert!(served >= 1, "no record of ECR's password served");
}

/// `docker buildx build --push -t HOST/app:TAG` of `ctx` with `docker` (the engine's CLI, on
/// the daemon or through the helper) and `extra` flags: success, and stderr, which must hold
/// none of `s`'s values.
fn push(
    s: &Stack,
    docker: Command,
    ctx: &Path,
    host: &str,
    tag: &str,
    extra: &[&str],
) -> (bool, String) {
    let mut docker = docker;
    let out = docker
        .args([
            "buildx",
            "build",
            "--push",
            "--progress=plain",
            "--network=none",
        ])
        .args(["-t", &format!("{host}/app:{tag}")])
        .args(extra)
        .arg(ctx)
        .output()
        .unwrap();
    s.r.assert_absent("the push's output", &out.stdout);
    s.r.assert_absent("the push's output", &out.stderr);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// On the containerd image store, with a `DOCKER_CONFIG` that holds no credentials:
/// `docker buildx build --push` pulls `FROM` the ECR-aliased registry and pushes the image
/// there, both with the password the helper got from ECR in one call; the registry holds the
/// manifest, its log shows both directions authorized, and no client file holds the password.
/// A registry cache (`--cache-to`, `--cache-from`) goes through the same answers; a listener
/// restricted to other ids gets the registry's 401.
#[test]
fn buildx_pushes_with_ecrs_password_on_the_containerd_store() {
    if dockerd::skip() {
        return;
    }
    let mut w = World::start(Engine::CurrentContainerd);
    let dockerfile = format!(
        "FROM {}\nRUN --mount=type=secret,id=aws-role-arn sha256sum /run/secrets/aws-role-arn \
         > /arn-digest\n",
        w.image
    );
    let ctx = common::dockerd::context(&w.s.dir, "push", &dockerfile);
    let host = w.host.clone();
    // The control: the daemon alone, with no credentials anywhere, gets the registry's 401.
    let (ok, text) = push(&w.s, w.s.daemon.docker(), &ctx, &host, "1", &[]);
    assert!(!ok, "the control push passed:\n{text}");
    assert!(text.contains("401"), "no 401 in the control push:\n{text}");

    let started = Instant::now();
    let (ok, text) = push(&w.s, w.s.docker(), &ctx, &host, "1", &[]);
    w.s.assert_built(ok, &text);
    eprintln!("buildx build --push: {:?}", started.elapsed());
    assert!(
        w.reg.has("app", "1", USER, PASSWORD),
        "no app:1 in the registry:\n{text}\nregistry:\n{}",
        w.reg.log_text()
    );
    assert_eq!(w.relay.calls(), 1, "ECR calls for one pull and one push");
    let records = registry_records(&w.audit);
    assert!(!records.is_empty(), "no registry record");
    for r in &records {
        assert_eq!(r["source"], "ecr", "{r}");
        assert_eq!(r["outcome"], "served", "{r}");
        assert_eq!(r["host"], host.as_str(), "{r}");
    }
    eprintln!(
        "Auth/Credentials answered for the pull and the push: {}",
        records.len()
    );
    // Both directions reached the registry from BuildKit with the one login it admits (ECR's
    // user and password): the base's manifest read, the app's written.
    let log = w.reg.log_text();
    let authorized = |method: &str, uri: &str| {
        log.lines().any(|l| {
            l.contains("msg=\"authorized request\"")
                && l.contains("useragent=buildkit/")
                && l.contains(&format!("http.request.method={method}"))
                && l.contains(&format!("http.request.uri={uri} "))
        })
    };
    assert!(
        authorized("HEAD", "/v2/base/manifests/latest")
            || authorized("GET", "/v2/base/manifests/latest"),
        "the pull:\n{log}"
    );
    assert!(authorized("PUT", "/v2/app/manifests/1"), "the push:\n{log}");

    // A registry cache: exported with one push, imported by the next build, whose step is
    // then cached; the same helper's password, no new ECR call.
    let cache = format!("type=registry,ref={host}/cache");
    let (ok, text) = push(
        &w.s,
        w.s.docker(),
        &ctx,
        &host,
        "2",
        &["--cache-to", &format!("{cache},mode=max")],
    );
    w.s.assert_built(ok, &text);
    assert!(
        w.reg.has("cache", "latest", USER, PASSWORD),
        "no cache in the registry:\n{text}"
    );
    let (ok, text) = push(
        &w.s,
        w.s.docker(),
        &ctx,
        &host,
        "3",
        &["--cache-from", &cache],
    );
    w.s.assert_built(ok, &text);
    assert!(
        text.contains("CACHED"),
        "the step did not come from the registry cache:\n{text}"
    );
    assert_eq!(
        w.relay.calls(),
        1,
        "ECR calls after the cache export and import"
    );
    let served = registry_records(&w.audit).len();
    eprintln!("Auth/Credentials answered up to the cache import: {served}");

    // A listener restricted to other ids answers no registry credentials: the push gets the
    // registry's 401, and the audit says the answer was denied.
    let (moto, relay, audit) = (&w.moto, &w.relay, &w.audit);
    w.s.restart_helper("debug", |cmd| {
        configure(cmd, moto, relay, &host, audit);
        cmd.args(["--allow-id", "aws-role-arn"]);
    });
    let (ok, text) = push(&w.s, w.s.docker(), &ctx, &host, "4", &[]);
    assert!(!ok, "a restricted listener pushed:\n{text}");
    assert!(
        text.contains("401"),
        "no 401 from a restricted listener:\n{text}"
    );
    eprintln!(
        "restricted listener's push: {}",
        text.lines()
            .rfind(|l| l.contains("401"))
            .unwrap_or_default()
    );
    assert!(!w.reg.has("app", "4", USER, PASSWORD), "app:4 was pushed");
    assert_eq!(relay.calls(), 1, "a restricted listener called ECR");
    assert!(
        registry_records(audit)
            .iter()
            .any(|r| r["outcome"] == "denied"),
        "no denied record"
    );

    // The client's DOCKER_CONFIG holds no credential: the helper answered from memory.
    let encoded = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{USER}:{PASSWORD}"),
    );
    for file in walk(&w.s.dir.join("docker-config")) {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap_or_default()).into_owned();
        assert!(
            !text.contains(PASSWORD) && !text.contains(&encoded),
            "{} holds the registry password",
            file.display()
        );
    }
}

/// Every regular file under `dir` (links not followed).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files.extend(walk(&entry.path()));
        } else if kind.is_file() {
            files.push(entry.path());
        }
    }
    files
}
