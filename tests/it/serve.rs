//! `irsa-secrets serve` end to end: the real binary on a temp socket, queried by a tonic client.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{command, run, token, token_with, Helper, Projected, Radioactive, ARN};
use tonic::Code;

fn irsa_env(token_file: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("AWS_ROLE_ARN", ARN.to_string()),
    ]
}

fn start(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&'static str, String)],
    r: &Radioactive,
) -> Helper {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Helper::serve(dir, args, &env, r)
}

#[tokio::test]
async fn serves_the_identity_and_answers_not_found_for_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let t = token(3600, -10);
    r.watch(t.as_bytes());
    let p = Projected::new(&dir.path().join("sa"), &t);
    let mut env = irsa_env(&p.token_path());
    env.push(("AWS_REGION", "eu-west-1".into()));
    let h = start(dir.path(), &[], &env, &r);
    let mut c = h.client().await;
    assert_eq!(
        h.get(&mut c, "aws-web-identity-token")
            .await
            .unwrap()
            .expose(),
        t.as_bytes()
    );
    assert_eq!(
        h.get(&mut c, "aws-role-arn").await.unwrap().expose(),
        ARN.as_bytes()
    );
    assert_eq!(
        h.get(&mut c, "aws-region").await.unwrap().expose(),
        b"eu-west-1"
    );
    for probe in [
        "GIT_AUTH_TOKEN.github.com",
        "HTTP_AUTH_HEADER_example.com",
        "other",
        "",
    ] {
        let err = h.get(&mut c, probe).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{probe}: {err:?}");
    }
}

