//! The generated command-line documents: shell completions and the man page come from the clap
//! definitions, so they name every command the binary has.

use crate::common;

use common::{command, run, Radioactive};

fn stdout(args: &[&str]) -> String {
    let out = run(command().args(args), &Radioactive::default());
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_name_the_commands_and_their_flags() {
    let bash = stdout(&["completions", "bash"]);
    assert!(bash.contains("complete -F"), "{bash}");
    for word in ["proxy", "serve", "scan", "health", "--upstream", "--listen"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(stdout(&["completions", shell]).contains("proxy"), "{shell}");
    }
    let out = command().args(["completions", "tcsh"]).output().unwrap();
    assert!(!out.status.success(), "an unknown shell is refused");
}

#[test]
fn man_page_is_roff_with_every_command() {
    let page = stdout(&["man"]);
    assert!(page.contains(".TH irsa-secrets 1"), "{page}");
    assert!(page.contains(".SH NAME"), "{page}");
    for command in ["proxy", "serve", "probe", "doctor", "scan", "completions"] {
        assert!(page.contains(command), "the man page lacks {command}");
    }

    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    stdout(&["man", "--out-dir", out_dir.to_str().unwrap()]);
    for page in [
        "irsa-secrets.1",
        "irsa-secrets-proxy.1",
        "irsa-secrets-mock-write.1",
    ] {
        let text = std::fs::read_to_string(out_dir.join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
    let proxy = std::fs::read_to_string(out_dir.join("irsa-secrets-proxy.1")).unwrap();
    assert!(
        proxy.contains("upstream"),
        "the proxy page documents its flags"
    );
}

#[test]
fn health_says_whether_the_socket_accepts_connections() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("helper.sock");
    let address = format!("unix://{}", socket.display());
    let out = command()
        .args(["health", "--socket", &address])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not accept connections"), "{err}");

    let r = Radioactive::default();
    let _helper = common::Helper::serve(dir.path(), &["--mock"], &[], &r);
    let out = command()
        .args(["health", "--socket", &address])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
}

/// The long flags a `--help` page lists, in order.
fn long_flags(help: &str) -> Vec<String> {
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("-h, ")
                .or(l.strip_prefix("-V, "))
                .unwrap_or(l);
            l.strip_prefix("--").map(|rest| {
                rest.split([' ', '='])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
        })
        .map(|f| format!("--{f}"))
        .collect()
}

const IDENTITY: &[&str] = &["--mock", "--token-file", "--audience", "--expiry-margin"];
const STS: &[&str] = &[
    "--sts",
    "--serve-identity",
    "--session-policy",
    "--policy-arn",
    "--duration",
    "--role-session-name",
    "--sts-endpoint",
];
const IDS: &[&str] = &["--token-id", "--role-arn-id", "--region-id"];
const RUNTIME: &[&str] = &["--log-format", "--worker-threads"];
const ALWAYS: &[&str] = &["--help", "--version"];

#[test]
fn each_command_help_lists_only_the_flags_it_uses() {
    let cat = |groups: &[&[&str]]| -> Vec<String> {
        let mut v: Vec<String> = groups.concat().iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    let serve_flags = [
        &[
            "--listen",
            "--socket-mode",
            "--socket-group",
            "--role-arn",
            "--region",
            "--secret",
            "--identity",
            "--assume-role",
            "--external-id",
        ][..],
        IDENTITY,
        IDS,
        STS,
        RUNTIME,
        ALWAYS,
    ];
    // (command, exactly these long flags, at most this many lines)
    let cases: Vec<(&[&str], Vec<String>, usize)> = vec![
        (&["token"], cat(&[&["--json"], IDENTITY, ALWAYS]), 25),
        (
            &["doctor"],
            // --serve-identity changes nothing a check sees: hidden.
            cat(&[
                &["--role-arn", "--region", "--secret", "--identity"],
                IDENTITY,
                &STS[..1],
                &STS[2..],
                ALWAYS,
            ]),
            100,
        ),
        (
            &["scan"],
            cat(&[
                &["--format", "--max-layer-size", "--max-ratio", "--ignore"],
                &["--role-arn", "--region"],
                &["--mock", "--token-file", "--audience", "--secret"],
                &["--token-id", "--role-arn-id"],
                ALWAYS,
            ]),
            85,
        ),
        (&["serve"], cat(&serve_flags), 170),
        (&["probe"], cat(&[&["--socket"], ALWAYS]), 15),
        (&["health"], cat(&[&["--socket", "--timeout"], ALWAYS]), 15),
        (
            &["mock", "write"],
            cat(&[&["--audience", "--region", "--force"], ALWAYS]),
            20,
        ),
    ];
    for (command, want, max_lines) in cases {
        let help = stdout(&[command, &["--help"]].concat());
        let mut got = long_flags(&help);
        got.sort();
        assert_eq!(got, want, "{command:?} --help:\n{help}");
        let lines = help.lines().count();
        assert!(
            lines <= max_lines,
            "{command:?} --help is {lines} lines:\n{help}"
        );
    }

    // Flags that only matter to the commands serving connections appear only there.
    let proxy = long_flags(&stdout(&["proxy", "--help"]));
    const LIMITS: &[&str] = &[
        "--max-connections",
        "--header-timeout",
        "--idle-timeout",
        "--shutdown-timeout",
    ];
    for flag in RUNTIME.iter().chain(STS).chain(IDS).chain(LIMITS) {
        assert!(proxy.contains(&flag.to_string()), "proxy lacks {flag}");
    }
    assert!(long_flags(&stdout(&["--help"]))
        .iter()
        .all(|f| !RUNTIME.contains(&f.as_str())));

    // Shared flags say what they do where they appear.
    let scan = stdout(&["scan", "--help"]);
    assert!(!scan.contains("Serve a mock identity"), "{scan}");
    assert!(!scan.contains("Threads serving connections"), "{scan}");
    assert!(scan.contains("Look for the mock identity"), "{scan}");
    let doctor = stdout(&["doctor", "--help"]);
    assert!(!doctor.contains("Serve a mock identity"), "{doctor}");
    let mock = stdout(&["mock", "write", "--help"]);
    assert!(mock.contains("irsa-secrets proxy --listen"), "{mock}");
    assert!(!mock.contains("irsa-secrets serve"), "{mock}");
}

/// What a runner with no identity is told to do, one phrase per identity the helper serves,
/// and where each platform's set-up is.
const EVERY_IDENTITYS_FIX: [&str; 7] = [
    "eks.amazonaws.com/role-arn (IRSA)",
    "Pod Identity association",
    "on ECS or CodeBuild, give the task or project a role",
    "--identity github-oidc",
    "--identity imds",
    "--mock",
    "Each platform's set-up: docs/ in the project (README.md, Platforms)",
];

/// The top-level help speaks of every identity served and points at the platform pages.
#[test]
fn the_top_level_help_names_every_identity_and_the_platform_pages() {
    let help = stdout(&["--help"]);
    for needle in [
        "IRSA",
        "EKS Pod Identity",
        "ECS or CodeBuild container role",
        "GitHub Actions OIDC",
        "--identity imds",
        "--mock",
        "README.md, Platforms",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    assert!(!help.contains("identity (IRSA)"), "{help}");
}

/// `doctor`'s output with `env` and `args`; every FAIL line is followed by a fix that names a
/// next step, never "see the message".
fn doctor(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let out = command()
        .arg("doctor")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("FAIL") {
            let fix = lines.get(i + 1).copied().unwrap_or_default();
            assert!(fix.starts_with("      fix: "), "{text}");
            assert!(!fix.contains("see the message"), "{text}");
        }
    }
    (out.status.code(), text)
}

#[test]
fn every_doctor_failure_names_the_next_step() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    let good = file("good", &common::token(3600, -10));
    let garbage = file("garbage", "not-a-jwt");
    let expired = file("expired", &common::token(-10, -3600));
    let early = file("early", &common::token(7200, 3600));
    let audience = file(
        "audience",
        &common::token_with(3600, -10, "kubernetes.default.svc"),
    );
    let expiring = file("expiring", &common::token(60, -3600));
    let day = file("day", &common::token(86400 + 30, -10));
    let policy = file("policy.json", "not json");
    let missing = dir.path().join("missing").display().to_string();
    let missing_secret = format!("id=x,src={missing}");
    let arn = common::ARN;
    let irsa = |token: &str| {
        vec![
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_string()),
            ("AWS_ROLE_ARN", arn.to_string()),
        ]
    };

    // No identity at all: one problem, and the fix of every identity the helper serves.
    let (code, text) = doctor(&[], &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL  no identity: none of"), "{text}");
    assert!(text.contains("1 problem found"), "{text}");
    for fix in EVERY_IDENTITYS_FIX {
        assert!(text.contains(fix), "doctor does not name {fix:?}:\n{text}");
    }
    // An identity asked for and incomplete is named, with the same fixes (not IRSA's alone).
    let (code, text) = doctor(&[], &["--identity", "pod-identity"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("FAIL  no identity: the pod-identity identity needs"),
        "{text}"
    );
    assert!(
        !text.contains("AWS_WEB_IDENTITY_TOKEN_FILE is not set"),
        "{text}"
    );
    for fix in EVERY_IDENTITYS_FIX {
        assert!(text.contains(fix), "doctor does not name {fix:?}:\n{text}");
    }

    // (token file, extra args, what fails, the fix it names)
    let cases: Vec<(String, Vec<&str>, &str, &str)> = vec![
        (
            garbage.clone(),
            vec![],
            "it has 1 dot-separated part,",
            "mock write",
        ),
        (expired, vec![], "the token expired at", "kubelet"),
        (early, vec![], "is not valid before", "date -u"),
        (
            audience,
            vec![],
            "expected \"sts.amazonaws.com\"",
            "--audience",
        ),
        (
            expiring,
            vec![],
            "under the 5m margin",
            "kubectl describe pod",
        ),
        (missing.clone(), vec![], "web identity token", "ls -l FILE"),
        (
            good.clone(),
            vec!["--sts"],
            "--sts needs a region",
            "export AWS_REGION",
        ),
        (
            good.clone(),
            vec![
                "--sts",
                "--region",
                "us-east-1",
                "--session-policy",
                &policy,
            ],
            "--session-policy",
            "correct the --session-policy file",
        ),
        (
            good.clone(),
            vec!["--secret", &missing_secret],
            "secret x:",
            "correct src= in --secret",
        ),
        (
            good.clone(),
            vec!["--secret", "id=y,env=IRSA_SECRETS_TEST_UNSET"],
            "variable IRSA_SECRETS_TEST_UNSET is not set",
            "export IRSA_SECRETS_TEST_UNSET",
        ),
    ];
    for (token, args, fails, fix) in cases {
        let env = irsa(&token);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, text) = doctor(&env, &args);
        assert_eq!(code, Some(1), "{args:?}: {text}");
        let fail = text
            .lines()
            .position(|l| l.starts_with("FAIL") && l.contains(fails));
        let fail = fail.unwrap_or_else(|| panic!("no FAIL with {fails:?}:\n{text}"));
        let next = text.lines().nth(fail + 1).unwrap();
        assert!(
            next.contains(fix),
            "{fails}: the fix should say {fix:?}:\n{text}"
        );
        assert!(text.ends_with("1 problem found\n"), "{text}");
    }

    // A role ARN that is not one.
    let env = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", good.as_str()),
        ("AWS_ROLE_ARN", "ci-builder"),
    ];
    let (_, text) = doctor(&env, &[]);
    assert!(
        text.contains("fix: set AWS_ROLE_ARN (or --role-arn)"),
        "{text}"
    );
    // --sts with the mock, which STS would refuse.
    let (_, text) = doctor(&[], &["--mock", "--sts", "--region", "us-east-1"]);
    assert!(text.contains("fix: drop --mock"), "{text}");
    // STS refuses the exchange.
    let sts = common::fake_sts::FakeSts::start(common::fake_sts::Reply::error("AccessDenied"));
    let env = irsa(&good);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_, text) = doctor(
        &env,
        &["--sts", "--region", "us-east-1", "--sts-endpoint", &sts.url],
    );
    assert!(
        text.contains("the STS exchange failed") && text.contains("run `irsa-secrets token`"),
        "{text}"
    );

    // Durations read as words.
    let env = irsa(&day);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, text) = doctor(&env, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("the token is valid for 1 day"), "{text}");
    assert!(!text.contains("1day"), "{text}");
}

