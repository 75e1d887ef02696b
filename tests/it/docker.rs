//! The Docker front door against a real dockerd and the real docker CLI, on each engine
//! (tests/it/common/engine.rs: Debian's docker.io 20.10 with BuildKit v0.8, and the current
//! Docker Engine from sid with either image store): builds through the helper socket get the
//! IRSA secrets with no `--secret` flag, everything else about the build is unchanged.
//!
//! One test per engine drives every scenario on one private daemon, so the daemon starts once
//! and is stopped (by `Drop`) whatever happens.

use crate::common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::dockerd::{self, docker_on, start_long_build, wait_with_timeout, Stack, BASE_IMAGE};
use common::engine::Engine;
use common::{command, sha, Helper, ARN};

engines!(docker_build_through_the_helper);

fn docker_build_through_the_helper(engine: Engine) {
    if dockerd::skip() {
        return;
    }
    let s = Stack::start_on(engine, "irsa-docker-", "debug", |_| {});

    let started = Instant::now();
    let step = |name: &str| eprintln!("[{:>6.1}s] {name}", started.elapsed().as_secs_f64());
    secrets_arrive_without_flags_and_the_clients_own_secrets_still_work(&s);
    step("secrets arrive; the client's own secrets still work");
    if engine.is_current() {
        buildx_and_the_older_cli_build_through_the_helper(&s);
        step("`docker buildx build` (docker driver) and the 20.10 CLI on the current engine");
        bake_and_compose_build_every_target_with_the_secrets(&s);
        step("`docker buildx bake` and `docker compose build`, two targets each");
    }
    let baseline = s.helper_fds();
    a_missing_required_secret_fails_with_buildkits_message_and_the_helper_carries_on(&s);
    step(
        "a missing required secret fails the build; optional ones are absent; a long id is refused",
    );
    a_large_context_arrives_intact(&s);
    step("a 210 MB context in 5,000 files arrives intact");
    eight_parallel_builds(&s);
    step("8 parallel builds");
    buildkit_api_clients_reach_dockerd_through_the_helper(&s);
    step(
        "BuildKit API (HTTP/2) clients bridged to dockerd's /grpc; a Control/Session stays healthy",
    );
    the_session_stays_healthy_over_a_long_step(&s);
    step("a 35 s step: the session answers the daemon's health checks, the next step's secret arrives");
    let s = killed_client_and_restarted_daemon(s);
    step("killed client, restarted daemon");
    the_image_holds_neither_value(&s);
    step("the image holds neither value");
    other_engine_calls_pass_through(&s);
    step("other Engine API calls pass: run (hijacked attach), exec, logs, inspect");
    sts_credentials_reach_a_build_step(&s);
    step("STS: a RUN step gets an aws-credentials file holding the keys moto issued");
    scan_reports_clean_images_and_finds_every_leak(&s);
    step("scan: a clean build reports nothing; file, ENV, label and build-arg leaks are found");
    s.assert_descriptors_back_to(baseline);
    step("descriptors back to baseline");
}

fn secrets_arrive_without_flags_and_the_clients_own_secrets_still_work(s: &Stack) {
    let ctx = s.context(
        "secrets",
        "RUN --mount=type=secret,id=aws-web-identity-token --mount=type=secret,id=aws-role-arn \
         sha256sum /run/secrets/aws-web-identity-token /run/secrets/aws-role-arn",
    );
    let out = s.build_ok(&ctx, &["-t", "irsa-test-secrets"]);
    s.assert_step_saw_the_identity(&out);

    // The client's own --secret: an id the helper does not own arrives intact, and an id the
    // helper owns is overridden by the client's value (explicit beats implicit).
    let other = s.dir.join("other.txt");
    std::fs::write(&other, "client-side-secret-value-0042").unwrap();
    s.r.watch(b"client-side-secret-value-0042");
    let arn_override = s.dir.join("arn-override.txt");
    std::fs::write(&arn_override, "arn:aws:iam::999988887777:role/override").unwrap();
    s.r.watch(b"arn:aws:iam::999988887777:role/override");
    let ctx = s.context(
        "client-secrets",
        "RUN --mount=type=secret,id=aws-web-identity-token --mount=type=secret,id=aws-role-arn \
         --mount=type=secret,id=other sha256sum /run/secrets/aws-web-identity-token \
         /run/secrets/aws-role-arn /run/secrets/other",
    );
    let out = s.build_ok(
        &ctx,
        &[
            "--secret",
            &format!("id=other,src={}", other.display()),
            "--secret",
            &format!("id=aws-role-arn,src={}", arn_override.display()),
        ],
    );
    assert!(
        out.contains(&format!(
            "{}  /run/secrets/other",
            sha(b"client-side-secret-value-0042")
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}  /run/secrets/aws-role-arn",
            sha(b"arn:aws:iam::999988887777:role/override")
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}  /run/secrets/aws-web-identity-token",
            sha(s.token.as_bytes())
        )),
        "{out}"
    );
    assert!(s
        .helper
        .log_text()
        .contains("the client's own --secret wins"));
}

