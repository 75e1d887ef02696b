//! What ships, built offline with a private dockerd: the container image's `local` target from
//! a freshly built static binary (non-root, labelled, healthy by its own HEALTHCHECK), and the
//! example Dockerfiles built through the helper, directly and with `irsa-secrets run --mock`.
//!
//! One test drives every scenario on one daemon, which starts once and is stopped by `Drop`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::dockerd::{self, docker_on, Dockerd, BASE_IMAGE};
use common::{bin, command, Helper, Radioactive};
use irsa_secrets::source::mock::MOCK_ROLE_ARN;

/// The image the test builds from the Dockerfile's `local` target.
const IMAGE: &str = "irsa-secrets:ship-test";
/// A stand-in for what the STS variant will serve as `aws-credentials`.
const CREDENTIALS: &str = "[default]\n\
    aws_access_key_id = ASIAZZZZEXAMPLE0SHIP\n\
    aws_secret_access_key = ship-test-secret-access-key-0123456789abcd\n\
    aws_session_token = ship-test-session-token-FwoGZXIvYXdzEXAMPLE\n";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}:\n{}", text(&out));
    text(&out)
}

/// A static binary from `scripts/build-static`. The binary under test is linked against the
/// host's glibc and cannot run in an empty image; a crt-static build needs no extra rustup
/// target (musl is not installable offline). The dev profile keeps the build short, in its own
/// target dir so it neither waits on nor invalidates this test run's build.
fn build_static() -> PathBuf {
    let out = Command::new(repo().join("scripts/build-static"))
        .arg("dev")
        .env("CARGO_TARGET_DIR", repo().join("target/static"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/build-static:\n{}",
        text(&out)
    );
    let path = String::from_utf8(out.stdout).unwrap();
    let path = repo().join(path.lines().last().unwrap());
    assert!(path.is_file(), "{}", path.display());
    path
}

#[test]
fn the_image_and_the_examples_build_offline() {
    if dockerd::skip() {
        return;
    }
    let started = Instant::now();
    let step = |name: &str| eprintln!("[{:>6.1}s] {name}", started.elapsed().as_secs_f64());
    let static_bin = build_static();
    step("static binary built");
    let tmp = tempfile::Builder::new()
        .prefix("irsa-ship-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let daemon = Dockerd::start(&dir.join("d"));

    the_local_image_is_static_nonroot_labelled_and_healthy(&daemon, &dir, &static_bin);
    step("the image's local target: --version, user, labels, HEALTHCHECK");

    let r = Radioactive::default();
    r.watch(MOCK_ROLE_ARN.as_bytes());
    for line in CREDENTIALS.lines().skip(1) {
        r.watch(line.split(" = ").nth(1).unwrap().as_bytes());
    }
    let credentials = dir.join("credentials");
    std::fs::write(&credentials, CREDENTIALS).unwrap();
    let socket = dir.join("helper.sock");
    let mut proxy = command();
    proxy
        .args(["proxy", "--mock", "--secret"])
        .arg(format!("id=aws-credentials,src={}", credentials.display()))
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()))
        .arg("--upstream")
        .arg(format!("unix://{}", daemon.socket.display()));
    let helper = Helper::spawn(proxy, socket, &dir, &[("RUST_LOG", "debug")], &r);

    the_sccache_examples_get_the_identity_through_the_helper(&daemon, &helper, &r);
    step("examples/sccache: Dockerfile and Dockerfile.sts through the helper");
    the_laptop_build_gets_the_mock_identity(&daemon, &r);
    step("examples/laptop: irsa-secrets run --mock -- docker build");
}

