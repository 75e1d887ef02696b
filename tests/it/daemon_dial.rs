//! Reaching the daemon: a daemon that does not answer is never taken for buildkitd (its kind is
//! asked again until it answers), and each step of dialing it (the connection, the TLS
//! handshake, dockerd's `/grpc` and `/session` upgrades) has a deadline whose error names the daemon.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::dockerd::{self, docker_on, Dockerd};
use common::{command, session_client, tunnel_io, Helper, Radioactive};
use tokio::task::JoinHandle;
use tonic::Code;

/// Well past every deadline of the helper (10 s each), well short of the operating system's
/// connect timeout (over two minutes): a call that takes longer hangs.
const BOUND: Duration = Duration::from_secs(40);

/// `proxy --mock` on DIR/NAME.sock in front of `upstream`, with `flags`.
fn proxy(dir: &Path, name: &str, upstream: &str, flags: &[&str], r: &Radioactive) -> Helper {
    let socket = dir.join(format!("{name}.sock"));
    let mut cmd = command();
    cmd.args(["proxy", "--mock", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--upstream")
        .arg(upstream)
        .args(flags);
    Helper::spawn(cmd, socket, dir, &[], r)
}

/// A BuildKit call through the helper (it goes to the daemon), from the tests' own HTTP/2
/// client: the gRPC status it ends with, within [`BOUND`].
async fn daemon_call(helper: &Helper) -> tonic::Status {
    let call = async {
        let peer = session_client::connect(&helper.socket).await;
        let req = tunnel_io::call("/moby.buildkit.v1.Control/ListWorkers", b"");
        let res = peer.send(req).await.unwrap();
        tonic::Status::from_header_map(res.headers()).expect("a trailers-only gRPC status")
    };
    let started = Instant::now();
    match tokio::time::timeout(BOUND, call).await {
        Ok(status) => status,
        Err(_) => panic!(
            "no answer after {:?}:\n{}",
            started.elapsed(),
            common::tail(&helper.log_text())
        ),
    }
}

/// `status` is `Unavailable` and its message says `says`.
fn assert_unavailable(status: &tonic::Status, says: &str) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(says), "{}", status.message());
}

/// A unix socket that accepts connections and never answers (nor reads): a daemon that hangs.
fn silent_unix(path: &Path) -> JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_daemon_is_asked_again_until_dockerd_answers() {
    if dockerd::skip() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("irsa-dial-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let r = Radioactive::default();
    let root = dir.join("d");
    std::fs::create_dir_all(&root).unwrap();
    let daemon_sock = root.join("docker.sock");
    let silent = silent_unix(&daemon_sock);
    let upstream = format!("unix://{}", daemon_sock.display());
    let helper = proxy(dir, "helper", &upstream, &[], &r);

    // dockerd is not answering yet: the client hears so, naming the daemon, in bounded time.
    let status = daemon_call(&helper).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&upstream) && status.message().contains("no answer within 10s"),
        "{}",
        status.message()
    );
    assert!(
        helper.log_text().contains("upstream kind unknown"),
        "{}",
        helper.log_text()
    );

    // dockerd comes up on the same socket: the docker CLI works without restarting the helper.
    silent.abort();
    let _ = silent.await;
    std::fs::remove_file(&daemon_sock).unwrap();
    let _daemon = tokio::task::spawn_blocking(move || Dockerd::start(&root))
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking({
        let socket = helper.socket.clone();
        move || docker_on(&socket).arg("version").output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "docker version through the helper: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        common::tail(&helper.log_text())
    );
    assert!(
        helper.log_text().contains("upstream detected"),
        "{}",
        helper.log_text()
    );
}

/// A loopback TCP listener whose accept queue is full, so a new connection's SYN is dropped
/// and its connect hangs: a blackholed address. Returns it (keep it) and the queued clients.
async fn blackholed_tcp() -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    loop {
        match tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("connect to {addr}: {e}"),
            Err(_) => return (listener, queued),
        }
        assert!(queued.len() < 64, "the accept queue of {addr} never filled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_step_of_dialing_the_daemon_has_a_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let r = Radioactive::default();

    // The connection: a blackholed tcp buildkitd.
    let (blackhole, _queued) = blackholed_tcp().await;
    let upstream = format!("tcp://{}", blackhole.local_addr().unwrap());
    let helper = proxy(dir, "tcp", &upstream, &["--upstream-kind", "buildkit"], &r);
    let status = daemon_call(&helper).await;
    assert_unavailable(
        &status,
        &format!("the daemon at {upstream} did not accept a connection within 10s"),
    );

    // The TLS handshake: a tcp daemon that accepts and never reads.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("tcp://{}", mute.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = mute.accept().await {
            held.push(stream);
        }
    });
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let ca_path = ca_file.display().to_string();
    let flags = ["--upstream-kind", "buildkit", "--tlscacert", &ca_path];
    let helper = proxy(dir, "tls", &upstream, &flags, &r);
    let status = daemon_call(&helper).await;
    assert_unavailable(
        &status,
        &format!("the daemon at {upstream} did not finish the TLS handshake within 10s"),
    );
    held.abort();

    // dockerd's /grpc upgrade: a dockerd that accepts and never answers.
    let daemon_sock = dir.join("hung-dockerd.sock");
    let silent = silent_unix(&daemon_sock);
    let upstream = format!("unix://{}", daemon_sock.display());
    let helper = proxy(
        dir,
        "upgrade",
        &upstream,
        &["--upstream-kind", "docker"],
        &r,
    );
    let status = daemon_call(&helper).await;
    assert_unavailable(
        &status,
        &format!("the daemon at {upstream} did not answer POST /grpc within 10s"),
    );

    // dockerd's /session upgrade, through the Docker API front door, by the same hung dockerd.
    let (status, body) = tokio::time::timeout(BOUND, session_upgrade(&helper.socket))
        .await
        .expect("the /session upgrade has a deadline");
    assert_eq!(status, http::StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body.contains(&format!(
            "the daemon at {upstream} did not answer POST /session within 10s"
        )),
        "{body}"
    );
    silent.abort();
}

/// `POST /session` as the docker CLI sends it, through the helper at `socket`: the status and
/// body of the answer.
async fn session_upgrade(socket: &Path) -> (http::StatusCode, String) {
    use http_body_util::BodyExt;
    let io = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/v1.41/session")
        .header("host", "docker")
        .header("connection", "Upgrade")
        .header("upgrade", "h2c")
        .header("x-docker-expose-session-uuid", "hung-session")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