/// On the current engine: buildx's own `build` command (the docker driver) through the helper,
/// and Debian's 20.10 CLI (its built-in BuildKit client) against the current daemon.
fn buildx_and_the_older_cli_build_through_the_helper(s: &Stack) {
    let ctx = s.context(
        "buildx",
        "RUN --mount=type=secret,id=aws-web-identity-token --mount=type=secret,id=aws-role-arn \
         sha256sum /run/secrets/aws-web-identity-token /run/secrets/aws-role-arn",
    );
    for (what, mut cmd, sub) in [
        ("docker buildx build", s.docker(), &["buildx", "build"][..]),
        ("the 20.10 CLI", docker_on(&s.helper.socket), &["build"][..]),
    ] {
        let text = s.run_ok(
            what,
            cmd.args(sub)
                .args(["--network=none", "--progress=plain", "--no-cache"])
                .arg(&ctx),
        );
        s.assert_step_saw_the_identity(&text);
    }
}

/// `docker buildx bake` and `docker compose build` of two targets in one invocation, through
/// the helper: each target's step gets the served identity.
fn bake_and_compose_build_every_target_with_the_secrets(s: &Stack) {
    let project = s.dir.join("project");
    for t in ["one", "two"] {
        common::dockerd::context(
            &project,
            t,
            &format!(
                "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=aws-role-arn,required \
                 echo target-{t} && sha256sum /run/secrets/aws-role-arn\n"
            ),
        );
    }
    std::fs::write(
        project.join("docker-bake.hcl"),
        "group \"default\" { targets = [\"one\", \"two\"] }\n\
         target \"one\" {\n  context = \"one\"\n  network = \"none\"\n  no-cache = true\n}\n\
         target \"two\" {\n  context = \"two\"\n  network = \"none\"\n  no-cache = true\n}\n",
    )
    .unwrap();
    std::fs::write(
        project.join("compose.yaml"),
        "services:\n\
         \x20 one:\n    image: irsa-test-compose-one\n    build:\n      context: one\n      network: none\n\
         \x20 two:\n    image: irsa-test-compose-two\n    build:\n      context: two\n      network: none\n",
    )
    .unwrap();
    let want = format!("{}  /run/secrets/aws-role-arn", sha(ARN.as_bytes()));
    for (what, args) in [
        (
            "bake",
            &[
                "buildx",
                "bake",
                "-f",
                "docker-bake.hcl",
                "--progress=plain",
            ][..],
        ),
        (
            "compose",
            &["compose", "--progress=plain", "build", "--no-cache"][..],
        ),
    ] {
        let text = s.run_ok(what, s.docker().args(args).current_dir(&project));
        for t in ["one", "two"] {
            assert!(
                text.contains(&format!("target-{t}")),
                "{what}: no {t}:\n{text}"
            );
        }
        assert_eq!(
            text.matches(&want).count(),
            2,
            "{what}: both steps saw the ARN:\n{text}"
        );
    }
}