fn the_local_image_is_static_nonroot_labelled_and_healthy(
    daemon: &Dockerd,
    dir: &Path,
    static_bin: &Path,
) {
    // The repository's Dockerfile and .dockerignore, with the binary where `local` expects it.
    let ctx = dir.join("image");
    let release = ctx.join("target/x86_64-unknown-linux-gnu/release");
    std::fs::create_dir_all(&release).unwrap();
    for file in ["Dockerfile", ".dockerignore"] {
        std::fs::copy(repo().join(file), ctx.join(file)).unwrap();
    }
    std::fs::copy(static_bin, release.join("irsa-secrets")).unwrap();
    ok(daemon
        .docker()
        .args([
            "build",
            "--network=none",
            "--progress=plain",
            "--target=local",
        ])
        .args(["--build-arg", "SOURCE=https://example.com/irsa-secrets"])
        .args(["-t", IMAGE])
        .arg(&ctx));

    let version = ok(daemon
        .docker()
        .args(["run", "--rm", "--network=none", IMAGE, "--version"]));
    assert_eq!(
        version.trim(),
        format!("irsa-secrets {}", env!("CARGO_PKG_VERSION"))
    );

    let config: serde_json::Value = serde_json::from_str(&ok(daemon.docker().args([
        "inspect",
        "--format",
        "{{json .Config}}",
        IMAGE,
    ])))
    .unwrap();
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/irsa-secrets"]));
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/irsa-secrets", "health"])
    );
    let labels = &config["Labels"];
    for key in ["title", "description", "source", "licenses", "version"] {
        let value = labels[format!("org.opencontainers.image.{key}")]
            .as_str()
            .unwrap_or_default();
        assert!(!value.is_empty(), "label {key} is missing: {labels}");
    }
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION"),
        "the Dockerfile's VERSION default follows Cargo.toml"
    );
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");

    // The helper in the image, on the volume a pod would share: the HEALTHCHECK turns it
    // healthy, and its process runs as 65532.
    let id = ok(daemon
        .docker()
        .args(["run", "-d", "--network=none", "--health-interval=1s"])
        .args(["--tmpfs", "/run/irsa:uid=65532,gid=65532,mode=0700"])
        .args([IMAGE, "serve", "--mock"]));
    let id = id.trim();
    let inspect = |format: &str| {
        ok(daemon.docker().args(["inspect", "--format", format, id]))
            .trim()
            .to_string()
    };
    let unhealthy = || {
        format!(
            "the container is {}: {}\n{}",
            inspect("{{.State.Health.Status}}"),
            inspect("{{json .State.Health}}"),
            ok(daemon.docker().args(["logs", id]))
        )
    };
    common::eventually(
        Duration::from_secs(90),
        common::later(|| format!("the container turns healthy; {}", unhealthy())),
        || {
            let health = inspect("{{.State.Health.Status}}");
            assert!(health != "unhealthy", "{}", unhealthy());
            (health == "healthy").then_some(())
        },
    );
    let pid = inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().nth(1),
        Some("65532"),
        "the helper runs as 65532: {uid}"
    );
    ok(daemon.docker().args(["rm", "-f", id]));
}

/// Builds an example Dockerfile on `socket` with the test base and a stand-in for the build.
fn build_example(socket: &Path, dockerfile: &str) -> Output {
    docker_on(socket)
        .args(example_build_args(dockerfile))
        .output()
        .unwrap()
}

fn example_build_args(dockerfile: &str) -> Vec<String> {
    let dir = repo().join("examples/sccache");
    vec![
        "build".into(),
        "--network=none".into(),
        "--progress=plain".into(),
        "--no-cache".into(),
        "-f".into(),
        dir.join(dockerfile).display().to_string(),
        "--build-arg".into(),
        format!("BASE={BASE_IMAGE}"),
        "--build-arg".into(),
        "BUILD=echo sccache-stand-in: the build runs here".into(),
        dir.display().to_string(),
    ]
}

fn the_sccache_examples_get_the_identity_through_the_helper(
    daemon: &Dockerd,
    helper: &Helper,
    r: &Radioactive,
) {
    let out = build_example(&helper.socket, "Dockerfile");
    let log = text(&out);
    r.assert_absent("build output", log.as_bytes());
    assert!(out.status.success(), "{log}\n{}", helper.log_text());
    assert!(
        log.contains("identity: aws-web-identity-token is a JWT (three parts)"),
        "{log}"
    );
    assert!(
        log.contains("identity: aws-role-arn is an IAM role ARN"),
        "{log}"
    );
    assert!(
        log.contains("sccache-stand-in: the build runs here"),
        "{log}"
    );

    let out = build_example(&helper.socket, "Dockerfile.sts");
    let log = text(&out);
    r.assert_absent("build output", log.as_bytes());
    assert!(out.status.success(), "{log}\n{}", helper.log_text());
    assert!(
        log.contains("identity: aws-credentials is a shared-credentials file with a session token"),
        "{log}"
    );

    // Straight to the daemon, with no helper: the required secret stops the build at once.
    let out = build_example(&daemon.socket, "Dockerfile");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("secret aws-web-identity-token not found"),
        "{}",
        text(&out)
    );
}

fn the_laptop_build_gets_the_mock_identity(daemon: &Dockerd, r: &Radioactive) {
    let out = Command::new(bin())
        .args(["run", "--mock", "--", dockerd::DOCKER])
        .args(example_build_args("Dockerfile"))
        .env("DOCKER_HOST", format!("unix://{}", daemon.socket.display()))
        .env_remove("DOCKER_BUILDKIT")
        .env("DOCKER_CONFIG", daemon.root.join("docker-config"))
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_ROLE_ARN")
        .output()
        .unwrap();
    let log = text(&out);
    r.assert_absent("the laptop build's output", log.as_bytes());
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("identity: aws-web-identity-token is a JWT (three parts)"),
        "{log}"
    );
}
