//! The session's router: which of the daemon's calls the helper answers (`GetSecret`, through
//! the session's Secrets service) and which go on to the build client as raw streams.

use std::convert::Infallible;
use std::time::Instant;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use tonic::body::Body;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};
use tower::Service;

use super::SessionInfo;
use crate::observe::metrics::Metrics;
use crate::observe::Caller;
use crate::provider::{ClientAnswer, Provider};
use crate::wire::h2::Peer;
use crate::wire::proto::secrets::secrets_client::SecretsClient;
use crate::wire::proto::secrets::secrets_server::{Secrets, SecretsServer};
use crate::wire::proto::secrets::{GetSecretRequest, GetSecretResponse};
use crate::wire::proto::GET_SECRET_PATH;

/// Routes the daemon's calls: GetSecret to the typed service, the rest to the client.
#[derive(Clone)]
pub(super) struct Router {
    to_client: Peer,
    secrets: SecretsServer<SessionSecrets>,
    metrics: Metrics,
}

impl Router {
    /// The router of one session whose client side is `to_client`.
    pub(super) fn new(to_client: Peer, info: &SessionInfo, provider: Provider) -> Self {
        let metrics = provider.metrics().clone();
        let secrets = SecretsServer::new(SessionSecrets {
            provider,
            client: info.client_serves_secrets().then(|| {
                SecretsClient::with_origin(to_client.clone(), Uri::from_static("http://localhost"))
            }),
            caller: info.caller(),
        });
        Router {
            to_client,
            secrets,
            metrics,
        }
    }

    /// Answers one call of the daemon's.
    pub(super) async fn route(
        mut self,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        if req.uri().path() == GET_SECRET_PATH {
            return Ok(self
                .secrets
                .call(req)
                .await
                .unwrap_or_else(|never| match never {}));
        }
        tracing::trace!(path = req.uri().path(), "forwarding to the client");
        Ok(self
            .to_client
            .forward(req, "the build client", self.metrics.forwarded())
            .await)
    }
}

/// The session's Secrets service: the client's own value first when it serves the id, then the
/// provider for the ids it owns; everything else is the client's answer.
#[derive(Clone)]
struct SessionSecrets {
    provider: Provider,
    client: Option<SecretsClient<Peer>>,
    caller: Caller,
}

impl SessionSecrets {
    async fn ask_client(
        &self,
        request: &GetSecretRequest,
    ) -> Option<Result<GetSecretResponse, Status>> {
        let mut client = self.client.clone()?;
        Some(
            client
                .get_secret(request.clone())
                .await
                .map(GrpcResponse::into_inner),
        )
    }
}

#[tonic::async_trait]
impl Secrets for SessionSecrets {
    async fn get_secret(
        &self,
        request: GrpcRequest<GetSecretRequest>,
    ) -> Result<GrpcResponse<GetSecretResponse>, Status> {
        let request = request.into_inner();
        let started = Instant::now();
        let client = self
            .ask_client(&request)
            .await
            .map(|r| ClientAnswer::from_result(r.map(GetSecretResponse::into_value)));
        let value = self
            .provider
            .get_in_session(&request.id, &self.caller, client, started)
            .await?;
        Ok(GrpcResponse::new(GetSecretResponse::carrying(&value)))
    }
}
