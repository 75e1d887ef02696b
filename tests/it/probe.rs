//! `probe` and other gRPC clients on the helper's sockets, without a Docker daemon (tests/it/policy.rs
//! probes listeners in front of a real dockerd): a probe through `proxy` in front of a BuildKit
//! API daemon that is up, then down, and with no daemon at all, audited as a build's request; a
//! stock Python grpcio client against `serve` and `proxy`, which needs
//! `grpc.default_authority` (h2 refuses the socket path grpcio sends as `:authority`); and what
//! `probe` says when it cannot connect.

#![allow(clippy::result_large_err)] // tonic fixes body errors to `Status`.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::fake_daemon::fake_daemon;
use common::{command, probe, probed, session_client, token, tunnel_io, Helper, Radioactive, ARN};
use irsa_secrets::wire::proto::secrets::{GetSecretRequest, GetSecretResponse};
use irsa_secrets::wire::proto::GET_SECRET_PATH;
use tokio::task::JoinSet;
use tonic::Code;

/// A BuildKit API daemon on `path`: the tests' fake, which answers every call but sessions
/// with an empty OK (so a GetSecret it were sent would fail the probe). Dropped, it stops
/// accepting and cuts its connections.
fn buildkitd(path: &Path) -> JoinSet<()> {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let mut daemon = JoinSet::new();
    daemon.spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((io, _)) = listener.accept().await {
            connections.spawn(fake_daemon(io, Arc::new(|_, _| Box::pin(async {}))));
        }
    });
    daemon
}

/// `irsa-secrets proxy` on DIR/helper.sock in front of `upstream`, serving the IRSA identity of
/// `token_file`, with its audit trail in DIR/audit.jsonl.
fn proxy(dir: &Path, upstream: &Path, token_file: &Path, r: &Radioactive) -> Helper {
    let socket = dir.join("helper.sock");
    let mut cmd = command();
    cmd.arg("proxy")
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()))
        .arg("--upstream")
        .arg(format!("unix://{}", upstream.display()))
        .arg("--audit-log")
        .arg(dir.join("audit.jsonl"));
    let tf = token_file.display().to_string();
    let env = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", tf.as_str()),
        ("AWS_ROLE_ARN", ARN),
    ];
    Helper::spawn(cmd, socket, dir, &env, r)
}

/// A token in DIR/token, watched as radioactive with the role ARN.
fn identity(dir: &Path, r: &Radioactive) -> (String, PathBuf) {
    let t = token(3600, -10);
    r.watch(t.as_bytes());
    r.watch(ARN.as_bytes());
    let file = dir.join("token");
    std::fs::write(&file, &t).unwrap();
    (t, file)
}

/// A `Control/ListWorkers` call on a new HTTP/2 connection to the helper, from the tests' own
/// HTTP/2 client.
async fn list_workers(helper: &Path) -> http::Response<hyper::body::Incoming> {
    let peer = session_client::connect(helper).await;
    let req = tunnel_io::call("/moby.buildkit.v1.Control/ListWorkers", b"");
    peer.send(req).await.unwrap()
}

