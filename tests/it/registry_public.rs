//! ECR Public end to end: a private dockerd pulls `FROM` an image in a real registry with token
//! auth, as `public.ecr.aws` answers (distribution 2.8's Bearer challenge naming a token server
//! that takes Basic credentials), mapped to ECR Public with `--ecr-alias HOST=public.ecr.aws`,
//! through the helper, whose password comes from a fake ECR Public API (moto has none) with the
//! helper's own IRSA identity exchanged at a fake STS.
//!
//! What BuildKit (v0.8, in Debian's dockerd 20.10) does with the Bearer challenge: it asks the
//! session's `Auth/GetTokenAuthority`, which the helper declines, then `Auth/Credentials`, and
//! fetches the token from the realm itself with the answer; the token server's log says how.
//! On the current engine's containerd store, a `docker buildx build --push` goes the same way.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::dockerd::{self, build_with, Stack};
use common::engine::{in_netns, Engine};
use common::fake_endpoints::FakeEcrPublic;
use common::fake_sts::{FakeSts, Reply};
use common::registry::{self, context, registry_records, Registry};

/// The password the fake ECR Public gives, and the user ECR passwords go with.
const PASSWORD: &str = "ecr-public-password-5f0c2e7a";
const USER: &str = "AWS";

/// The helper's flags and environment: its own IRSA identity exchanged at the fake STS, ECR
/// Public at the fake, the registry aliased to ECR Public, the audit trail in `audit`.
fn configure(cmd: &mut Command, sts: &FakeSts, ecr: &FakeEcrPublic, host: &str, audit: &Path) {
    cmd.args(["--ecr-alias", &format!("{host}=public.ecr.aws")])
        .arg("--audit-log")
        .arg(audit)
        .env("AWS_ENDPOINT_URL_STS", &sts.url)
        .env("AWS_ENDPOINT_URL_ECR_PUBLIC", ecr.url())
        .env("AWS_REGION", "eu-west-1")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_ECR");
}

/// The helper's log level: the router's trace names every call it forwards to the client.
const LOG: &str = "debug,irsa_secrets::session=trace";

/// The parts of an ECR Public test, in the order they are set up (and dropped in reverse: the
/// registry before the daemon, the scratch folder last).
struct World {
    _scratch: tempfile::TempDir,
    sts: FakeSts,
    ecr: FakeEcrPublic,
    audit: PathBuf,
    s: Stack,
    reg: Registry,
    host: String,
    image: String,
}

impl World {
    /// A stack on `engine`, the token registry in the daemon's network namespace aliased to ECR
    /// Public, the helper started again once the registry's host is known, and a base image
    /// seeded there.
    fn start(engine: Engine, prefix: &str) -> World {
        registry::available().unwrap();
        let scratch = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let sts = FakeSts::start(Reply::ok());
        let ecr = FakeEcrPublic::start(PASSWORD);
        let audit = scratch.path().join("audit.jsonl");
        let mut s = Stack::start_on(engine, &format!("{prefix}-stack"), LOG, |_| {});
        s.r.watch(PASSWORD.as_bytes());
        let reg = Registry::start_with_tokens_in(
            s.daemon.netns_pid(),
            &scratch.path().join("registry"),
            USER,
            PASSWORD,
        );
        let host = reg.host.clone();
        s.restart_helper(LOG, |cmd| configure(cmd, &sts, &ecr, &host, &audit));
        let image = reg.seed(&s.daemon, "base", USER, PASSWORD);
        World {
            _scratch: scratch,
            sts,
            ecr,
            audit,
            s,
            reg,
            host,
            image,
        }
    }
}

/// The token server's requests since `from`, as `METHOD auth admitted` strings.
fn token_requests(reg: &Registry, from: usize) -> Vec<String> {
    reg.tokens().requests()[from..]
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or("?").to_string();
            format!("{} {} {}", text("method"), text("auth"), r["admitted"])
        })
        .collect()
}

engines!(ecr_public_passwords_fetch_registry_tokens_through_the_helper);

