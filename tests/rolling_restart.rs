//! A rolling restart on one socket path: the old helper drains a connection after SIGTERM while
//! the new one already serves on the same path; the old one's exit must not unlink the new
//! one's socket.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{command, probe, Helper, Radioactive};

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
    // The new helper's daemon is not up (nobody listens there): probes are answered regardless.
    let new = proxy(dir, &dir.join("no-daemon.sock"), &r);
    assert!(
        new.log_text().contains("replacing stale socket"),
        "{}",
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
    assert!(
        old.log_text()
            .contains("leaving the socket in place: another process has bound it since"),
        "{}",
        old.log_text()
    );
}