/// Checks that the helper answers each `(id, value)` with the value, asked twice: by `probe`
/// (a blocking child process, run off the runtime), whose lines give each value's size and
/// fingerprint, and by the tests' own HTTP/2 client, so an answer no stock peer could read
/// cannot pass by the crate's client reading it the same wrong way.
async fn probe_answers(helper: &Helper, answers: &[(&'static str, &[u8])], r: &Radioactive) {
    let socket = helper.socket.clone();
    let ids: Vec<_> = answers.iter().map(|(id, _)| *id).collect();
    let rc = r.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || probe(&socket, &ids, &rc))
        .await
        .unwrap();
    let seen = |(id, value): &(&str, &[u8])| out.contains(&probed(id, value));
    assert!(ok && answers.iter().all(seen), "{out}");

    let peer = session_client::connect(&helper.socket).await;
    for (id, value) in answers {
        let req = GetSecretRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let got = tunnel_io::unary::<GetSecretResponse>(&peer, GET_SECRET_PATH, &req).await;
        let got = got.unwrap_or_else(|code| panic!("{id}: {code:?}"));
        assert!(
            got.data == *value,
            "{id}: {} bytes, not the value",
            got.data.len()
        );
    }
}

/// The audit trail's records.
fn records(path: &Path, r: &Radioactive) -> Vec<serde_json::Value> {
    let trail = std::fs::read(path).unwrap();
    r.assert_absent("the audit log", &trail);
    trail
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_through_proxy_is_answered_with_the_buildkit_daemon_up_or_down() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let (t, token_file) = identity(dir.path(), &r);
    let daemon_sock = dir.path().join("buildkitd.sock");
    let daemon = buildkitd(&daemon_sock);
    let helper = proxy(dir.path(), &daemon_sock, &token_file, &r);
    let answers = [
        ("aws-web-identity-token", t.as_bytes()),
        ("aws-role-arn", ARN.as_bytes()),
    ];

    probe_answers(&helper, &answers, &r).await;
    // Everything else still goes to the daemon.
    let res = list_workers(&helper.socket).await;
    assert_eq!(res.headers()["x-fake-daemon"], "yes");

    // The daemon goes away: probes are still answered, other calls say the daemon is gone.
    drop(daemon);
    std::fs::remove_file(&daemon_sock).unwrap();
    probe_answers(&helper, &answers, &r).await;
    let res = list_workers(&helper.socket).await;
    let status = tonic::Status::from_header_map(res.headers()).expect("a trailers-only error");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .contains("buildkitd.sock cannot be reached"),
        "{}",
        status.message()
    );

    // Each answer is in the audit trail as a build's would be, marked as a probe: two ids,
    // each asked by `probe` and by the tests' client, with the daemon up and down.
    let records = records(&dir.path().join("audit.jsonl"), &r);
    let probes: Vec<_> = records.iter().filter(|r| r["probe"] == true).collect();
    assert_eq!(probes.len(), 8, "{records:?}");
    for p in probes {
        assert_eq!(p["event"], "secret");
        assert_eq!(p["outcome"], "served");
        assert_eq!(p["source"], "irsa");
        assert_eq!(p["listener"], "default");
        assert_eq!(p["fingerprint"].as_str().unwrap().len(), 32);
        assert!(
            p["peer"]["uid"].is_u64() && p.get("session").is_none(),
            "{p}"
        );
    }
}

/// Runs `tests/python/get_secret.py` (stock grpcio) against `socket` for `id`, with
/// `grpc.default_authority` set to `authority` if given: (success, output).
fn python_get_secret(
    socket: &Path,
    id: &str,
    authority: Option<&str>,
    r: &Radioactive,
) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/get_secret.py");
    let (out, text) = common::python::run(
        common::python::python3()
            .arg(script)
            .arg(socket)
            .arg(id)
            .args(authority),
    );
    r.assert_absent("the Python client's output", &out.stdout);
    r.assert_absent("the Python client's output", &out.stderr);
    (out.status.success(), text)
}

#[test]
fn stock_grpcio_clients_need_the_default_authority_on_serve_and_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let (_, token_file) = identity(dir.path(), &r);
    let tf = token_file.display().to_string();
    let env = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", tf.as_str()),
        ("AWS_ROLE_ARN", ARN),
    ];
    let serve_dir = dir.path().join("serve");
    std::fs::create_dir(&serve_dir).unwrap();
    let serve = Helper::serve(&serve_dir, &[], &env, &r);
    // No daemon at all behind the proxy: a probe needs none.
    let proxy_dir = dir.path().join("proxy");
    std::fs::create_dir(&proxy_dir).unwrap();
    let proxy = proxy(
        &proxy_dir,
        &dir.path().join("no-daemon.sock"),
        &token_file,
        &r,
    );
    for socket in [&serve.socket, &proxy.socket] {
        let (ok, out) = python_get_secret(socket, "aws-role-arn", Some("localhost"), &r);
        assert!(
            ok && out.contains(&probed("aws-role-arn", ARN.as_bytes())),
            "{}: {out}",
            socket.display()
        );
        // Without the option the call fails as docs/troubleshooting.md quotes it.
        let (ok, out) = python_get_secret(socket, "aws-role-arn", None, &r);
        assert!(
            !ok && out.contains("INTERNAL")
                && out.contains("Received RST_STREAM with error code 1"),
            "{}: {out}",
            socket.display()
        );
        let (ok, out) = probe(socket, &["aws-role-arn"], &r);
        assert!(
            ok && out.contains(&probed("aws-role-arn", ARN.as_bytes())),
            "{out}"
        );
    }
}

/// Runs `probe` on `socket` (expecting it to fail to connect) with `cmd`: its stderr.
fn refused(mut cmd: Command, socket: &Path, r: &Radioactive) -> String {
    cmd.arg("probe")
        .arg("--socket")
        .arg(format!("unix://{}", socket.display()))
        .arg("aws-role-arn");
    let out = common::run(&mut cmd, r);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&socket.display().to_string()), "{text}");
    assert!(!text.contains("transport error"), "{text}");
    text
}

