//! A fake BuildKit daemon: answers `Control/Session` by running a script as the HTTP/2 client
//! inside the tunnel (what BuildKit does during a build), every other call with an empty OK.
//! It speaks through the tests' own stack ([`super::tunnel_io`]), not the crate's.

use std::convert::Infallible;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use irsa_secrets::front::grpc::SESSION_PATH;
use irsa_secrets::session::SESSION_UUID;
use irsa_secrets::wire::proto::secrets::{GetSecretRequest, GetSecretResponse};
use irsa_secrets::wire::proto::GET_SECRET_PATH;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::Code;

use super::session_client::BIG;
use super::tunnel_io::{self, Body, Ends, HealthCheckRequest, HealthCheckResponse, Peer};

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
                let mut res = tunnel_io::refuse(Code::Ok, "");
                res.headers_mut()
                    .insert("x-fake-daemon", "yes".parse().unwrap());
                return Ok::<_, Infallible>(res);
            }
            let headers = req.headers().clone();
            let (writer, body) = tunnel_io::writer(Ends::Answer);
            let tunnel = writer.join(req.into_body());
            tokio::spawn(async move {
                let peer = tunnel_io::handshake(tunnel).await;
                script(peer, headers).await;
            });
            let res: Response<Body> = Response::builder()
                .header("content-type", "application/grpc")
                .body(body)
                .unwrap();
            Ok(res)
        }
    });
    tunnel_io::serve(io, svc).await;
}

/// The daemon's script: what BuildKit does in a build, reported to the test.
pub fn daemon_script(report: mpsc::UnboundedSender<Observed>) -> Script {
    Arc::new(move |peer: Peer, headers: HeaderMap| {
        let report = report.clone();
        Box::pin(async move {
            let get = |id: &'static str| {
                let peer = peer.clone();
                async move {
                    let request = GetSecretRequest {
                        id: id.into(),
                        annotations: Default::default(),
                    };
                    tunnel_io::unary::<GetSecretResponse>(&peer, GET_SECRET_PATH, &request)
                        .await
                        .map(|r| r.data.clone())
                }
            };
            let role_arn = get("aws-role-arn").await;
            let client_only = get("client-only").await;
            let probe = get("GIT_AUTH_TOKEN.github.com").await.unwrap_err();
            let health = tunnel_io::unary::<HealthCheckResponse>(
                &peer,
                tunnel_io::HEALTH_CHECK,
                &HealthCheckRequest::default(),
            )
            .await
            .is_ok_and(|r| r.status == 1);
            let req = tunnel_io::call(BIG, b"");
            let res = peer.send(req).await.unwrap();
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
