//! How the front door treats connections, through the real binary: a request head must be
//! complete within `--header-timeout` however it trickles in, an idle keep-alive connection
//! closes after `--idle-timeout`, nothing dials the daemon before a whole request, a flood of
//! stalled peers under a descriptor limit of 1024 does not keep a real build out, and SIGTERM
//! closes idle connections at once while builds in flight get `--shutdown-timeout`.

use crate::common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dockerd::{self, start_build_of_step, start_long_build, wait_with_timeout, Stack};
use common::fake_daemon::{FakeBuildkitd, Script};
use common::session_client::{client_session, connect};
use common::tunnel_io::Peer;
use common::{command, eventually, eventually_async, later, sha, tail, Helper, Radioactive, ARN};
use irsa_secrets::session::SESSION_UUID;

/// A stand-in Docker daemon: counts the connections open to it and answers every request on
/// them with `200 OK`, keeping the connection.
struct StandIn {
    path: PathBuf,
    open: Arc<AtomicUsize>,
}

impl StandIn {
    fn start(dir: &Path) -> StandIn {
        let path = dir.join("daemon.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&open);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                let counted = Arc::clone(&counted);
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let _ = conn.write_all(OK);
                        }
                    }
                    counted.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        StandIn { path, open }
    }

    /// Connections open to the daemon now.
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK";
const PING: &[u8] = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n";

/// `proxy --mock` in `dir` before `daemon`, with `args`.
fn helper(dir: &Path, daemon: &StandIn, args: &[&str], r: &Radioactive) -> Helper {
    let socket = dir.join("helper.sock");
    let mut cmd = command();
    cmd.args(["proxy", "--mock", "--upstream-kind", "docker", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--upstream")
        .arg(format!("unix://{}", daemon.path.display()))
        .args(args);
    Helper::spawn(cmd, socket, dir, &[], r)
}

/// Reads until the helper closes `conn` (or `limit` passes, which fails the test); returns
/// how long that took.
fn wait_closed(conn: &mut UnixStream, limit: Duration, what: &str) -> Duration {
    let started = Instant::now();
    conn.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return started.elapsed(),
            Err(e) => panic!("{what}: still open after {limit:?} ({e})"),
        }
    }
}

/// Sends a whole request on `conn` and reads the stand-in's answer.
fn exchange(conn: &mut UnixStream) {
    conn.write_all(PING).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"\r\n\r\nOK") {
        let n = conn.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200 OK"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn request_heads_must_be_whole_within_the_head_timeout_and_only_whole_ones_dial_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = StandIn::start(tmp.path());
    let r = Radioactive::default();
    let h = helper(tmp.path(), &daemon, &["--header-timeout", "5s"], &r);
    let connect = || UnixStream::connect(&h.socket).unwrap();

    // A byte every 2 s: the deadline is for the whole head, not per byte.
    let mut dribbled = connect();
    let mut writer = dribbled.try_clone().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&sent);
    std::thread::spawn(move || {
        for b in PING {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    let mut half = connect();
    half.write_all(&PING[..20]).unwrap();
    let mut preface_only = connect();
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut silent = connect();
    // Nothing to wait for: this checks that no dial happens, so it gives a wrong one 2 s to
    // show (a dribbled byte or so).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        daemon.open(),
        0,
        "a peer with no whole request has a daemon connection"
    );

    let took = wait_closed(&mut dribbled, Duration::from_secs(30), "a dribbled request");
    let bytes = sent.load(Ordering::SeqCst);
    assert!(
        bytes < PING.len(),
        "the dribbled head was closed only after all {bytes} bytes"
    );
    eprintln!(
        "dribbled request closed after {took:?}, {bytes} of {} bytes",
        PING.len()
    );
    for (conn, what) in [
        (&mut half, "half a request"),
        (&mut preface_only, "an HTTP/2 preface with no stream"),
        (&mut silent, "a silent connection"),
    ] {
        let took = wait_closed(conn, Duration::from_secs(30), what);
        eprintln!("{what} closed after {took:?} more");
    }
    // A whole request is served, on one daemon connection.
    let mut conn = connect();
    exchange(&mut conn);
    exchange(&mut conn);
    assert_eq!(daemon.open(), 1);
}

#[test]
fn an_idle_keep_alive_connection_closes_at_the_idle_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = StandIn::start(tmp.path());
    let r = Radioactive::default();
    let h = helper(tmp.path(), &daemon, &["--idle-timeout", "3s"], &r);
    let mut conn = UnixStream::connect(&h.socket).unwrap();
    exchange(&mut conn);
    let took = wait_closed(&mut conn, Duration::from_secs(30), "an idle connection");
    eprintln!("idle keep-alive connection closed after {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "closed after {took:?}, before the idle timeout"
    );
}