#[test]
fn probe_says_why_it_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = Radioactive::default();

    for missing in [d.join("nothing.sock"), d.join("no-dir/helper.sock")] {
        let text = refused(command(), &missing, &r);
        assert!(
            text.contains("error: no socket at") && text.contains("--listen path"),
            "{text}"
        );
    }

    let file = d.join("file.sock");
    std::fs::write(&file, "").unwrap();
    let text = refused(command(), &file, &r);
    assert!(text.contains("is a regular file, not a socket"), "{text}");
    let text = refused(command(), d, &r);
    assert!(text.contains("is a directory, not a socket"), "{text}");

    let stale = d.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let text = refused(command(), &stale, &r);
    assert!(
        text.contains("nothing accepts connections on") && text.contains("start the helper"),
        "{text}"
    );

    // Something that accepts and hangs up is not the helper.
    let other = d.join("other.sock");
    let listener = std::os::unix::net::UnixListener::bind(&other).unwrap();
    let hang_up = std::thread::spawn(move || drop(listener.accept()));
    let (ok, text) = probe(&other, &["aws-role-arn"], &r);
    hang_up.join().unwrap();
    assert!(
        !ok && text.contains("gave no gRPC answer") && text.contains("is it the helper's socket?"),
        "{text}"
    );
}

#[test]
fn probe_says_permission_denied_with_the_socket_owner_and_the_fix() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to run probe as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = Radioactive::default();
    let (_, token_file) = identity(d, &r);
    let tf = token_file.display().to_string();
    let env = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", tf.as_str()),
        ("AWS_ROLE_ARN", ARN),
    ];
    let serve = Helper::serve(d, &[], &env, &r);
    // A copy of the binary another user may run (the build tree may be root's alone).
    let program = common::runnable_copy(d);
    let nobody = || {
        let mut cmd = common::command_for(&program);
        std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
        std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
        cmd
    };
    let text = refused(nobody(), &serve.socket, &r);
    assert!(
        text.contains("permission denied on")
            && text.contains(
                "(mode 600, owner uid 0 gid 0; this process runs as uid 65534 gid 65534)"
            )
            && text.contains("--socket-group GID --socket-mode 660"),
        "{text}"
    );

    // A directory on the way that the user may not enter.
    let closed = d.join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let inner = closed.join("helper.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&inner).unwrap();
    let text = refused(nobody(), &inner, &r);
    assert!(
        text.contains("permission denied on")
            && text.contains("a directory on the way to it may not be entered"),
        "{text}"
    );
}

/// The status of a gRPC answer: trailers-only, or in the trailers after the body.
async fn status_of(res: http::Response<hyper::body::Incoming>) -> tonic::Status {
    if let Some(status) = tonic::Status::from_header_map(res.headers()) {
        return status;
    }
    let whole = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap();
    tonic::Status::from_header_map(whole.trailers().expect("trailers")).expect("a grpc-status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_secret_id_is_refused_by_its_length_and_leaves_bounded_records() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let (_, token_file) = identity(dir.path(), &r);
    let helper = proxy(
        dir.path(),
        &dir.path().join("no-daemon.sock"),
        &token_file,
        &r,
    );
    let audit = dir.path().join("audit.jsonl");
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let (log_before, audit_before) = (size(&helper.log), size(&audit));

    let peer = session_client::connect(&helper.socket).await;
    let id = "x".repeat(1 << 20);
    let req = tunnel_io::grpc_request(
        GET_SECRET_PATH,
        &GetSecretRequest {
            id,
            ..Default::default()
        },
    );
    let res = peer.send(req).await.expect("an answer the client can read");
    let status = status_of(res).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("1048576 bytes, over the limit of 512"),
        "{}",
        status.message()
    );
    // One record, whose id is cut and says how long it was; both logs grew by little (the log
    // by the HTTP/2 stack's lines for a megabyte's frames, and a few of the helper's own).
    let grown = |p: &Path, before| size(p) - before;
    let logged = grown(&helper.log, log_before);
    let text = helper.log_text();
    assert!(logged < 256 * 1024, "the log grew {logged} bytes");
    assert!(text.lines().all(|l| l.len() < 4096));
    // The helper goes on serving.
    probe_answers(&helper, &[("aws-role-arn", ARN.as_bytes())], &r).await;
    let records = records(&audit, &r);
    let refused: Vec<_> = records.iter().filter(|r| r["outcome"] == "error").collect();
    assert_eq!(refused.len(), 1, "{records:?}");
    let shown = refused[0]["id"].as_str().unwrap();
    assert!(
        shown.ends_with("…[1048576 bytes]") && shown.len() < 1024,
        "{shown}"
    );
    let audited = grown(&audit, audit_before);
    assert!(audited < 8 * 1024, "the audit trail grew {audited} bytes");
}