/// `proxy --config FILE` with `text` in FILE: its stderr (it fails before it binds anything).
fn config_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("irsa-secrets.toml");
    std::fs::write(&path, text).unwrap();
    let out = command()
        .args(["proxy", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{text}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("error: {}: ", path.display())),
        "the error names the file: {err}"
    );
    assert!(
        !err.contains("Usage:") && !err.contains("unexpected argument"),
        "{err}"
    );
    err
}

#[test]
fn config_errors_name_the_key_its_table_and_what_is_allowed() {
    let err = config_error("listen = \"unix:///tmp/a.sock\"\n");
    assert!(
        err.contains("top level: `listen` is not valid here")
            && err.contains("move it into a [[listener]] table"),
        "{err}"
    );
    let err = config_error("[[listener]]\nname = \"a\"\n\n[[listener]]\ntoken_fil = \"/t\"\n");
    assert!(
        err.contains("[[listener]] 2: unknown key `token_fil`; did you mean `token_file`?"),
        "{err}"
    );
    let err = config_error("colour = \"red\"\n");
    assert!(
        err.contains(
            "unknown key `colour`; the top level takes audit_log, audit_key_file, metrics_listen"
        ),
        "{err}"
    );
    let err = config_error("[[listener]]\nmock = \"yes\"\n");
    assert!(
        err.contains("[[listener]] 1: `mock` takes true or false, not a string"),
        "{err}"
    );
    let err = config_error("[[listener]]\nmax_sessions = \"lots\"\n");
    assert!(
        err.contains("[[listener]] 1: invalid value 'lots' for `max_sessions`"),
        "{err}"
    );
    let err = config_error("[[listener]]\nname = \"a\"\naudit_log = \"-\"\n");
    assert!(
        err.contains("[[listener]] 1: `audit_log` is not valid here: it applies to every listener"),
        "{err}"
    );
}

