//! The signals a sidecar may get, sent to the real binary: TERM, INT, HUP and QUIT stop it
//! cleanly (exit 0, socket removed, connections drained); USR1 and USR2 are logged and change
//! nothing; `--help` says so.

use crate::common;

use nix::sys::signal::Signal;
use std::time::Duration;

use common::{command, eventually, later, probe, tail, Helper, Radioactive};

/// Starts `proxy --mock` in `dir` before a daemon that is not there (probes are answered by
/// the helper itself).
fn proxy(dir: &std::path::Path, r: &Radioactive) -> Helper {
    let socket = dir.join("helper.sock");
    let mut cmd = command();
    cmd.args(["proxy", "--mock", "--upstream-kind", "docker", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--upstream")
        .arg(format!("unix://{}", dir.join("no-daemon.sock").display()));
    Helper::spawn(cmd, socket, dir, &[], r)
}

/// Sends `signal` to the helper and waits up to 20 s for its exit.
fn stop_with(h: &mut Helper, signal: Signal) -> std::process::ExitStatus {
    let mut child = h.child.take().expect("running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    let log = h.log.clone();
    eventually(
        Duration::from_secs(20),
        later(|| format!("the helper exits on {signal}:\n{}", common::log_of(&log))),
        || child.try_wait().unwrap(),
    )
}

#[test]
fn term_int_hup_and_quit_stop_the_proxy_cleanly_and_remove_its_socket() {
    let r = Radioactive::default();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut h = proxy(tmp.path(), &r);
        let status = stop_with(&mut h, signal);
        let log = h.log_text();
        assert!(
            status.success(),
            "{signal}: the helper died ({status}):\n{}",
            tail(&log)
        );
        assert!(
            !h.socket.exists(),
            "{signal} left the socket file behind:\n{}",
            tail(&log)
        );
        assert!(
            log.contains(&format!("{signal}: shutting down")) && log.contains("draining"),
            "{signal}: {}",
            tail(&log)
        );
    }
}

#[test]
fn hup_stops_serve_cleanly_and_removes_its_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let mut h = Helper::serve(tmp.path(), &["--mock"], &[], &r);
    let status = stop_with(&mut h, Signal::SIGHUP);
    assert!(status.success(), "{status}:\n{}", tail(&h.log_text()));
    assert!(!h.socket.exists(), "{}", tail(&h.log_text()));
}

#[test]
fn usr1_and_usr2_are_logged_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let mut h = proxy(tmp.path(), &r);
    let pid = nix::unistd::Pid::from_raw(h.child.as_ref().unwrap().id() as i32);
    for signal in [Signal::SIGUSR1, Signal::SIGUSR2] {
        nix::sys::signal::kill(pid, signal).unwrap();
        let log = h.log.clone();
        eventually(
            Duration::from_secs(20),
            later(|| format!("{signal} is logged:\n{}", tail(&common::log_of(&log)))),
            || {
                if let Some(status) = h.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!(
                        "{signal} ended the helper ({status}):\n{}",
                        tail(&h.log_text())
                    );
                }
                h.log_text()
                    .contains(&format!("{signal}: ignored"))
                    .then_some(())
            },
        );
        let (ok, out) = probe(&h.socket, &["aws-role-arn"], &r);
        assert!(ok, "after {signal}: {out}");
    }
    let log = h.log_text();
    assert!(log.contains("open_connections="), "{}", tail(&log));
    assert!(h.terminate().success());
    assert!(!h.socket.exists());
}

#[test]
fn the_help_of_proxy_and_serve_says_what_each_signal_does() {
    for cmd in ["proxy", "serve"] {
        let out = command().args([cmd, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("SIGHUP")
                && help.contains("SIGUSR1")
                && help.contains("removes its socket"),
            "{cmd} --help:\n{help}"
        );
    }
}