#[tokio::test]
async fn ids_are_configurable_and_static_secrets_follow_buildx() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let npmrc = dir.path().join("npmrc");
    std::fs::write(&npmrc, "//registry/:_authToken=npm-secret-value-1").unwrap();
    r.watch(b"npm-secret-value-1");
    r.watch(b"env-secret-value-22");
    let h = start(
        dir.path(),
        &[
            "--mock",
            "--token-id",
            "sa-token",
            "--role-arn-id",
            "role",
            "--secret",
            &format!("id=npm,src={}", npmrc.display()),
            "--secret",
            "id=pat,env=MY_PAT",
            "--secret",
            "id=unset,env=IRSA_SECRETS_TEST_UNSET",
        ],
        &[("MY_PAT", "env-secret-value-22".into())],
        &r,
    );
    let mut c = h.client().await;
    assert!(h.get(&mut c, "sa-token").await.unwrap().len() > 100);
    assert_eq!(
        h.get(&mut c, "role").await.unwrap().expose(),
        irsa_secrets::source::mock::MOCK_ROLE_ARN.as_bytes()
    );
    assert_eq!(
        h.get(&mut c, "aws-web-identity-token")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        h.get(&mut c, "npm").await.unwrap().expose(),
        b"//registry/:_authToken=npm-secret-value-1"
    );
    std::fs::write(&npmrc, "rotated-npm-secret-2").unwrap();
    r.watch(b"rotated-npm-secret-2");
    assert_eq!(
        h.get(&mut c, "npm").await.unwrap().expose(),
        b"rotated-npm-secret-2",
        "files are re-read"
    );
    assert_eq!(
        h.get(&mut c, "pat").await.unwrap().expose(),
        b"env-secret-value-22"
    );
    let err = h.get(&mut c, "unset").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("IRSA_SECRETS_TEST_UNSET is not set"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn rotation_by_symlink_swap_is_seen_between_and_never_torn_during_calls() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let tokens: Vec<String> = (0..200).map(|_| token(3600, -10)).collect();
    for t in &tokens {
        r.watch(t.as_bytes());
    }
    let mut p = Projected::new(&dir.path().join("sa"), &tokens[0]);
    let h = start(dir.path(), &[], &irsa_env(&p.token_path()), &r);
    let mut c = h.client().await;
    assert_eq!(
        h.get(&mut c, "aws-web-identity-token")
            .await
            .unwrap()
            .expose(),
        tokens[0].as_bytes()
    );
    p.swap(&tokens[1]);
    assert_eq!(
        h.get(&mut c, "aws-web-identity-token")
            .await
            .unwrap()
            .expose(),
        tokens[1].as_bytes()
    );

    // Swap continuously on a thread while many calls run.
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let tokens = tokens.clone();
        std::thread::spawn(move || {
            let mut n = 2;
            while !stop.load(Ordering::Relaxed) {
                p.swap(&tokens[n % tokens.len()]);
                n += 1;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            n
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..150 {
                got.push(common::get_secret(&mut c, "aws-web-identity-token").await);
            }
            got
        }));
    }
    for task in tasks {
        for result in task.await.unwrap() {
            let value = result.expect("a read during a swap must not fail");
            assert!(
                tokens.iter().any(|t| t.as_bytes() == value.expose()),
                "torn or unknown token"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 50, "only {swaps} swaps happened during the calls");
}

#[tokio::test]
async fn bad_tokens_are_refused_with_the_file_and_the_reason_and_other_ids_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let file = dir.path().join("token");
    std::fs::write(&file, token(3600, -10)).unwrap();
    let h = start(
        dir.path(),
        &["--expiry-margin", "10m"],
        &irsa_env(&file),
        &r,
    );
    let mut c = h.client().await;
    let huge = "a".repeat(600 * 1024);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (token(-30, -3600).into_bytes(), "expired at"),
        (token(7200, 3600).into_bytes(), "is not valid before"),
        (
            token_with(3600, -10, "kubernetes.default.svc").into_bytes(),
            "expected \"sts.amazonaws.com\"",
        ),
        (b"not-a-jwt".to_vec(), "1 dot-separated part,"),
        (b"".to_vec(), "is empty"),
        (b"\xff\xfe\xfd.\x80.\x81".to_vec(), "not UTF-8"),
        (huge.into_bytes(), "larger than 500 KiB"),
    ];
    for (content, reason) in cases {
        r.watch(&content);
        std::fs::write(&file, &content).unwrap();
        let err = h.get(&mut c, "aws-web-identity-token").await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{reason}: {err:?}");
        assert!(
            err.message().contains(reason),
            "{reason}: {}",
            err.message()
        );
        assert!(
            err.message().contains(&file.display().to_string()),
            "names the file: {}",
            err.message()
        );
        assert_eq!(
            h.get(&mut c, "aws-role-arn").await.unwrap().expose(),
            ARN.as_bytes()
        );
    }
    // Close to expiry: served, with a warning in the log.
    let soon = token(120, -3600);
    r.watch(soon.as_bytes());
    std::fs::write(&file, &soon).unwrap();
    assert_eq!(
        h.get(&mut c, "aws-web-identity-token")
            .await
            .unwrap()
            .expose(),
        soon.as_bytes()
    );
    assert!(h.log_text().contains("expires soon"));

    // Missing file: a clear error naming it; the helper keeps serving.
    std::fs::remove_file(&file).unwrap();
    let err = h.get(&mut c, "aws-web-identity-token").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("No such file")
            && err.message().contains("AWS_WEB_IDENTITY_TOKEN_FILE"),
        "{}",
        err.message()
    );
    std::fs::create_dir(&file).unwrap();
    let err = h.get(&mut c, "aws-web-identity-token").await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "a directory is an I/O error: {err:?}"
    );
    assert_eq!(
        h.get(&mut c, "aws-role-arn").await.unwrap().expose(),
        ARN.as_bytes()
    );
}

