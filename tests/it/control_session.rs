//! `Control/Session` through the gRPC front door, against in-process fakes of a daemon and a
//! build client that speak the real framing: the session's HTTP/2 runs inside `BytesMessage`
//! tunnels, the daemon is the HTTP/2 client inside, the build client the server.

#![allow(clippy::result_large_err)] // tonic fixes body errors to `Status`.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crate::common;
use common::fake_daemon::{daemon_script, fake_daemon, Observed};
use common::mock_provider;
use common::session_client::{big_payload, client_session, ClientSecrets};
use common::tunnel_io::{self, Peer};

use irsa_secrets::front::grpc::{self};
use irsa_secrets::source::mock::MOCK_ROLE_ARN;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::Code;
use tower::{Service, ServiceExt};

/// Wires client ⇄ helper (grpc::serve) ⇄ daemon over in-memory pipes; returns the client's
/// HTTP/2 connection to the helper and the daemon's reports.
async fn setup() -> (
    Peer,
    mpsc::UnboundedReceiver<Observed>,
    tokio::task::JoinHandle<()>,
) {
    let (client_io, helper_client_side) = tokio::io::duplex(1 << 20);
    let (helper_daemon_side, daemon_io) = tokio::io::duplex(1 << 20);
    let (report, observed) = mpsc::unbounded_channel();
    tokio::spawn(fake_daemon(daemon_io, daemon_script(report)));
    let helper = tokio::spawn(grpc::serve(
        helper_client_side,
        helper_daemon_side,
        irsa_secrets::front::Context::new(mock_provider()),
    ));
    let control = tunnel_io::handshake(client_io).await;
    (control, observed, helper)
}

/// The daemon's next report; a tunnel the fakes cannot read ends the session without one.
async fn report(observed: &mut mpsc::UnboundedReceiver<Observed>) -> Observed {
    tokio::time::timeout(std::time::Duration::from_secs(30), observed.recv())
        .await
        .expect("the daemon reports the session within 30 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_control_call_passes_untouched() {
    let (mut control, _observed, _helper) = setup().await;
    // Response headers included.
    let req = tunnel_io::call("/moby.buildkit.v1.Control/ListWorkers", b"");
    let res = control.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.headers().get("x-fake-daemon").unwrap(), "yes");
    assert_eq!(res.headers().get("grpc-status").unwrap(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_of_a_client_without_secrets_gets_the_helpers() {
    let (control, mut observed, _helper) = setup().await;
    let session = tokio::spawn(client_session(
        control,
        "session-plain".into(),
        None,
        Arc::new(AtomicUsize::new(0)),
    ));
    let o = report(&mut observed).await;
    assert_eq!(o.session, "session-plain");
    assert_eq!(o.role_arn.unwrap(), MOCK_ROLE_ARN.as_bytes());
    assert_eq!(o.client_only.unwrap_err(), Code::NotFound);
    assert_eq!(o.probe, Code::NotFound);
    assert!(o.health, "health checks reach the client");
    assert_eq!(
        o.big_sha,
        hex::encode(Sha256::digest(big_payload())),
        "a large stream arrives intact"
    );
    session.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_own_secrets_arrive_and_win_over_the_helpers() {
    let (control, mut observed, _helper) = setup().await;
    let own = ClientSecrets(vec![
        ("client-only", "from-the-client"),
        ("aws-role-arn", "arn:aws:iam::999988887777:role/own"),
    ]);
    let session = tokio::spawn(client_session(
        control,
        "session-own".into(),
        Some(own),
        Arc::new(AtomicUsize::new(0)),
    ));
    let o = report(&mut observed).await;
    assert_eq!(o.session, "session-own");
    assert_eq!(o.client_only.unwrap(), b"from-the-client");
    assert_eq!(o.role_arn.unwrap(), b"arn:aws:iam::999988887777:role/own");
    assert_eq!(o.probe, Code::NotFound);
    session.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sessions_at_once() {
    let (control, mut observed, _helper) = setup().await;
    let sessions: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(client_session(
                control.clone(),
                format!("s{i:02}"),
                None,
                Arc::new(AtomicUsize::new(0)),
            ))
        })
        .collect();
    let want = hex::encode(Sha256::digest(big_payload()));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let o = report(&mut observed).await;
        assert_eq!(
            o.role_arn.as_deref().unwrap(),
            MOCK_ROLE_ARN.as_bytes(),
            "{}",
            o.session
        );
        assert_eq!(o.big_sha, want, "{}", o.session);
        seen.insert(o.session);
    }
    assert_eq!(seen.len(), 50);
    for s in sessions {
        s.abort();
    }
}
