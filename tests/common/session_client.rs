//! A fake build client's session: opens `Control/Session` on an HTTP/2 connection and serves,
//! inside the tunnel, what a client serves (health, its own secrets, a large stream).

#![allow(clippy::result_large_err)] // tonic fixes body errors to `Status`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::StreamBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use irsa_secrets::h2::{self, Peer};
use irsa_secrets::proto::secrets::secrets_server::{Secrets, SecretsServer};
use irsa_secrets::proto::secrets::{GetSecretRequest, GetSecretResponse};
use irsa_secrets::proxy::grpc::{SESSION_METHOD, SESSION_PATH, SESSION_UUID};
use irsa_secrets::tunnel::{self, Outgoing};
use tonic::body::Body;
use tonic::Status;
use tower::{Service, ServiceExt};

/// A raw streaming method the fake client serves: a large body, to prove streaming.
pub const BIG: &str = "/test.Stream/Big";
/// Its size.
pub const BIG_SIZE: usize = 8 * 1024 * 1024;

/// The build client's own secrets (its `--secret` flags).
#[derive(Clone)]
pub struct ClientSecrets(pub Vec<(&'static str, &'static str)>);

#[tonic::async_trait]
impl Secrets for ClientSecrets {
    async fn get_secret(
        &self,
        r: tonic::Request<GetSecretRequest>,
    ) -> Result<tonic::Response<GetSecretResponse>, Status> {
        let id = r.into_inner().id;
        match self.0.iter().find(|(k, _)| *k == id) {
            Some((_, v)) => Ok(tonic::Response::new(GetSecretResponse {
                data: v.as_bytes().to_vec(),
            })),
            None => Err(Status::not_found(format!("secret {id} not found"))),
        }
    }
}

pub fn big_payload() -> Vec<u8> {
    (0..BIG_SIZE).map(|i| (i * 31 % 251) as u8).collect()
}

/// A build client: opens `Control/Session` on `control` and serves health, its own secrets (if
/// any) and a large stream inside the tunnel until the daemon side ends.
pub async fn client_session(
    mut control: Peer,
    id: String,
    own: Option<ClientSecrets>,
    health_checks: Arc<AtomicUsize>,
) {
    let (outbox, body) = tunnel::outgoing(Outgoing::Request);
    let mut req = Request::post(format!("http://localhost{SESSION_PATH}"))
        .header("content-type", "application/grpc")
        .header(SESSION_UUID, id.as_str())
        .header(SESSION_METHOD, "/grpc.health.v1.Health/Check")
        .header(SESSION_METHOD, BIG)
        .body(body)
        .unwrap();
    if own.is_some() {
        req.headers_mut().append(
            SESSION_METHOD,
            irsa_secrets::proto::GET_SECRET_PATH.parse().unwrap(),
        );
    }
    let res = control.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 200, "{res:?}");
    let tunnel = outbox.join(res.into_body(), tunnel::Incoming::Response);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let secrets = own.map(SecretsServer::new);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (mut health, secrets, checks) =
            (health.clone(), secrets.clone(), health_checks.clone());
        async move {
            let res: Response<Body> = match req.uri().path() {
                BIG => {
                    let chunks: Vec<Result<_, Status>> = big_payload()
                        .chunks(100_000)
                        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
                        .collect();
                    Response::new(Body::new(StreamBody::new(futures_util::stream::iter(
                        chunks,
                    ))))
                }
                p if p.starts_with("/grpc.health.v1.Health/") => {
                    checks.fetch_add(1, Ordering::Relaxed);
                    health.call(req).await.unwrap()
                }
                p if p == irsa_secrets::proto::GET_SECRET_PATH && secrets.is_some() => {
                    secrets.unwrap().call(req).await.unwrap()
                }
                _ => Status::unimplemented("not here").into_http(),
            };
            Ok::<_, Infallible>(res)
        }
    });
    let _ = h2::server()
        .serve_connection(TokioIo::new(tunnel), svc)
        .await;
}

/// An HTTP/2 client connection to the helper's socket, driven on its own task.
pub async fn connect(helper: &std::path::Path) -> Peer {
    let io = tokio::net::UnixStream::connect(helper).await.unwrap();
    let (peer, conn) = h2::handshake(io).await.unwrap();
    tokio::spawn(conn);
    peer
}
