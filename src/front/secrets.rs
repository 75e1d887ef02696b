//! The Secrets service asked directly on a socket: `serve` (the service and gRPC health alone on
//! a unix socket, for tests, embedding and debugging) and the probes the proxy's gRPC front door
//! answers.

use std::future::Future;

use tokio_stream::wrappers::UnixListenerStream;
use tower::Service;

use tonic::{Request, Response, Status};

use crate::front::socket::BoundSocket;
use crate::observe::{Caller, Peer};
use crate::provider::Provider;
use crate::wire::proto::secrets::secrets_server::{Secrets, SecretsServer};
use crate::wire::proto::secrets::{GetSecretRequest, GetSecretResponse};

/// Serves `provider` on `socket` until `shutdown` resolves, then removes the socket file (so a
/// helper started on the same path takes over at once) and lets in-flight calls finish.
pub async fn run(
    provider: Provider,
    socket: BoundSocket,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<SecretsServer<Provider>>().await;
    let BoundSocket { listener, file } = socket;
    tracing::info!(socket = %file.path().display(), ids = ?provider.ids(), "serving secrets");
    let incoming = UnixListenerStream::new(listener);
    let secrets = SecretsServer::new(provider);
    // Health calls to health, the rest to Secrets (tonic's router would bring axum).
    let routes = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
        let (mut health, mut secrets) = (health.clone(), secrets.clone());
        async move {
            let service = req.uri().path().split('/').nth(1);
            if service == Some(tonic_health::pb::health_server::SERVICE_NAME) {
                health.call(req).await
            } else {
                secrets.call(req).await
            }
        }
    });
    let shutdown = async move {
        shutdown.await;
        drop(file);
    };
    let result = tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(routes, incoming, shutdown)
        .await;
    tracing::info!("stopped");
    result
}

/// The Secrets service asked directly on a socket: `serve`'s whole service, and what the
/// proxy's BuildKit front door answers GetSecret calls made on the helper's socket with
/// (probes). The caller's peer comes from an [`Peer`] extension (the proxy sets
/// it) or from tonic's unix socket info (`serve`).
#[tonic::async_trait]
impl Secrets for Provider {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let peer = request.extensions().get::<Peer>().copied().or_else(|| {
            request
                .extensions()
                .get::<tonic::transport::server::UdsConnectInfo>()
                .and_then(|info| info.peer_cred)
                .map(Peer::from)
        });
        let caller = Caller {
            session: None,
            peer,
            probe: true,
        };
        let id = request.into_inner().id;
        let value = self.get(&id, &caller).await?;
        Ok(Response::new(GetSecretResponse::carrying(&value)))
    }
}
