//! `Control/Session` through the gRPC front door, against in-process fakes of a daemon and a
//! build client that speak the real framing: the session's HTTP/2 runs inside `BytesMessage`
//! tunnels, the daemon is the HTTP/2 client inside, the build client the server.

#![allow(clippy::result_large_err)] // tonic fixes body errors to `Status`.

use std::convert::Infallible;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

mod common;
use common::session_client::{big_payload, client_session, ClientSecrets, BIG};

use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use irsa_secrets::h2::{self, Peer};
use irsa_secrets::proto::secrets::secrets_client::SecretsClient;
use irsa_secrets::proto::secrets::GetSecretRequest;
use irsa_secrets::provider::Provider;
use irsa_secrets::proxy::grpc::{self, SESSION_PATH, SESSION_UUID};
use irsa_secrets::sources::mock::{Mock, MOCK_ROLE_ARN};
use irsa_secrets::sources::IdentityIds;
use irsa_secrets::tunnel::{self, Outgoing};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::{Service, ServiceExt};

fn uri() -> http::Uri {
    http::Uri::from_static("http://localhost")
}

/// What the fake daemon observed in one session.
#[derive(Debug)]
struct Observed {
    session: String,
    role_arn: Result<Vec<u8>, Code>,
    client_only: Result<Vec<u8>, Code>,
    probe: Code,
    health: bool,
    big_sha: String,
}

type Script = Arc<dyn Fn(Peer, HeaderMap) -> BoxFuture<'static, ()> + Send + Sync>;

/// A daemon: answers `Control/Session` by running `script` as the HTTP/2 client inside the
/// tunnel; answers every other call with an empty OK.
async fn fake_daemon(io: tokio::io::DuplexStream, script: Script) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let script = script.clone();
        async move {
            if req.uri().path() != SESSION_PATH {
                let mut res = Status::new(Code::Ok, "").into_http();
                res.headers_mut()
                    .insert("x-fake-daemon", "yes".parse().unwrap());
                return Ok::<_, Infallible>(res);
            }
            let headers = req.headers().clone();
            let (outbox, body) = tunnel::outgoing(Outgoing::Response);
            let tunnel = outbox.join(req.into_body(), tunnel::Incoming::Request);
            tokio::spawn(async move {
                let (peer, conn) = h2::handshake(tunnel).await.unwrap();
                tokio::spawn(conn);
                script(peer, headers).await;
            });
            let mut res = Response::new(body);
            res.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            Ok(res)
        }
    });
    let _ = h2::server().serve_connection(TokioIo::new(io), svc).await;
}

/// The daemon's script: what BuildKit does in a build, reported to the test.
fn daemon_script(report: mpsc::UnboundedSender<Observed>) -> Script {
    Arc::new(move |peer: Peer, headers: HeaderMap| {
        let report = report.clone();
        Box::pin(async move {
            let secrets = SecretsClient::with_origin(peer.clone(), uri());
            let get = |id: &'static str| {
                let mut c = secrets.clone();
                async move {
                    c.get_secret(GetSecretRequest {
                        id: id.into(),
                        annotations: Default::default(),
                    })
                    .await
                    .map(|r| r.into_inner().data)
                    .map_err(|s| s.code())
                }
            };
            let role_arn = get("aws-role-arn").await;
            let client_only = get("client-only").await;
            let probe = get("GIT_AUTH_TOKEN.github.com").await.unwrap_err();
            let health = HealthClient::with_origin(peer.clone(), uri())
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok();
            let req = Request::post(format!("http://localhost{BIG}"))
                .header("content-type", "application/grpc")
                .body(
                    http_body_util::Empty::new()
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .unwrap();
            let res = peer.clone().oneshot(req).await.unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            report
                .send(Observed {
                    session: headers
                        .get(SESSION_UUID)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_string(),
                    role_arn,
                    client_only,
                    probe,
                    health,
                    big_sha: hex::encode(Sha256::digest(&body)),
                })
                .unwrap();
        })
    })
}

fn provider() -> Provider {
    Provider::new(vec![Arc::new(Mock::new(
        IdentityIds::default(),
        "sts.amazonaws.com".into(),
        std::time::Duration::from_secs(300),
        None,
    ))])
}

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
        provider(),
    ));
    let (control, conn) = h2::handshake(client_io).await.unwrap();
    tokio::spawn(conn);
    (control, observed, helper)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_through_control_session_gets_secrets_and_everything_else_passes() {
    let (mut control, mut observed, _helper) = setup().await;

    // A plain Control call passes untouched, response headers included.
    let req = Request::post("http://localhost/moby.buildkit.v1.Control/ListWorkers")
        .header("content-type", "application/grpc")
        .body(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap();
    let res = control.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.headers().get("x-fake-daemon").unwrap(), "yes");
    assert_eq!(res.headers().get("grpc-status").unwrap(), "0");

    // A client with no secrets of its own.
    let session = tokio::spawn(client_session(
        control.clone(),
        "session-plain".into(),
        None,
        Arc::new(AtomicUsize::new(0)),
    ));
    let o = observed.recv().await.unwrap();
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

    // A client with its own --secret values: they arrive, and win over the helper's.
    let own = ClientSecrets(vec![
        ("client-only", "from-the-client"),
        ("aws-role-arn", "arn:aws:iam::999988887777:role/own"),
    ]);
    let session = tokio::spawn(client_session(
        control.clone(),
        "session-own".into(),
        Some(own),
        Arc::new(AtomicUsize::new(0)),
    ));
    let o = observed.recv().await.unwrap();
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
        let o = observed.recv().await.unwrap();
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