#[test]
fn at_the_cap_the_longest_idle_keep_alive_connection_makes_room() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = StandIn::start(tmp.path());
    let r = Radioactive::default();
    let h = helper(tmp.path(), &daemon, &["--max-connections", "3"], &r);
    let mut idle: Vec<UnixStream> = (0..3)
        .map(|_| {
            let mut conn = UnixStream::connect(&h.socket).unwrap();
            exchange(&mut conn);
            conn
        })
        .collect();
    // The idle ones hold every place; the next client gets the oldest one's.
    let mut next = UnixStream::connect(&h.socket).unwrap();
    exchange(&mut next);
    let took = wait_closed(&mut idle[0], Duration::from_secs(10), "the longest idle");
    eprintln!("at the cap, the longest idle connection was closed {took:?} after");
    for conn in &mut idle[1..] {
        exchange(conn);
    }
}

#[test]
fn sigterm_closes_idle_keep_alive_connections_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = StandIn::start(tmp.path());
    let r = Radioactive::default();
    let mut h = helper(tmp.path(), &daemon, &[], &r);
    let mut idle = UnixStream::connect(&h.socket).unwrap();
    exchange(&mut idle);
    let (code, took) = h.terminate_within(Duration::from_secs(20));
    assert!(code.success(), "{code}");
    eprintln!("SIGTERM to exit with an idle keep-alive connection: {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "an idle connection held the exit for {took:?} (the shutdown timeout is 10 s)"
    );
    assert!(
        h.log_text().contains("draining connections"),
        "{}",
        h.log_text()
    );
}

/// The helper's descriptor limit in the flood test, and the stalled peers held against it.
const NOFILE: u64 = 1024;
const FLOOD: usize = 1500;

/// Runs the command under a descriptor limit of [`NOFILE`], as `ulimit -n` would.
fn limit_descriptors(cmd: &mut Command) {
    limit_descriptors_to(cmd, NOFILE);
}

/// Runs the command under a descriptor limit of `n`, as `ulimit -n` would.
fn limit_descriptors_to(cmd: &mut Command, n: u64) {
    use nix::sys::resource::{setrlimit, Resource};
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            setrlimit(Resource::RLIMIT_NOFILE, n, n).map_err(std::io::Error::from)
        });
    }
}

/// `proxy --mock` in `dir` before `daemon` with `args`, under a descriptor limit of `nofile`.
fn limited_helper(
    dir: &Path,
    daemon: &StandIn,
    nofile: u64,
    args: &[&str],
    r: &Radioactive,
) -> Helper {
    let socket = dir.join("helper.sock");
    let mut cmd = command();
    cmd.args(["proxy", "--mock", "--upstream-kind", "docker", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--upstream")
        .arg(format!("unix://{}", daemon.path.display()))
        .args(args);
    limit_descriptors_to(&mut cmd, nofile);
    Helper::spawn(cmd, socket, dir, &[], r)
}

/// A cap above what the descriptor limit allows is named at start, with the numbers; the
/// default cap, taken from the limit, is not.
#[test]
fn a_cap_above_the_descriptor_limit_is_named_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = StandIn::start(tmp.path());
    let r = Radioactive::default();
    let warning = "--max-connections 1000 is more than the descriptor limit (256) allows";
    let mut h = limited_helper(tmp.path(), &daemon, 256, &["--max-connections", "1000"], &r);
    let log = h.log_text();
    assert!(log.contains(warning), "{log}");
    assert!(log.contains("about 64 fit"), "{log}");
    h.terminate();
    let mut h = limited_helper(tmp.path(), &daemon, 256, &[], &r);
    let log = h.log_text();
    assert!(!log.contains("is more than the descriptor limit"), "{log}");
    h.terminate();
}

/// Out of descriptors (a cap above the limit, peers that connect and stall), a real request
/// is served at once: the stalled peer held longest is closed to make room for it, and for
/// its daemon connection, long before the header timeout would cut the stalled ones.
#[test]
fn out_of_descriptors_a_request_is_served_at_once_through_stalled_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = StandIn::start(tmp.path());
    let r = Radioactive::default();
    let h = limited_helper(
        tmp.path(),
        &daemon,
        LOW,
        &["--max-connections", "1000", "--header-timeout", "60s"],
        &r,
    );
    served_at_once_through_stalled_peers(&h);
}