/// A daemon stand-in on a unix socket: answers every HTTP/1.1 request with `200 OK` and body
/// `OK`, with std's blocking sockets (no part of the helper's stack). Stops on drop.
struct TinyDaemon {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TinyDaemon {
    fn start(path: &std::path::Path) -> TinyDaemon {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK",
                );
            }
        });
        TinyDaemon {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TinyDaemon {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn proxy_says_at_start_that_its_daemon_does_not_answer_and_serves_once_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let upstream = dir.path().join("docker.sock");
    let not_a_socket = dir.path().join("plain-file");
    std::fs::write(&not_a_socket, "x").unwrap();
    for (target, why) in [
        (&upstream, format!("nothing at {}", upstream.display())),
        (
            &not_a_socket,
            format!("{} is not a socket", not_a_socket.display()),
        ),
    ] {
        let socket = dir.path().join("helper.sock");
        let mut cmd = command();
        cmd.args(["proxy", "--mock", "--listen"])
            .arg(format!("unix://{}", socket.display()))
            .arg("--upstream")
            .arg(format!("unix://{}", target.display()));
        let mut helper = common::Helper::spawn(cmd, socket.clone(), dir.path(), &[], &r);
        let log = common::eventually(
            std::time::Duration::from_secs(20),
            common::later(|| {
                format!(
                    "the log says the daemon does not answer yet:\n{}",
                    helper.log_text()
                )
            }),
            || Some(helper.log_text()).filter(|log| log.contains("does not answer yet")),
        );
        let line = log
            .lines()
            .find(|l| l.contains("does not answer yet"))
            .unwrap();
        assert!(
            line.contains(&why) && line.contains("check --upstream"),
            "{line}"
        );
        assert!(
            helper.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "it keeps running"
        );

        if target == &upstream {
            // The daemon starts after the helper: the next request goes through.
            let _daemon = TinyDaemon::start(&upstream);
            use std::io::{Read, Write};
            let mut conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            conn.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            let _ = conn.read_to_string(&mut answer);
            assert!(
                answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("OK"),
                "{answer:?}\n{}",
                helper.log_text()
            );
        }
        assert!(helper.terminate().success());
    }
}

#[test]
fn listen_in_a_missing_directory_names_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-mounted");
    for command_line in [&["serve", "--mock"][..], &["proxy", "--mock"][..]] {
        let out = command()
            .args(command_line)
            .arg("--listen")
            .arg(format!("unix://{}/helper.sock", missing.display()))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "the directory {} does not exist",
                missing.display()
            )) && err.contains("mkdir -p")
                && err.contains("mount the volume"),
            "{err}"
        );
        assert!(
            !err.contains(".helper.sock."),
            "no internal temporary name: {err}"
        );
    }
}