fn a_missing_required_secret_fails_with_buildkits_message_and_the_helper_carries_on(s: &Stack) {
    let ctx = s.context("missing", "RUN --mount=type=secret,id=nobody-has-this,required sha256sum /run/secrets/nobody-has-this");
    let (ok, out) = s.build(&ctx, &[]);
    assert!(!ok, "{out}");
    assert!(
        dockerd::says_secret_not_found(&out, "nobody-has-this"),
        "{out}"
    );
    // An optional secret nobody has is simply absent, as with buildx.
    let ctx = s.context(
        "optional",
        "RUN --mount=type=secret,id=nobody-has-this test ! -e /run/secrets/nobody-has-this",
    );
    s.build_ok(&ctx, &[]);

    // A Dockerfile's overlong id is refused by its length, and the helper's log holds a
    // bounded quote of it, not the id.
    let id = format!("long-{}", "x".repeat(1995));
    let ctx = s.context(
        "long-id",
        &format!("RUN --mount=type=secret,id={id},required true"),
    );
    let (ok, out) = s.build(&ctx, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("the secret id is 2000 bytes, over the limit of 512"),
        "{out}"
    );
    let log = s.helper.log_text();
    assert!(!log.contains(&id), "the whole id is in the log");
    assert!(log.contains("…[2000 bytes]"), "{}", common::tail(&log));
}

/// Deterministic, incompressible file contents.
fn fill(buf: &mut [u8], mut seed: u64) {
    for chunk in buf.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
}

fn a_large_context_arrives_intact(s: &Stack) {
    const FILES: usize = 5000;
    const SIZE: usize = 42 * 1024;
    let ctx = s.context(
        "large",
        "RUN --mount=type=bind,target=/ctx cd /ctx/data && find . -type f | sort | xargs sha256sum | sha256sum",
    );
    let mut buf = vec![0u8; SIZE];
    for i in 0..FILES {
        let sub = ctx.join(format!("data/d{:02}", i % 50));
        std::fs::create_dir_all(&sub).unwrap();
        fill(&mut buf, i as u64 + 1);
        std::fs::write(sub.join(format!("f{i:05}.bin")), &buf).unwrap();
    }
    const { assert!(FILES * SIZE >= 200 * 1000 * 1000) };
    let local = Command::new("/bin/busybox")
        .args([
            "sh",
            "-c",
            "cd data && find . -type f | sort | xargs sha256sum | sha256sum",
        ])
        .current_dir(&ctx)
        .output()
        .unwrap();
    let want = String::from_utf8_lossy(&local.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(want.len(), 64);
    let out = s.build_ok(&ctx, &[]);
    assert!(
        out.contains(&format!("{want}  -")),
        "checksum of the context inside the build differs:\n{out}"
    );
    std::fs::remove_dir_all(ctx.join("data")).unwrap();
}

fn eight_parallel_builds(s: &Stack) {
    let want = format!(
        "{}  /run/secrets/aws-web-identity-token",
        sha(s.token.as_bytes())
    );
    let children: Vec<(usize, Child)> = (0..8)
        .map(|i| {
            let ctx = s.context(
                &format!("parallel-{i}"),
                // A file of its own: no two builds commit the same layer at once (the classic
                // store's race, moby/buildkit#5469).
                &format!("RUN --mount=type=secret,id=aws-web-identity-token echo build-{i} > /build-number && sha256sum /run/secrets/aws-web-identity-token"),
            );
            (i, s.build_cmd(&ctx, &[]).spawn().unwrap())
        })
        .collect();
    for (i, child) in children {
        let out = wait_with_timeout(child, Duration::from_secs(300));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "parallel build {i} failed:\n{text}");
        assert!(text.contains(&want), "parallel build {i}:\n{text}");
    }
}

/// A step longer than any BuildKit's health-check timeout (10 s for v0.8, 30 s for v0.10.4 to
/// v0.29, 15 s from v0.30; protocol.md §8): the session stays alive through it, so the next
/// step's secret still arrives.
fn the_session_stays_healthy_over_a_long_step(s: &Stack) {
    let ctx = s.context(
        "long-step",
        "RUN sleep 35\nRUN --mount=type=secret,id=aws-role-arn,required sha256sum /run/secrets/aws-role-arn",
    );
    let out = s.build_ok(&ctx, &[]);
    assert!(out.contains(&sha(ARN.as_bytes())), "{out}");
}