#[tokio::test]
async fn an_unreadable_token_is_permission_denied() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to run the helper as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = Radioactive::default();
    let file = dir.path().join("token");
    let t = token(3600, -10);
    r.watch(t.as_bytes());
    std::fs::write(&file, &t).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let socket = dir.path().join("helper.sock");
    let program = common::runnable_copy(dir.path());
    let mut cmd = common::command_for(&program);
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    cmd.args(["serve", "--socket-mode", "666", "--listen"])
        .arg(format!("unix://{}", socket.display()));
    let env = irsa_env(&file);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let h = Helper::spawn(cmd, socket, dir.path(), &env, &r);
    let mut c = h.client().await;
    let err = h.get(&mut c, "aws-web-identity-token").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("fsGroup"), "{}", err.message());
}

#[tokio::test]
async fn a_thousand_concurrent_calls_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let t = token(3600, -10);
    r.watch(t.as_bytes());
    let file = dir.path().join("token");
    std::fs::write(&file, &t).unwrap();
    let h = start(dir.path(), &[], &irsa_env(&file), &r);
    let c = h.client().await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let mut c = c.clone();
        let id = if i % 2 == 0 {
            "aws-web-identity-token"
        } else {
            "aws-role-arn"
        };
        set.spawn(async move { (id, common::get_secret(&mut c, id).await) });
    }
    let mut ok = 0;
    while let Some(joined) = set.join_next().await {
        let (id, result) = joined.unwrap();
        let want: &[u8] = if id == "aws-role-arn" {
            ARN.as_bytes()
        } else {
            t.as_bytes()
        };
        assert_eq!(result.unwrap().expose(), want);
        ok += 1;
    }
    assert_eq!(ok, 1000);
}

#[tokio::test]
async fn sockets_are_private_refuse_a_second_helper_and_vanish_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let mut h = start(dir.path(), &["--mock"], &[], &r);
    let mode = std::fs::metadata(&h.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = run(
        command()
            .args(["serve", "--mock", "--listen"])
            .arg(format!("unix://{}", h.socket.display())),
        &r,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by a running process"));
    let status = h.terminate();
    assert!(status.success(), "graceful exit: {status}");
    assert!(!h.socket.exists(), "the socket is removed on shutdown");
    // A stale socket (left by a crash) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&h.socket).unwrap());
    let h2 = start(dir.path(), &["--mock"], &[], &r);
    let mut c = h2.client().await;
    assert!(h2.get(&mut c, "aws-role-arn").await.is_ok());
}

#[test]
fn token_and_doctor_describe_without_revealing() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let t = token(3600, -10);
    r.watch(t.as_bytes());
    let signature = t.rsplit('.').next().unwrap().to_string();
    r.watch(signature.as_bytes());
    let file = dir.path().join("token");
    std::fs::write(&file, &t).unwrap();
    let env = irsa_env(&file);

    let out = run(command().args(["token", "--json"]).envs(env.clone()), &r);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["claims"]["sub"], "system:serviceaccount:ci:runner");
    assert!(json["remaining_seconds"].as_u64().unwrap() > 3500);

    let out = run(command().arg("doctor").envs(env.clone()), &r);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all checks passed"), "{text}");

    std::fs::write(&file, token(-10, -3600)).unwrap();
    let out = run(command().arg("doctor").envs(env.clone()), &r);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  the token expired at") && text.contains("fix:"),
        "{text}"
    );

    let out = run(command().arg("doctor"), &r);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("FAIL  no identity: none of AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN")
            && text.contains("fix:"),
        "{text}"
    );

    let out = run(
        command().args(["serve", "--listen", "unix:///tmp/x.sock"]),
        &r,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--mock"),
        "the error says what to do next"
    );
}

#[test]
fn mock_write_produces_files_the_irsa_source_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let out = run(
        command().args(["mock", "write"]).arg(dir.path().join("id")),
        &r,
    );
    assert!(out.status.success());
    let token_path = dir.path().join("id/token");
    assert_eq!(
        std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    r.watch(&std::fs::read(&token_path).unwrap());
    let env = std::fs::read_to_string(dir.path().join("id/env")).unwrap();
    let vars: Vec<(String, String)> = env
        .lines()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .unwrap()
        })
        .collect();
    let out = run(command().arg("doctor").envs(vars), &r);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
