//! A fake build client's session: opens `Control/Session` on an HTTP/2 connection and serves,
//! inside the tunnel, what a client serves (health, its own secrets, its registry logins and
//! token key and its proof, a large stream). It speaks through the tests' own stack ([`super::tunnel_io`]),
//! not the crate's.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::StreamBody;
use hyper::body::Incoming;
use irsa_secrets::front::grpc::SESSION_PATH;
use irsa_secrets::session::{SESSION_METHOD, SESSION_UUID};
use irsa_secrets::wire::proto::auth::{
    CredentialsRequest, CredentialsResponse, GetTokenAuthorityRequest, GetTokenAuthorityResponse,
    VerifyTokenAuthorityRequest, VerifyTokenAuthorityResponse,
};
use irsa_secrets::wire::proto::secrets::{GetSecretRequest, GetSecretResponse};
use irsa_secrets::wire::proto::{
    CREDENTIALS_PATH, GET_SECRET_PATH, TOKEN_AUTHORITY_PATH, VERIFY_TOKEN_AUTHORITY_PATH,
};
use tonic::Code;
use tower::{Service, ServiceExt};

use super::tunnel_io::{self, Body, BoxError, Ends, HealthCheckRequest, HealthCheckResponse, Peer};

/// The registry logins the fake client has, as `docker login` gives buildx: (host, user,
/// secret). Every other host gets an empty answer, as buildx gives.
pub const CLIENT_LOGINS: [(&str, &str, &str); 1] = [(
    "210987654321.dkr.ecr.eu-west-1.amazonaws.com",
    "client-user",
    "client-secret",
)];
/// The token-signing key the fake client hands out for any host, as buildx does.
pub const CLIENT_TOKEN_KEY: [u8; 32] = [7; 32];
/// The proof of that key the fake client gives for any payload (BuildKit would check it).
pub const CLIENT_TOKEN_PROOF: [u8; 64] = [9; 64];

/// A raw streaming method the fake client serves: a large body, to prove streaming.
pub const BIG: &str = "/test.Stream/Big";
/// Its size.
pub const BIG_SIZE: usize = 8 * 1024 * 1024;

/// The build client's own secrets (its `--secret` flags).
#[derive(Clone)]
pub struct ClientSecrets(pub Vec<(&'static str, &'static str)>);

impl ClientSecrets {
    fn answer(&self, id: &str) -> Response<Body> {
        match self.0.iter().find(|(k, _)| *k == id) {
            Some((_, v)) => tunnel_io::answer(&GetSecretResponse {
                data: v.as_bytes().to_vec(),
            }),
            None => tunnel_io::refuse(Code::NotFound, &format!("secret {id} not found")),
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
    let (writer, body) = tunnel_io::writer(Ends::Call);
    let mut req = Request::post(format!("http://localhost{SESSION_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(SESSION_UUID, id.as_str())
        .header(SESSION_METHOD, tunnel_io::HEALTH_CHECK)
        .header(SESSION_METHOD, BIG)
        .body(body)
        .unwrap();
    if own.is_some() {
        req.headers_mut()
            .append(SESSION_METHOD, GET_SECRET_PATH.parse().unwrap());
    }
    let res = control.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 200, "{res:?}");
    let tunnel = writer.join(res.into_body());
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (own, checks) = (own.clone(), health_checks.clone());
        async move {
            let res: Response<Body> = match (req.uri().path(), &own) {
                (BIG, _) => {
                    let chunks: Vec<Result<_, BoxError>> = big_payload()
                        .chunks(100_000)
                        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
                        .collect();
                    Response::new(Body::new(StreamBody::new(futures_util::stream::iter(
                        chunks,
                    ))))
                }
                (tunnel_io::HEALTH_CHECK, _) => {
                    checks.fetch_add(1, Ordering::Relaxed);
                    let _: HealthCheckRequest = tunnel_io::request_message(req).await;
                    tunnel_io::answer(&HealthCheckResponse { status: 1 })
                }
                (GET_SECRET_PATH, Some(own)) => {
                    let r: GetSecretRequest = tunnel_io::request_message(req).await;
                    own.answer(&r.id)
                }
                (CREDENTIALS_PATH, _) => {
                    let r: CredentialsRequest = tunnel_io::request_message(req).await;
                    let login = CLIENT_LOGINS.iter().find(|(host, _, _)| *host == r.host);
                    tunnel_io::answer(&CredentialsResponse {
                        username: login.map(|l| l.1).unwrap_or_default().into(),
                        secret: login.map(|l| l.2).unwrap_or_default().into(),
                    })
                }
                (TOKEN_AUTHORITY_PATH, _) => {
                    let _: GetTokenAuthorityRequest = tunnel_io::request_message(req).await;
                    tunnel_io::answer(&GetTokenAuthorityResponse {
                        public_key: CLIENT_TOKEN_KEY.to_vec(),
                    })
                }
                (VERIFY_TOKEN_AUTHORITY_PATH, _) => {
                    let _: VerifyTokenAuthorityRequest = tunnel_io::request_message(req).await;
                    tunnel_io::answer(&VerifyTokenAuthorityResponse {
                        signed: CLIENT_TOKEN_PROOF.to_vec(),
                    })
                }
                _ => tunnel_io::refuse(Code::Unimplemented, "not here"),
            };
            Ok::<_, Infallible>(res)
        }
    });
    tunnel_io::serve(tunnel, svc).await;
}

/// An HTTP/2 client connection to the helper's socket, driven on its own task.
pub async fn connect(helper: &std::path::Path) -> Peer {
    let io = tokio::net::UnixStream::connect(helper).await.unwrap();
    tunnel_io::handshake(io).await
}
