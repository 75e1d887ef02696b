//! `irsa-secrets run [FLAGS] -- CMD...` with the real docker CLI and a private dockerd: CMD's
//! builds get the secrets with no --secret flag, CMD's exit code is run's, a signal reaches CMD
//! mid-build, and the helper is gone once run returns.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dockerd::{self, context, Dockerd, BASE_IMAGE};
use common::engine::Engine;

/// The mock identity's role ARN, which a step checks it was given.
const MOCK_ARN: &str = "arn:aws:iam::111122223333:role/irsa-secrets-mock";

/// `irsa-secrets run ARGS...` with the daemon at `daemon` as DOCKER_HOST and its engine's CLI
/// plugins, as a user's shell would have them.
fn run(daemon: &Dockerd, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_irsa-secrets"));
    cmd.arg("run")
        .args(args)
        .env("DOCKER_HOST", format!("unix://{}", daemon.socket.display()))
        .env_remove("DOCKER_BUILDKIT")
        .env("DOCKER_CONFIG", daemon.engine.docker_config(&daemon.root))
        .env_remove("BUILDKIT_HOST")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_ROLE_ARN")
        .stdin(Stdio::null());
    cmd
}

/// `--mock -- DOCKER build ... ctx` with `engine`'s CLI.
fn build_args(engine: Engine, ctx: &Path) -> Vec<String> {
    let docker = engine.cli().display().to_string();
    [
        "--mock",
        "--",
        &docker,
        "build",
        "--network=none",
        "--progress=plain",
        "--no-cache",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([ctx.display().to_string()])
    .collect()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// How many children `pid` has: the helper, then CMD too once it runs.
fn children(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .map(|list| list.split_whitespace().count())
        .sum()
}

engines!(run_gives_cmd_the_secrets_its_exit_code_and_its_signals);

/// On each engine with its own CLI: what a laptop or a GitHub-hosted runner has.
fn run_gives_cmd_the_secrets_its_exit_code_and_its_signals(engine: Engine) {
    if dockerd::skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Dockerd::start_on(engine, &dir.path().join("d"));

    // A build through `run` gets the identity; the same build on the daemon itself does not.
    let ctx = context(
        dir.path(),
        "reads",
        &format!(
            "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=aws-role-arn,required \
             test \"$(cat /run/secrets/aws-role-arn)\" = {MOCK_ARN} && echo role-served\n"
        ),
    );
    let args = build_args(engine, &ctx);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&daemon, &args).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("role-served"), "{}", text(&out));
    let direct = daemon
        .docker()
        .args(["build", "--network=none", "--progress=plain", "--no-cache"])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(!direct.status.success(), "{}", text(&direct));

    // CMD's exit code is run's: a command's own, and a failing build's. CMD sees buildctl's
    // variable at the helper too, and BuildKit on (the 20.10 CLI's legacy builder has no
    // session); a DOCKER_BUILDKIT of the caller's is kept.
    let check =
        "test \"$BUILDKIT_HOST\" = \"$DOCKER_HOST\" && test \"$DOCKER_BUILDKIT\" = 1 && exit 7";
    let out = run(&daemon, &["--mock", "--", "sh", "-c", check])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let out = run(
        &daemon,
        &["--mock", "--", "sh", "-c", "exit \"$DOCKER_BUILDKIT\""],
    )
    .env("DOCKER_BUILDKIT", "0")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run(
        &daemon,
        &["--mock", "--listen", "unix:///tmp/x.sock", "--", "true"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("drop --listen"), "{}", text(&out));

    // A signal that ends CMD gives the shell's code for it: SIGTERM, passed on to CMD, is 143.
    let mut child = run(&daemon, &["--mock", "--", "sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::eventually(Duration::from_secs(10), "run has started sleep", || {
        (children(child.id()) == 2).then_some(())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(143));
    let failing = context(
        dir.path(),
        "fails",
        &format!("FROM {BASE_IMAGE}\nRUN exit 3\n"),
    );
    let args = build_args(engine, &failing);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&daemon, &args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "docker build's code:\n{}",
        text(&out)
    );

    // A signal mid-build reaches CMD (the build is cancelled long before its step ends), and
    // the helper has stopped and its private socket is gone when run returns.
    let long = context(
        dir.path(),
        "long",
        &format!(
            "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=aws-role-arn echo step-running && sleep 120\n"
        ),
    );
    let script = format!(
        "echo \"$DOCKER_HOST\"; exec {} build --network=none --progress=plain --no-cache {} 2>&1",
        engine.cli().display(),
        long.display()
    );
    let started = Instant::now();
    let mut child = run(&daemon, &["--mock", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let socket = lines.next().unwrap().unwrap();
    let socket = socket.strip_prefix("unix://").unwrap().to_string();
    assert!(Path::new(&socket).exists(), "{socket}");
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let running = line.contains("step-running");
        seen.push(line);
        if running {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("step-running")),
        "{}",
        seen.join("\n")
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(100),
        "the build was not cancelled:\n{}",
        rest.join("\n")
    );
    assert!(!status.success(), "{}", rest.join("\n"));
    assert!(
        !Path::new(&socket).exists(),
        "the helper's socket outlived run"
    );
}