/// The same when the limit is lowered under a running helper (`prlimit`, as an operator or a
/// supervisor may): its cap, taken from the limit at start, no longer fits.
#[test]
fn a_limit_lowered_while_running_is_met_the_same_way() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = StandIn::start(tmp.path());
    let r = Radioactive::default();
    let h = limited_helper(tmp.path(), &daemon, 4096, &["--header-timeout", "60s"], &r);
    let pid = h.child.as_ref().unwrap().id();
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={LOW}:{LOW}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    served_at_once_through_stalled_peers(&h);
}

/// The descriptor limit of the out-of-descriptors tests.
const LOW: u64 = 64;

/// Floods `h` (whose descriptor limit is [`LOW`]) with stalled peers until they hold every
/// descriptor, then checks that three requests are each served within seconds.
fn served_at_once_through_stalled_peers(h: &Helper) {
    const PEERS: usize = 200;
    let pid = h.child.as_ref().unwrap().id();
    let flood = Flood::start(&h.socket, PEERS);
    eventually(
        Duration::from_secs(30),
        later(|| {
            format!(
                "the stalled peers take every descriptor of the helper (it holds {} of {LOW})",
                common::open_fds(pid)
            )
        }),
        || (common::open_fds(pid) as u64 >= LOW - 1).then_some(()),
    );
    let held = common::open_fds(pid);
    let mut served = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let mut conn = UnixStream::connect(&h.socket).unwrap();
        exchange(&mut conn);
        served.push(started.elapsed());
    }
    let dials = flood.stop();
    let log = h.log_text();
    eprintln!(
        "{PEERS} stalled peers against ulimit -n {LOW} ({held} descriptors held, {dials} dials): \
         requests served in {served:?}"
    );
    for took in &served {
        assert!(
            *took < Duration::from_secs(5),
            "a request took {took:?} (the header timeout is 60 s):\n{}",
            tail(&log)
        );
    }
    assert!(log.contains("out of descriptors"), "{}", tail(&log));
}

/// Peers that connect, send part of a request (or a bare HTTP/2 preface, or nothing) and
/// wait; each dials again a second after the helper closes it, so the flood is held.
struct Flood {
    stop: tokio::sync::watch::Sender<bool>,
    open: Arc<AtomicUsize>,
    dials: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Flood {
    fn start(socket: &Path, peers: usize) -> Flood {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let open = Arc::new(AtomicUsize::new(0));
        let dials = Arc::new(AtomicUsize::new(0));
        let (socket, o, d) = (socket.to_path_buf(), Arc::clone(&open), Arc::clone(&dials));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut set = tokio::task::JoinSet::new();
                for i in 0..peers {
                    let (socket, stopped, o, d) = (
                        socket.clone(),
                        stopped.clone(),
                        Arc::clone(&o),
                        Arc::clone(&d),
                    );
                    set.spawn(stalled_peer(socket, i, stopped, o, d));
                }
                while set.join_next().await.is_some() {}
            });
        });
        Flood {
            stop,
            open,
            dials,
            thread,
        }
    }

    /// Closes every peer.
    fn stop(self) -> usize {
        self.stop.send_replace(true);
        self.thread.join().unwrap();
        self.dials.load(Ordering::SeqCst)
    }
}

