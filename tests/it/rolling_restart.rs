//! A rolling restart on one socket path: the old helper removes its socket at SIGTERM and
//! drains a connection while the new one already serves on the same path; the old one's exit
//! must not unlink the new one's socket; and `kill -TERM OLD; start NEW` on one path always
//! ends with the new helper serving, however the two are scheduled.

use crate::common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{command, eventually, later, log_of, probe, tail, Helper, Radioactive};

/// Starts `proxy --mock` on DIR/helper.sock in front of `upstream` (taken as dockerd).
fn proxy(dir: &std::path::Path, upstream: &std::path::Path, r: &Radioactive) -> Helper {
    let socket = dir.join("helper.sock");
    let mut cmd = command();
    cmd.arg("proxy")
        .arg("--mock")
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()))
        .arg("--upstream")
        .arg(format!("unix://{}", upstream.display()))
        .args(["--upstream-kind", "docker"]);
    Helper::spawn(cmd, socket, dir, &[], r)
}

#[test]
fn the_old_helper_leaves_the_new_ones_socket_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let r = Radioactive::default();
    // A daemon that takes requests and never answers: the old helper's one connection stays in
    // flight, so it drains until its timeout instead of exiting at once.
    let upstream = dir.join("daemon.sock");
    let daemon = std::os::unix::net::UnixListener::bind(&upstream).unwrap();
    let (accepted, dialed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in daemon.incoming() {
            let mut stream = stream.unwrap();
            let mut head = [0u8; 64];
            if stream.read(&mut head).is_ok_and(|n| n > 0) {
                let _ = accepted.send(());
            }
            held.push(stream);
        }
    });
    let mut old = proxy(dir, &upstream, &r);
    let mut client = std::os::unix::net::UnixStream::connect(&old.socket).unwrap();
    client
        .write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .unwrap();
    dialed
        .recv_timeout(Duration::from_secs(10))
        .expect("the old helper forwards its client's request");

    let mut old_child = old.child.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // The old helper stops accepting at once; the new one takes the path over.
    common::eventually(
        Duration::from_secs(20),
        "the old helper stops accepting",
        || {
            std::os::unix::net::UnixStream::connect(&old.socket)
                .is_err()
                .then_some(())
        },
    );
    assert!(
        old_child.try_wait().unwrap().is_none(),
        "the old helper must still be draining its connection when the new one starts:\n{}",
        old.log_text()
    );
    assert!(
        !old.socket.exists(),
        "the old helper removes its socket as it stops accepting:\n{}",
        old.log_text()
    );
    // The new helper's daemon is not up (nobody listens there): probes are answered regardless.
    let new = proxy(dir, &dir.join("no-daemon.sock"), &r);
    assert!(
        !new.log_text().contains("replacing stale socket"),
        "the old helper left a socket behind:\n{}",
        new.log_text()
    );

    let status = common::eventually(Duration::from_secs(40), "the old helper exits", || {
        old_child.try_wait().unwrap()
    });
    assert!(status.success(), "old helper: {status}");
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);

    assert!(
        new.socket.exists(),
        "the old helper removed the new one's socket:\n{}",
        old.log_text()
    );
    let (ok, out) = probe(&new.socket, &["aws-role-arn"], &r);
    assert!(ok, "{out}\n{}", new.log_text());
    let old_log = old.log_text();
    let removed = old_log.find("socket removed");
    let draining = old_log.find("draining connections");
    assert!(
        removed.is_some() && removed < draining,
        "the old helper removes its socket before draining:\n{old_log}"
    );
}

/// A helper process, killed if the test ends before it does.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `proxy --mock --listen unix://SOCKET` before a daemon that is not there (probes are
/// answered by the helper itself), logging to `log`, without waiting for anything: as
/// `irsa-secrets proxy --listen SOCKET &` in a shell.
fn start(socket: &Path, log: &Path) -> Running {
    let upstream = socket.with_file_name("no-daemon.sock");
    let child = command()
        .env("RUST_LOG", "info")
        .args(["proxy", "--mock", "--upstream-kind", "docker", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--upstream")
        .arg(format!("unix://{}", upstream.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start irsa-secrets");
    Running(child)
}

/// Keeps every core busy until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Load {
    fn start() -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut spins = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                    spins
                })
            })
            .collect();
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `kill -TERM OLD; irsa-secrets proxy --listen SAME_PATH &` a hundred times with every core
/// busy: each time the old helper exits cleanly and the new one ends up serving on the path,
/// whether it starts before or after the old one has let go of it.
#[test]
fn kill_then_start_on_one_path_always_hands_over_under_load() {
    const ROUNDS: usize = 100;
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("helper.sock");
    let r = Radioactive::default();
    let log = |i: usize| tmp.path().join(format!("helper-{i}.log"));
    let mut old = start(&socket, &log(0));
    eventually(
        Duration::from_secs(20),
        later(|| format!("the first helper serves:\n{}", log_of(&log(0)))),
        || probe(&socket, &["aws-role-arn"], &r).0.then_some(()),
    );
    let load = Load::start();
    let started = Instant::now();
    let mut waited = 0;
    for i in 1..=ROUNDS {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let mut new = start(&socket, &log(i));
        let status = eventually(
            Duration::from_secs(30),
            later(|| format!("round {i}: the old helper exits:\n{}", log_of(&log(i - 1)))),
            || old.0.try_wait().unwrap(),
        );
        assert!(
            status.success(),
            "round {i}: the old helper did not exit cleanly ({status}):\n{}",
            tail(&log_of(&log(i - 1)))
        );
        // The old one is gone: whoever answers on the path now is the new one.
        eventually(
            Duration::from_secs(30),
            later(|| {
                format!(
                    "round {i}: the new helper serves on the path; its log:\n{}",
                    tail(&log_of(&log(i)))
                )
            }),
            || {
                if let Some(status) = new.0.try_wait().unwrap() {
                    panic!(
                        "round {i}: the new helper exited ({status}):\n{}\nthe old one's log:\n{}",
                        tail(&log_of(&log(i))),
                        tail(&log_of(&log(i - 1)))
                    );
                }
                probe(&socket, &["aws-role-arn"], &r).0.then_some(())
            },
        );
        if log_of(&log(i)).contains("waiting for it to leave") {
            waited += 1;
        }
        old = new;
    }
    let took = started.elapsed();
    drop(load);
    eprintln!(
        "{ROUNDS} rolling restarts on one path under load in {took:?} ({:?} each); the new \
         helper found the old one still serving and waited in {waited}",
        took / ROUNDS as u32
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(old.0.wait().unwrap().success());
    assert!(!socket.exists(), "the last helper left its socket behind");
}
