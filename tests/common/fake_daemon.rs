//! A fake BuildKit daemon: answers `Control/Session` by running a script as the HTTP/2 client
//! inside the tunnel (what BuildKit does during a build), every other call with an empty OK.

#![allow(clippy::result_large_err)] // tonic fixes body errors to `Status`.

use std::convert::Infallible;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use irsa_secrets::front::grpc::SESSION_PATH;
use irsa_secrets::session::SESSION_UUID;
use irsa_secrets::wire::h2::{self, Peer};
use irsa_secrets::wire::proto::secrets::secrets_client::SecretsClient;
use irsa_secrets::wire::proto::secrets::GetSecretRequest;
use irsa_secrets::wire::tunnel::{self, Outgoing};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceExt;

use super::grpc_call;
use super::session_client::BIG;

fn uri() -> http::Uri {
    http::Uri::from_static("http://localhost")
}

/// What the fake daemon observed in one session.
#[derive(Debug)]
pub struct Observed {
    pub session: String,
    pub role_arn: Result<Vec<u8>, Code>,
    pub client_only: Result<Vec<u8>, Code>,
    pub probe: Code,
    pub health: bool,
    pub big_sha: String,
}

pub type Script = Arc<dyn Fn(Peer, HeaderMap) -> BoxFuture<'static, ()> + Send + Sync>;

/// A daemon: answers `Control/Session` by running `script` as the HTTP/2 client inside the
/// tunnel; answers every other call with an empty OK.
pub async fn fake_daemon(
    io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    script: Script,
) {
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
pub fn daemon_script(report: mpsc::UnboundedSender<Observed>) -> Script {
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
                    .map(|r| r.into_inner().into_value().expose().to_vec())
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
            let req = grpc_call(BIG, b"");
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

/// A fake buildkitd listening on a unix socket; dropping it kills every connection at once.
pub struct FakeBuildkitd {
    connections: tokio::task::JoinSet<()>,
    accept: tokio::task::JoinHandle<()>,
}

impl FakeBuildkitd {
    /// Listens on `path`; every session runs `script`.
    pub fn start(path: &std::path::Path, script: Script) -> FakeBuildkitd {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let accept = tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                if tx.send(io).is_err() {
                    break;
                }
            }
        });
        let mut connections = tokio::task::JoinSet::new();
        // Connections are served on tasks owned by this value, so dropping it cuts them.
        connections.spawn(async move {
            let mut inner = tokio::task::JoinSet::new();
            while let Some(io) = rx.recv().await {
                inner.spawn(fake_daemon(io, script.clone()));
            }
        });
        FakeBuildkitd {
            connections,
            accept,
        }
    }
}

impl Drop for FakeBuildkitd {
    fn drop(&mut self) {
        self.accept.abort();
        self.connections.abort_all();
    }
}