fn killed_client_and_restarted_daemon(mut s: Stack) -> Stack {
    // A client killed mid-build: the helper drops the session and serves the next build.
    let mut victim = start_long_build(&s, "killed");
    victim.kill().unwrap();
    victim.wait().unwrap();
    let quick = s.context(
        "after-kill",
        "RUN --mount=type=secret,id=aws-role-arn sha256sum /run/secrets/aws-role-arn",
    );
    let out = s.build_ok(&quick, &[]);
    assert!(out.contains(&sha(ARN.as_bytes())), "{out}");

    // The daemon restarted mid-build: that build fails with a clear error, the next succeeds.
    let child = start_long_build(&s, "restarted");
    s.daemon.restart();
    let out = wait_with_timeout(child, Duration::from_secs(120));
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "a build whose daemon went away cannot succeed:\n{text}"
    );
    assert!(!text.trim().is_empty(), "the failed build says why");
    let out = s.build_ok(&quick, &[]);
    assert!(out.contains(&sha(ARN.as_bytes())), "{out}");
    s
}

fn the_image_holds_neither_value(s: &Stack) {
    let out = s
        .daemon
        .docker()
        .args(["save", "irsa-test-secrets"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.len() > 100_000,
        "the saved image holds the base layer"
    );
    s.r.assert_absent("the built image (docker save)", &out.stdout);
}

/// An HTTP/2 client on the helper socket gets BuildKit's API, bridged to dockerd's `/grpc`.
fn buildkit_api_clients_reach_dockerd_through_the_helper(s: &Stack) {
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower::{Service, ServiceExt};

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let io = tokio::net::UnixStream::connect(&s.helper.socket)
            .await
            .unwrap();
        let mut control = common::tunnel_io::handshake(io).await;
        let res = control
            .ready()
            .await
            .unwrap()
            .call(common::tunnel_io::call(
                "/moby.buildkit.v1.Control/ListWorkers",
                &[0, 0, 0, 0, 0],
            ))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let collected = res.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
            Some("0"),
            "{trailers:?}"
        );
        let body = collected.to_bytes();
        assert!(
            body.windows(5).any(|w| w == b"linux"),
            "ListWorkers names a linux worker: {body:?}"
        );

        let res = control
            .ready()
            .await
            .unwrap()
            .call(common::tunnel_io::call(
                "/not.a.real.Service/Method",
                &[0, 0, 0, 0, 0],
            ))
            .await
            .unwrap();
        let status = res.headers().get("grpc-status").cloned();
        let trailers = res
            .into_body()
            .collect()
            .await
            .unwrap()
            .trailers()
            .cloned()
            .unwrap_or_default();
        let code = status
            .or_else(|| trailers.get("grpc-status").cloned())
            .unwrap();
        assert_eq!(
            code, "12",
            "an unknown method reaches BuildKit, which answers Unimplemented"
        );

        // A session opened with Control/Session survives BuildKit v0.8's health checks (every
        // second, the first miss is fatal) through the splice.
        let checks = Arc::new(AtomicUsize::new(0));
        let session = tokio::spawn(common::session_client::client_session(
            control.clone(),
            "irsa-test-control-session-01".into(),
            None,
            checks.clone(),
        ));
        // Three checks answered, a second apart, with the session still open: it survived them.
        common::eventually_async(
            Duration::from_secs(30),
            common::later(|| {
                format!(
                    "three health checks reach the client (only {} did)",
                    checks.load(Ordering::Relaxed)
                )
            }),
            || async {
                assert!(!session.is_finished(), "the daemon dropped the session");
                (checks.load(Ordering::Relaxed) >= 3).then_some(())
            },
        )
        .await;
        assert!(!session.is_finished(), "the daemon dropped the session");
        session.abort();
    });
}