async fn stalled_peer(
    socket: PathBuf,
    i: usize,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
    dials: Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stall: &[u8] = match i % 3 {
        0 => &PING[..24],
        1 => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
        _ => b"",
    };
    while !*stopped.borrow() {
        let Ok(mut conn) = tokio::net::UnixStream::connect(&socket).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        dials.fetch_add(1, Ordering::SeqCst);
        open.fetch_add(1, Ordering::SeqCst);
        let _ = conn.write_all(stall).await;
        let closed = async {
            let mut buf = [0u8; 256];
            while let Ok(1..) = conn.read(&mut buf).await {}
        };
        tokio::select! {
            () = closed => {}
            _ = stopped.wait_for(|s| *s) => {}
        }
        open.fetch_sub(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[test]
fn a_build_gets_through_a_flood_of_stalled_peers_and_shutdown_drains_builds() {
    if dockerd::skip() {
        return;
    }
    // The log at the level a deployment runs, to count what the flood writes.
    let mut s = Stack::start_with("irsa-conn-", "info", limit_descriptors);
    let ctx = s.context(
        "flood",
        "RUN --mount=type=secret,id=aws-role-arn sha256sum /run/secrets/aws-role-arn",
    );
    s.build_ok(&ctx, &[]);
    let baseline = s.helper_fds();
    let lines_before = s.helper.log_text().lines().count();

    let flood = Flood::start(&s.helper.socket, FLOOD);
    eventually(
        Duration::from_secs(60),
        later(|| {
            format!(
                "all {FLOOD} peers connect (only {} did)",
                flood.dials.load(Ordering::SeqCst)
            )
        }),
        || (flood.dials.load(Ordering::SeqCst) >= FLOOD).then_some(()),
    );
    // Not a wait for an event: the build must start against a flood that has been held a
    // while (closed peers dial again), as a deployment under attack would see it.
    std::thread::sleep(Duration::from_secs(2));
    let open = flood.open.load(Ordering::SeqCst);
    let held = s.helper_fds();
    let started = Instant::now();
    let (ok, out) = s.build_within(&ctx, &[], Duration::from_secs(120));
    let took = started.elapsed();
    s.assert_built(ok, &out);
    assert!(out.contains(&sha(ARN.as_bytes())), "{out}");
    let during = s.helper_fds();
    let dials = flood.stop();
    s.assert_descriptors_back_to(baseline);
    let after = s.helper_fds();
    let log = s.helper.log_text();
    let flood_lines: Vec<&str> = log.lines().skip(lines_before).collect();
    eprintln!(
        "flood: {FLOOD} peers held ({open} open when the build started, {dials} dials in all), \
         helper at ulimit -n {NOFILE}: descriptors {baseline} before, {held} when the build \
         started, {during} after it, {after} once the flood closed; build {took:?}; {} log \
         lines",
        flood_lines.len()
    );
    assert!(
        flood_lines.len() <= 100,
        "the flood wrote {} log lines:\n{}",
        flood_lines.len(),
        tail(&flood_lines.join("\n"))
    );
    assert!(
        !log.contains("Too many open files"),
        "the helper ran out of descriptors:\n{}",
        tail(&log)
    );

    // A cap above the descriptor limit: accepting runs out of descriptors, backs off and says
    // so in one line, and the helper recovers when the flood ends.
    s.restart_helper("info", |c| {
        limit_descriptors(c);
        c.args(["--max-connections", "5000", "--header-timeout", "5s"]);
    });
    let baseline = s.helper_fds();
    let lines_before = s.helper.log_text().lines().count();
    let flood = Flood::start(&s.helper.socket, FLOOD);
    // The flood's span is what is tested: it runs 8 s, and its log lines over that span are
    // counted below.
    std::thread::sleep(Duration::from_secs(8));
    let held = s.helper_fds();
    flood.stop();
    s.assert_descriptors_back_to(baseline);
    let log = s.helper.log_text();
    let flood_lines: Vec<&str> = log.lines().skip(lines_before).collect();
    eprintln!(
        "flood past the descriptor limit (--max-connections 5000): descriptors {baseline} \
         before, {held} during, back to {} after; {} log lines",
        s.helper_fds(),
        flood_lines.len()
    );
    assert!(
        log.contains("out of descriptors"),
        "no word of the exhausted descriptors (held {held}):\n{}",
        tail(&log)
    );
    assert!(
        flood_lines.len() <= 100,
        "the flood wrote {} log lines:\n{}",
        flood_lines.len(),
        tail(&flood_lines.join("\n"))
    );

    // SIGTERM with a build in flight: the helper waits for it, up to the shutdown timeout.
    s.restart_helper("debug", |c| {
        c.args(["--shutdown-timeout", "30s"]);
    });
    let build = start_build_of_step(&s, "drained", 4);
    let (code, waited) = s.helper.terminate_within(Duration::from_secs(40));
    let out = wait_with_timeout(build, Duration::from_secs(60));
    eprintln!("SIGTERM with a 4 s step in flight: exit after {waited:?} ({code:?})");
    assert!(
        out.status.success(),
        "the build in flight was cut:\n{}\nhelper:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&s.helper.log_text())
    );
    assert!(
        waited >= Duration::from_secs(2),
        "the helper left after {waited:?}, before its build ended"
    );
    assert!(waited < Duration::from_secs(25), "{waited:?}");

    // A build longer than the shutdown timeout is cut at the timeout.
    s.restart_helper("debug", |c| {
        c.args(["--shutdown-timeout", "3s"]);
    });
    let build = start_long_build(&s, "cut");
    let (_, waited) = s.helper.terminate_within(Duration::from_secs(20));
    let out = wait_with_timeout(build, Duration::from_secs(120));
    eprintln!("SIGTERM with a 60 s step in flight, --shutdown-timeout 3s: exit after {waited:?}");
    assert!(!out.status.success(), "a cut build cannot succeed");
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(10),
        "exit after {waited:?}, the shutdown timeout is 3 s"
    );
    assert!(
        s.helper
            .log_text()
            .contains("cutting connections still open after the shutdown timeout"),
        "{}",
        tail(&s.helper.log_text())
    );
}

/// A fake buildkitd whose sessions last as many seconds as their id (`hold-N`) says.
fn holding_daemon(path: &Path) -> FakeBuildkitd {
    let script: Script = Arc::new(|peer: Peer, headers: http::HeaderMap| {
        let seconds: u64 = headers
            .get(SESSION_UUID)
            .and_then(|v| v.to_str().ok())
            .and_then(|id| id.strip_prefix("hold-"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            drop(peer);
        })
    });
    FakeBuildkitd::start(path, script)
}

/// Starts `proxy --mock` before the fake buildkitd at `daemon` with `args`, opens session `id`
/// through it, waits until the helper has joined it, then sends SIGTERM: how long the helper
/// took to exit, and the session's task.
async fn sigterm_during_session(
    dir: &Path,
    daemon: &Path,
    args: &[&str],
    id: &str,
) -> (Duration, tokio::task::JoinHandle<()>, String) {
    let socket = dir.join(format!("{id}.sock"));
    let mut cmd = command();
    cmd.args(["proxy", "--mock", "--upstream-kind", "buildkit", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--upstream")
        .arg(format!("unix://{}", daemon.display()))
        .args(args);
    let r = Radioactive::default();
    let mut h = Helper::spawn(cmd, socket, dir, &[], &r);
    let control = connect(&h.socket).await;
    let session = tokio::spawn(client_session(
        control,
        id.into(),
        None,
        Arc::new(AtomicUsize::new(0)),
    ));
    eventually_async(
        Duration::from_secs(30),
        later(|| format!("the helper joins the session; its log:\n{}", h.log_text())),
        || async { h.log_text().contains("build session joined").then_some(()) },
    )
    .await;
    let ((status, took), log) = tokio::task::spawn_blocking(move || {
        let exit = h.terminate_within(Duration::from_secs(40));
        (exit, h.log_text())
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
    (took, session, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_http2_session_in_flight_finish_then_cuts_it_at_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon_sock = tmp.path().join("buildkitd.sock");
    let _daemon = holding_daemon(&daemon_sock);

    let (took, session, log) = sigterm_during_session(
        tmp.path(),
        &daemon_sock,
        &["--shutdown-timeout", "30s"],
        "hold-4",
    )
    .await;
    eprintln!("SIGTERM with a 4 s HTTP/2 session in flight: exit after {took:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "exit after {took:?}, the session had about 4 s left:\n{}",
        tail(&log)
    );
    assert!(log.contains("build session ended"), "{}", tail(&log));
    tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the client's session ended with the helper")
        .unwrap();

    let (took, session, log) = sigterm_during_session(
        tmp.path(),
        &daemon_sock,
        &["--shutdown-timeout", "2s"],
        "hold-600",
    )
    .await;
    eprintln!("SIGTERM with a 600 s HTTP/2 session, --shutdown-timeout 2s: exit after {took:?}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "exit after {took:?}, the shutdown timeout is 2 s:\n{}",
        tail(&log)
    );
    assert!(
        log.contains("cutting connections still open after the shutdown timeout"),
        "{}",
        tail(&log)
    );
    tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the client's session ended with the helper")
        .unwrap();
}
