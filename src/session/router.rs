//! The session's router: which of the daemon's calls the helper answers (`GetSecret`, through
//! the session's Secrets service; `Auth/Credentials`, `Auth/GetTokenAuthority` and
//! `Auth/VerifyTokenAuthority` when the listener serves registry credentials) and which go on
//! to the build client as raw streams.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use tonic::body::Body;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};
use tower::Service;

use super::SessionInfo;
use crate::bound::quote;
use crate::observe::metrics::Metrics;
use crate::observe::Caller;
use crate::provider::registry::{Login, SessionFailures};
use crate::provider::{ClientAnswer, Provider};
use crate::secret::SecretValue;
use crate::wire::h2::Client;
use crate::wire::proto::auth::auth_client::AuthClient;
use crate::wire::proto::auth::auth_server::{Auth, AuthServer};
use crate::wire::proto::auth::{
    CredentialsRequest, CredentialsResponse, GetTokenAuthorityRequest, GetTokenAuthorityResponse,
    VerifyTokenAuthorityRequest, VerifyTokenAuthorityResponse,
};
use crate::wire::proto::secrets::secrets_client::SecretsClient;
use crate::wire::proto::secrets::secrets_server::{Secrets, SecretsServer};
use crate::wire::proto::secrets::{GetSecretRequest, GetSecretResponse};
use crate::wire::proto::{
    CREDENTIALS_PATH, GET_SECRET_PATH, TOKEN_AUTHORITY_PATH, VERIFY_TOKEN_AUTHORITY_PATH,
};

/// Routes the daemon's calls: GetSecret (and, when registry credentials are served, the three
/// Auth methods that decide who hands them out) to the typed services, the rest to the client.
#[derive(Clone)]
pub(super) struct Router {
    to_client: Client,
    secrets: SecretsServer<SessionSecrets>,
    auth: Option<AuthServer<SessionAuth>>,
    metrics: Metrics,
}

impl Router {
    /// The router of one session whose client side is `to_client`.
    pub(super) fn new(to_client: Client, info: &SessionInfo, provider: Provider) -> Self {
        let metrics = provider.metrics().clone();
        let origin = || Uri::from_static("http://localhost");
        let auth = provider.registries().active().then(|| {
            AuthServer::new(SessionAuth {
                provider: provider.clone(),
                client: AuthClient::with_origin(to_client.clone(), origin()),
                caller: info.caller(),
                failures: Arc::default(),
            })
        });
        let secrets = SecretsServer::new(SessionSecrets {
            provider,
            client: info
                .client_serves_secrets()
                .then(|| SecretsClient::with_origin(to_client.clone(), origin())),
            caller: info.caller(),
        });
        Router {
            to_client,
            secrets,
            auth,
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
        if let Some(auth) = self.auth.as_mut() {
            if [
                CREDENTIALS_PATH,
                TOKEN_AUTHORITY_PATH,
                VERIFY_TOKEN_AUTHORITY_PATH,
            ]
            .contains(&req.uri().path())
            {
                return Ok(auth.call(req).await.unwrap_or_else(|never| match never {}));
            }
        }
        tracing::trace!(path = %quote(req.uri().path()), "forwarding to the client");
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
    client: Option<SecretsClient<Client>>,
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
        // A hostile id goes no further, not even to the client.
        self.provider
            .check_id(&request.id, &self.caller, started)
            .await?;
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

/// The session's Auth service, for the methods that decide who hands out registry credentials:
/// the client is asked first and its credentials win; the provider answers ECR hosts it serves.
#[derive(Clone)]
struct SessionAuth {
    provider: Provider,
    client: AuthClient<Client>,
    caller: Caller,
    /// The ECR failures this session met, answered again without another ECR call.
    failures: Arc<SessionFailures>,
}

impl SessionAuth {
    async fn client_credentials(&self, host: &str) -> Result<Login, Status> {
        let request = CredentialsRequest {
            host: host.to_string(),
        };
        self.client
            .clone()
            .credentials(request)
            .await
            .map(|r| into_login(r.into_inner()))
    }

    /// `Unimplemented` for `method` when the helper answers `host`'s credentials: an ECR host
    /// it serves, and the client has none of its own.
    async fn decline_token_authority(&self, method: &str, host: &str) -> Result<(), Status> {
        if !self.provider.serves_registry(host) {
            return Ok(());
        }
        let client = self.client_credentials(host).await;
        if client.is_ok_and(|c| !c.is_empty()) {
            return Ok(());
        }
        let host = quote(host);
        tracing::debug!(%host, "declining {method}: BuildKit is to ask Credentials");
        Err(Status::unimplemented(format!(
            "irsa-secrets answers Credentials for {host}"
        )))
    }
}

#[tonic::async_trait]
impl Auth for SessionAuth {
    async fn credentials(
        &self,
        request: GrpcRequest<CredentialsRequest>,
    ) -> Result<GrpcResponse<CredentialsResponse>, Status> {
        let started = Instant::now();
        let host = request.into_inner().host;
        let client = self.client_credentials(&host).await;
        let answer = self
            .provider
            .registry_credentials(&host, &self.caller, client, &self.failures, started)
            .await?;
        Ok(GrpcResponse::new(carrying(&answer)))
    }

    /// For a Bearer registry BuildKit asks for a signing key first and, given one, lets the
    /// client fetch tokens with the client's own credentials. When the helper is to answer (an
    /// ECR host it serves, and the client has no credentials for it), `Unimplemented` makes
    /// BuildKit ask `Credentials` instead, and fetch the token itself with what the helper
    /// gives. Every other request is the client's to answer.
    async fn get_token_authority(
        &self,
        request: GrpcRequest<GetTokenAuthorityRequest>,
    ) -> Result<GrpcResponse<GetTokenAuthorityResponse>, Status> {
        let request = request.into_inner();
        self.decline_token_authority("GetTokenAuthority", &request.host)
            .await?;
        self.client.clone().get_token_authority(request).await
    }

    /// A later session is offered BuildKit's token fetchers for the host by this proof of the
    /// key. A client with no credentials proves the anonymous key, which depends on BuildKit's
    /// salt alone: forwarded, any anonymous build's fetcher for an ECR host (FetchToken, no
    /// credentials) would be taken over, and the helper's password never asked. Declined like
    /// `GetTokenAuthority`, so BuildKit links a fetcher only by `Credentials` or makes one.
    async fn verify_token_authority(
        &self,
        request: GrpcRequest<VerifyTokenAuthorityRequest>,
    ) -> Result<GrpcResponse<VerifyTokenAuthorityResponse>, Status> {
        let request = request.into_inner();
        self.decline_token_authority("VerifyTokenAuthority", &request.host)
            .await?;
        self.client.clone().verify_token_authority(request).await
    }
}

/// The client's answer as the provider's [`Login`], moved out of the message.
fn into_login(mut answer: CredentialsResponse) -> Login {
    Login {
        username: std::mem::take(&mut answer.username),
        secret: SecretValue::from(std::mem::take(&mut answer.secret)),
    }
}

/// The answer carrying `login`: a copy, wiped when the message is dropped.
fn carrying(login: &Login) -> CredentialsResponse {
    CredentialsResponse {
        username: login.username.clone(),
        secret: String::from_utf8_lossy(login.secret.expose()).into_owned(),
    }
}
