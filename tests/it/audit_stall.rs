//! An audit log that cannot be written (a FIFO nobody reads) stalls nothing but the requests
//! whose records it holds: another session's build context still streams through the helper,
//! and the secret request that cannot be recorded fails with a clear error instead of hanging.

use crate::common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::dockerd::{self, docker_on, Dockerd, BASE_IMAGE};
use common::{command, output_within, Helper, Radioactive};

/// A FIFO whose pipe buffer is already full and that nobody reads: every write to it blocks.
/// The returned end keeps it open for reading (so the helper's open succeeds) and never reads.
fn stuck_fifo(path: &Path) -> std::fs::File {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .unwrap();
    let chunk = [b'x'; 4096];
    loop {
        match fifo.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return fifo,
            Err(e) => panic!("filling the FIFO: {e}"),
        }
    }
}

#[test]
fn a_stuck_audit_log_fails_its_secret_request_and_stalls_no_session() {
    if dockerd::skip() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("irsa-audit-stall-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let r = Radioactive::default();
    let daemon = Dockerd::start(&dir.join("d"));
    let audit = dir.join("audit.fifo");
    let _fifo = stuck_fifo(&audit);
    let socket = dir.join("helper.sock");
    let mut cmd = command();
    cmd.args(["proxy", "--mock", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--upstream")
        .arg(format!("unix://{}", daemon.socket.display()))
        .arg("--audit-log")
        .arg(&audit);
    let helper = Helper::spawn(cmd, socket, dir, &[], &r);

    // A secret request whose record cannot be written: it must fail, not hang, and not stall
    // the helper's one runtime thread while it waits.
    let probe = command()
        .arg("probe")
        .arg("--socket")
        .arg(format!("unix://{}", helper.socket.display()))
        .arg("aws-role-arn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Meanwhile a build streams a 32 MiB context through the helper.
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let mut big = vec![0u8; 32 << 20];
    rand::fill(&mut big[..]);
    std::fs::write(ctx.join("big"), &big).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {BASE_IMAGE}\nCOPY big /big\nRUN wc -c < /big\n"),
    )
    .unwrap();
    let build: Child = docker_on(&helper.socket)
        .args(["build", "--network=none", "--progress=plain", "--no-cache"])
        .arg(&ctx)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = || common::tail(&helper.log_text());
    let out = output_within(build, Duration::from_secs(180), "the build", log);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&(32u32 << 20).to_string()), "{text}");

    let out = output_within(probe, Duration::from_secs(30), "the probe", log);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success()
            && said.contains("aws-role-arn: Unavailable")
            && said.contains("secret aws-role-arn is not served: the audit trail did not take its record within 5s"),
        "{said}"
    );
    assert!(
        helper
            .log_text()
            .contains("secret refused: its audit record cannot be written"),
        "{}",
        helper.log_text()
    );
}

/// A FIFO with no reader is refused at start, at once, rather than hanging the helper's start.
#[test]
fn an_audit_fifo_without_a_reader_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit.fifo");
    nix::unistd::mkfifo(&audit, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut cmd: Command = command();
    cmd.args(["proxy", "--mock", "--listen"])
        .arg(format!("unix://{}", tmp.path().join("h.sock").display()))
        .arg("--audit-log")
        .arg(&audit)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = output_within(
        cmd.spawn().unwrap(),
        Duration::from_secs(20),
        "the helper opening a FIFO nobody reads",
        String::new,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("it is a FIFO nobody reads yet"),
        "{err}"
    );
}