#[test]
fn mock_write_replaces_existing_files_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let id = dir.path().join("identity");
    let r = Radioactive::default();
    let write = |extra: &[&str]| run(command().args(["mock", "write"]).arg(&id).args(extra), &r);
    let out = write(&[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("wrote "));
    let first = std::fs::read(id.join("token")).unwrap();
    let written = unix_seconds();

    let out = write(&[]);
    assert!(!out.status.success(), "a second write is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(id.join("token")).unwrap(),
        first,
        "left alone"
    );

    // The token's iat counts whole seconds: a new one needs a second that began after the
    // first write.
    common::eventually(
        std::time::Duration::from_secs(5),
        "a new second for a new iat",
        || (unix_seconds() > written).then_some(()),
    );
    let out = write(&["--force"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("replaced {}", id.join("token").display()))
            && text.contains(&format!("replaced {}", id.join("env").display())),
        "{text}"
    );
    assert_ne!(std::fs::read(id.join("token")).unwrap(), first);
}

/// Seconds since the epoch, as a token's iat counts them.
fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `irsa-secrets ARGS` with its output piped, which must end (in failure) within 10 s: the old
/// helper started with such values and served nothing.
fn refused_at_start(args: &[&str]) -> String {
    let child = command()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let what = format!("irsa-secrets {args:?}");
    let out = common::output_within(
        child,
        std::time::Duration::from_secs(10),
        &what,
        String::new,
    );
    assert!(!out.status.success(), "{args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_duration_past_a_week_is_refused_at_start_naming_the_flag_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("unix://{}/helper.sock", dir.path().display());
    let huge = "18446744073709551615s";
    for flag in [
        "--idle-timeout",
        "--header-timeout",
        "--shutdown-timeout",
        "--expiry-margin",
    ] {
        let err = refused_at_start(&["proxy", "--mock", "--listen", &listen, flag, huge]);
        assert!(
            err.contains(&format!("invalid value '{huge}' for '{flag} <"))
                && err.contains("longer than the longest accepted, 7days"),
            "{err}"
        );
    }
    let config = dir.path().join("irsa-secrets.toml");
    // (key, whether it is a listener's, where the error says it is)
    for (key, listeners, place) in [
        ("idle_timeout", false, "top level"),
        ("header_timeout", false, "top level"),
        ("shutdown_timeout", false, "top level"),
        ("expiry_margin", true, "[[listener]] 1"),
    ] {
        let setting = format!("{key} = \"{huge}\"\n");
        let (top, listener) = if listeners {
            ("", setting.as_str())
        } else {
            (setting.as_str(), "")
        };
        std::fs::write(
            &config,
            format!("{top}[[listener]]\nlisten = \"{listen}\"\nmock = true\n{listener}"),
        )
        .unwrap();
        let err = refused_at_start(&["proxy", "--config", &config.display().to_string()]);
        assert!(
            err.contains(&format!(
                "{place}: invalid value '{huge}' for `{key}`: longer than the longest \
                 accepted, 7days"
            )),
            "{err}"
        );
    }
    let ttl = format!("id=a,type=aws-sm,name=n,ttl={huge}");
    let err = refused_at_start(&["serve", "--mock", "--listen", &listen, "--secret", &ttl]);
    assert!(
        err.contains("longer than the longest accepted, 7days"),
        "{err}"
    );
}

#[test]
fn a_config_value_that_begins_with_a_dash_is_the_keys_and_a_nul_in_a_path_is_named() {
    let err = config_error("idle_timeout = \"-5s\"\n[[listener]]\nmock = true\n");
    assert!(
        err.contains("top level: invalid value '-5s' for `idle_timeout`"),
        "{err}"
    );
    let err = config_error("[[listener]]\nmock = true\nmax_sessions = -1\n");
    assert!(
        err.contains("[[listener]] 1: invalid value '-1' for `max_sessions`"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("irsa-secrets.toml");
    let listen = format!("unix://{}/a\\u0000b.sock", dir.path().display());
    std::fs::write(
        &config,
        format!("[[listener]]\nlisten = \"{listen}\"\nmock = true\n"),
    )
    .unwrap();
    let err = refused_at_start(&["proxy", "--config", &config.display().to_string()]);
    assert!(
        !err.contains('\0') && err.contains("/a\\u{0}b.sock holds a NUL byte, which no path can"),
        "{err:?}"
    );
}
