//! Memory through the real binary: idle HTTP/2 peers (preface and SETTINGS, then nothing) cost
//! the helper little each, and bursts of them, once closed, leave its RSS near where it started.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::fake_daemon::{daemon_script, FakeBuildkitd};
use common::h2_peer::{read_frame, HELLO, SETTINGS};
use common::{command, eventually_async, later, open_fds, rss, Helper, Radioactive};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The most an idle connection may cost the helper.
const PER_CONNECTION: u64 = 48 * 1024;
/// How far above its baseline the helper's RSS may stay after the bursts.
const RETURNED_WITHIN: u64 = 16 * 1024 * 1024;
const BURSTS: usize = 4;
/// Peers per burst, if the descriptor limit allows.
const PEERS: usize = 2000;

/// This process's soft descriptor limit (the helper inherits it).
fn fd_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("Max open files in /proc/self/limits")
}

/// Connects, says hello and waits for the helper's SETTINGS: the helper now holds a live HTTP/2
/// connection for this peer, which then says nothing more.
async fn idle_peer(socket: &Path) -> UnixStream {
    let mut io = eventually_async(
        Duration::from_secs(60),
        "a connection to the helper",
        || async {
            match UnixStream::connect(socket).await {
                Ok(io) => Some(io),
                // A full accept backlog: the helper is still taking the burst in.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                Err(e) => panic!("connect to the helper: {e}"),
            }
        },
    )
    .await;
    io.write_all(HELLO).await.unwrap();
    let first = read_frame(&mut io).await.expect("the helper answers");
    assert_eq!(first.kind, SETTINGS, "the helper's first frame is SETTINGS");
    io
}

/// Opens `n` idle peers, a few at a time.
async fn burst(socket: &Path, n: usize) -> Vec<UnixStream> {
    let mut peers = Vec::with_capacity(n);
    while peers.len() < n {
        let mut batch = JoinSet::new();
        for _ in 0..(n - peers.len()).min(50) {
            let socket = socket.to_path_buf();
            batch.spawn(async move { idle_peer(&socket).await });
        }
        while let Some(peer) = batch.join_next().await {
            peers.push(peer.unwrap());
        }
    }
    peers
}

/// Waits until the helper holds no more descriptors than `fds`: every peer's connection closed.
async fn wait_closed(pid: u32, fds: usize) {
    eventually_async(
        Duration::from_secs(60),
        later(|| {
            format!(
                "the helper holds at most {fds} descriptors, as before the burst (it holds {})",
                open_fds(pid)
            )
        }),
        || async { (open_fds(pid) <= fds).then_some(()) },
    )
    .await;
    // The last connection tasks finish after their sockets close; nothing outside the helper
    // tells when, so the RSS read next gets half a second.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The helper's RSS once it is under `goal`, or after 10 s (the allocator returns freed memory
/// to the system in the background, within a second or so). Not [`eventually`]: missing the
/// goal is no failure here, the value is reported and only the last one is held to it.
async fn settled(pid: u32, goal: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = rss(pid);
        if now <= goal || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_peers_cost_little_and_bursts_give_memory_back() {
    // Each peer takes a descriptor here and one or two in the helper (its daemon connection).
    let peers = PEERS.min(fd_limit().saturating_sub(200) / 2);
    assert!(peers >= 200, "raise the descriptor limit: {}", fd_limit());
    let dir = tempfile::tempdir().unwrap();
    let daemon_sock = dir.path().join("buildkitd.sock");
    let (report, _observed) = mpsc::unbounded_channel();
    let _daemon = FakeBuildkitd::start(&daemon_sock, daemon_script(report));
    let r = Radioactive::default();
    let socket = dir.path().join("helper.sock");
    let mut cmd = command();
    cmd.args(["proxy", "--mock", "--upstream-kind", "buildkit", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--upstream")
        .arg(format!("unix://{}", daemon_sock.display()));
    let helper = Helper::spawn(cmd, socket.clone(), dir.path(), &[], &r);
    let pid = helper.child.as_ref().unwrap().id();

    // A few connections first, so what every connection needs once (the runtime's and the
    // logger's first allocations) is in the baseline.
    let fds = open_fds(pid);
    drop(burst(&socket, 20).await);
    wait_closed(pid, fds).await;
    let baseline = rss(pid);

    let mut after = Vec::new();
    let mut costs = Vec::new();
    for _ in 0..BURSTS {
        let open = burst(&socket, peers).await;
        // Every peer has its SETTINGS, so the helper holds them all; the pause lets what each
        // connection allocates after that (its first reads) show in the RSS, a measurement
        // window rather than a wait for an event.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let held = rss(pid);
        costs.push(held.saturating_sub(baseline) / peers as u64);
        drop(open);
        wait_closed(pid, fds).await;
        after.push(settled(pid, baseline + RETURNED_WITHIN).await);
    }
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    let report = format!(
        "{peers} idle peers per burst; baseline {}; per connection {:?} KiB; after each burst {:?}",
        mib(baseline),
        costs.iter().map(|c| c / 1024).collect::<Vec<_>>(),
        after.iter().map(|&b| mib(b)).collect::<Vec<_>>()
    );
    eprintln!("{report}");
    let worst = costs.iter().copied().max().unwrap();
    assert!(
        worst <= PER_CONNECTION,
        "an idle connection costs {} KiB (at most {}): {report}",
        worst / 1024,
        PER_CONNECTION / 1024
    );
    let last = *after.last().unwrap();
    assert!(
        last <= baseline + RETURNED_WITHIN,
        "after the bursts the helper keeps {} over its baseline (at most {}): {report}",
        mib(last.saturating_sub(baseline)),
        mib(RETURNED_WITHIN)
    );
}