/// `irsa-secrets scan` on images the real daemon built: the secret-mount build is clean; each
/// way of copying a secret into an image is found.
fn scan_reports_clean_images_and_finds_every_leak(s: &Stack) {
    let token_file = s.dir.join("sa/token").display().to_string();
    let scan = |image: &str| {
        let out = common::run(
            command()
                .args(["scan", "--format", "json", image])
                .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
                .env("AWS_ROLE_ARN", ARN)
                .env(
                    "DOCKER_HOST",
                    format!("unix://{}", s.daemon.socket.display()),
                ),
            &s.r,
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, text, err) = scan("docker://irsa-test-secrets");
    assert_eq!(
        code,
        Some(0),
        "the secret-mount build is clean:\n{text}\n{err}"
    );

    let leaks = [
        ("leak-file", "RUN --mount=type=secret,id=aws-web-identity-token cp /run/secrets/aws-web-identity-token /leaked", "\"path\": \"leaked\""),
        ("leak-env", "ARG T\nENV LEAKED=$T", "Env"),
        ("leak-label", "ARG T\nLABEL leaked=$T", "Labels"),
        ("leak-arg", "ARG T\nRUN echo using-the-arg", "created_by"),
    ];
    for (name, dockerfile, place) in leaks {
        let ctx = s.context(name, dockerfile);
        s.build_ok(&ctx, &["-t", name, "--build-arg", &format!("T={ARN}")]);
        let saved = s.dir.join(format!("{name}.tar"));
        let out = s
            .daemon
            .docker()
            .args(["save", "-o"])
            .arg(&saved)
            .arg(name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (code, text, err) = scan(&saved.display().to_string());
        assert_eq!(code, Some(1), "{name}: the leak is found:\n{text}\n{err}");
        assert!(
            text.contains(place),
            "{name}: the finding names {place}:\n{text}"
        );
        std::fs::remove_file(saved).unwrap();
    }
}

/// With `--sts`, a `RUN` step gets a shared-credentials file holding exactly the keys STS (moto)
/// issued, from one STS call.
fn sts_credentials_reach_a_build_step(s: &Stack) {
    use common::moto::Moto;
    use common::sts_build;

    let moto = Moto::start(&s.dir);
    let socket = s.dir.join("sts.sock");
    let mut proxy = command();
    proxy
        .arg("proxy")
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()));
    proxy
        .arg("--upstream")
        .arg(format!("unix://{}", s.daemon.socket.display()));
    proxy.args(sts_build::helper_args(&moto));
    let token_file = s.dir.join("sa/token").display().to_string();
    let helper = Helper::spawn(
        proxy,
        socket,
        &s.dir,
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.as_str()),
            ("AWS_ROLE_ARN", ARN),
        ],
        &s.r,
    );
    let ctx = s.context("sts", &sts_build::dockerfile_step());
    let out = common::dockerd::cli_on(s.daemon.engine, &helper.socket)
        .args(["build", "--network=none", "--progress=plain", "--no-cache"])
        .arg(&ctx)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let issued = sts_build::issued_blocking(&moto);
    for i in &issued {
        s.r.watch(i.secret_access_key.as_bytes());
        s.r.watch(i.session_token.as_bytes());
    }
    s.r.assert_absent("the STS build's output", text.as_bytes());
    assert!(out.status.success(), "{text}\n{}", helper.log_text());
    assert_eq!(issued.len(), 1, "one STS call for the build");
    sts_build::check_credentials_file(&text, &issued[0]);
}

/// Everything that is not a build passes through untouched: `docker run` (create, a hijacked
/// attach stream, start, wait), `exec` (an upgraded stream), `logs` and `inspect`.
fn other_engine_calls_pass_through(s: &Stack) {
    let docker = |args: &[&str]| {
        let out = s.docker().args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "docker {args:?}:\n{text}");
        text
    };
    let out = docker(&[
        "run",
        "--rm",
        "--network=none",
        BASE_IMAGE,
        "echo",
        "attached-through-the-helper",
    ]);
    assert!(out.contains("attached-through-the-helper"), "{out}");
    let id = docker(&[
        "run",
        "-d",
        "--network=none",
        BASE_IMAGE,
        "sh",
        "-c",
        "echo logged-line && sleep 60",
    ]);
    let id = id.trim();
    let out = docker(&["exec", id, "echo", "exec-through-the-helper"]);
    assert!(out.contains("exec-through-the-helper"), "{out}");
    let out = docker(&["exec", "-i", id, "cat"]);
    assert!(out.is_empty(), "stdin closed at once: {out}");
    let out = docker(&["logs", id]);
    assert!(out.contains("logged-line"), "{out}");
    let out = docker(&["inspect", "--format", "{{.State.Running}}", id]);
    assert_eq!(out.trim(), "true");
    docker(&["rm", "-f", id]);
}