/// On `engine`; the registry listens where the daemon can reach it (in its network
/// namespace), so the helper starts again once the registry's host is known.
fn ecr_public_passwords_fetch_registry_tokens_through_the_helper(engine: Engine) {
    if dockerd::skip() {
        return;
    }
    let World {
        _scratch,
        sts,
        ecr,
        audit,
        mut s,
        reg,
        host,
        image,
    } = World::start(engine, "irsa-ecrpub");
    let seeded = reg.tokens().requests().len();
    assert!(seeded > 0, "the seed's login and push fetched no token");
    eprintln!("token requests of the seed: {:?}", token_requests(&reg, 0));
    let ctx = context(&s.dir, "pull", &image);

    // The control: the daemon alone, with no credentials anywhere, gets no token. The current
    // BuildKit has its client fetch the anonymous token (the session's `Auth/FetchToken`), so
    // the CLI runs where the token server is.
    let control = || build_with(engine, &s.daemon.socket, &ctx, &s.r);
    let (ok, text) = match s.daemon.netns_pid() {
        Some(pid) => in_netns(pid, control),
        None => control(),
    };
    assert!(!ok, "the control build passed:\n{text}");
    assert!(text.contains("401"), "no 401 in the control build:\n{text}");
    let control = token_requests(&reg, seeded);
    eprintln!("token requests of the control build: {control:?}");
    let after_control = reg.tokens().requests().len();

    // Through the helper: several builds on one ECR Public call.
    let builds = 3;
    for i in 0..builds {
        let (ok, text) = s.build(&ctx, &[]);
        s.assert_built(ok, &text);
        eprintln!("build {i} through the helper: passed");
    }
    assert_eq!(ecr.calls(), 1, "ECR Public calls for {builds} builds");
    let fetched = token_requests(&reg, after_control);
    eprintln!("token requests of {builds} builds through the helper: {fetched:?}");
    assert!(
        fetched.iter().any(|r| r.ends_with(" true")),
        "no token was fetched with the helper's password: {fetched:?}"
    );
    let log = s.helper.log_text();
    let count = |what: &str| log.matches(what).count();
    eprintln!(
        "Auth calls the helper answered: GetTokenAuthority declined {}, VerifyTokenAuthority \
         declined {}, Credentials served from ECR Public {}; forwarded: FetchToken {}",
        count("declining GetTokenAuthority"),
        count("declining VerifyTokenAuthority"),
        count("registry credentials served from ECR"),
        count("/moby.filesync.v1.Auth/FetchToken"),
    );
    assert!(count("declining GetTokenAuthority") >= 1, "{log}");
    // The control build left BuildKit an anonymous token fetcher for the host, whose key any
    // client without credentials proves: declined, BuildKit does not link it.
    assert!(count("declining VerifyTokenAuthority") >= 1, "{log}");
    assert_eq!(count("/moby.filesync.v1.Auth/FetchToken"), 0, "{log}");
    let served = registry_records(&audit)
        .into_iter()
        .filter(|r| r["source"] == "ecr" && r["outcome"] == "served" && r["host"] == host.as_str())
        .count();
    assert!(served >= builds, "{served} ECR records for {builds} builds");

    // ECR Public refusing, on a fresh helper (nothing cached): the pull goes on anonymously,
    // and the token server turns it away.
    ecr.deny(true);
    s.restart_helper(LOG, |cmd| configure(cmd, &sts, &ecr, &host, &audit));
    let (ok, text) = s.build(&ctx, &[]);
    assert!(!ok, "built with ECR Public refusing:\n{text}");
    assert!(
        text.contains("401"),
        "no 401 with ECR Public refusing:\n{text}"
    );
    eprintln!(
        "build error with ECR Public refusing: {:?}",
        text.lines()
            .rfind(|l| l.contains("401") || l.contains("error"))
            .unwrap_or_default()
    );
    let refused = registry_records(&audit)
        .into_iter()
        .filter(|r| r["outcome"] == "error")
        .count();
    eprintln!(
        "ECR Public calls for the refused build: {} (Credentials asked: {refused})",
        ecr.calls() - 1
    );
    assert_eq!(
        ecr.calls() - 1,
        1,
        "ECR Public calls for the refused build, one session"
    );
    assert!(refused > 1, "one refusal recorded per Credentials request");
    let log = s.helper.log_text();
    assert!(
        log.contains("ecr-public:GetAuthorizationToken") && log.contains("goes on anonymously"),
        "the helper's log does not say ECR Public refused:\n{log}"
    );
}

/// On the current engine's containerd image store: `docker buildx build --push` to the
/// registry aliased to ECR Public, with no credentials of the client's own, pulls `FROM` and
/// pushes with tokens BuildKit fetched from the realm with the helper's password (one ECR
/// Public call); the token server admitted a push scope.
#[test]
fn buildx_pushes_to_ecr_public_on_the_containerd_store() {
    if dockerd::skip() {
        return;
    }
    let World {
        _scratch,
        sts: _sts,
        ecr,
        audit,
        s,
        reg,
        host,
        image,
    } = World::start(Engine::CurrentContainerd, "irsa-ecrpub-push");
    let seeded = reg.tokens().requests().len();
    let ctx = context(&s.dir, "push", &image);
    let out = s
        .docker()
        .args([
            "buildx",
            "build",
            "--push",
            "--progress=plain",
            "--network=none",
        ])
        .args(["-t", &format!("{host}/app:1")])
        .arg(&ctx)
        .output()
        .unwrap();
    s.r.assert_absent("the push's output", &out.stdout);
    s.r.assert_absent("the push's output", &out.stderr);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    s.assert_built(out.status.success(), &text);
    assert!(
        reg.has("app", "1", USER, PASSWORD),
        "no app:1 in the registry:\n{text}"
    );
    assert_eq!(ecr.calls(), 1, "ECR Public calls for one pull and one push");
    let fetched: Vec<_> = reg.tokens().requests()[seeded..].to_vec();
    eprintln!(
        "token requests of the push: {:?}",
        token_requests(&reg, seeded)
    );
    assert!(
        fetched.iter().any(|r| r["admitted"] == true
            && r["scopes"].to_string().contains("repository:app:")
            && r["scopes"].to_string().contains("push")),
        "no push token fetched with the helper's password: {fetched:?}"
    );
    let served = registry_records(&audit)
        .into_iter()
        .filter(|r| r["source"] == "ecr" && r["outcome"] == "served")
        .count();
    eprintln!("Auth/Credentials served from ECR Public for the push: {served}");
    assert!(served >= 1, "no ECR record");
}
