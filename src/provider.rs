//! The Secrets service: maps ids to sources, enforces BuildKit's value rules and turns source
//! failures into gRPC statuses BuildKit reports precisely. Knows nothing of sockets or sessions.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use crate::proto::secrets::secrets_server::Secrets;
use crate::proto::secrets::{GetSecretRequest, GetSecretResponse};
use crate::secret::{SecretValue, MAX_SECRET_SIZE};
use crate::sources::{ErrorKind, Source};

/// Answers `GetSecret` from a fixed table of ids built at start-up.
#[derive(Debug, Clone)]
pub struct Provider {
    routes: Arc<HashMap<String, Arc<dyn Source>>>,
}

impl Provider {
    /// Builds the id table. A later source wins an id it shares with an earlier one, so explicit
    /// `--secret` declarations (listed last) override the identity sources.
    pub fn new(sources: Vec<Arc<dyn Source>>) -> Self {
        let mut routes = HashMap::new();
        for source in sources {
            for id in source.ids() {
                routes.insert(id, Arc::clone(&source));
            }
        }
        Self {
            routes: Arc::new(routes),
        }
    }

    /// The ids this provider answers, sorted, for start-up logs and `doctor`.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.routes.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// True when `id` is one of ours.
    pub fn owns(&self, id: &str) -> bool {
        self.routes.contains_key(id)
    }

    /// Fetches `id`. `NotFound` for ids nobody serves, so BuildKit treats them as absent (its
    /// `GIT_AUTH_TOKEN.*` and `HTTP_AUTH_*` probes rely on that); any other failure gets a code
    /// BuildKit reports as a hard error, with a message that says what to check.
    pub async fn get(&self, id: &str) -> Result<SecretValue, Status> {
        let Some(source) = self.routes.get(id) else {
            tracing::debug!(id, "secret not served here");
            return Err(Status::not_found(format!("secret {id} not found")));
        };
        let result = source.fetch(id).await;
        let outcome = match result {
            Ok(Some(value)) if value.is_empty() => Err(Status::failed_precondition(format!(
                "secret {id} from the {} source is empty; an empty secret is refused rather than \
                 mounted as an empty file",
                source.name()
            ))),
            Ok(Some(value)) if value.len() > MAX_SECRET_SIZE => {
                Err(Status::failed_precondition(format!(
                    "secret {id} from the {} source is {} bytes, over BuildKit's limit of {} KiB",
                    source.name(),
                    value.len(),
                    MAX_SECRET_SIZE / 1024
                )))
            }
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(Status::not_found(format!("secret {id} not found"))),
            Err(e) => {
                let code = match e.kind {
                    ErrorKind::Missing | ErrorKind::Invalid => Code::FailedPrecondition,
                    ErrorKind::Denied => Code::PermissionDenied,
                    ErrorKind::Io => Code::Unavailable,
                };
                Err(Status::new(code, format!("irsa-secrets: {e}")))
            }
        };
        match &outcome {
            Ok(value) => tracing::info!(
                id,
                source = source.name(),
                bytes = value.len(),
                "secret served"
            ),
            Err(status) => {
                tracing::warn!(id, source = source.name(), code = ?status.code(), error = status.message(), "secret refused")
            }
        }
        outcome
    }
}

#[tonic::async_trait]
impl Secrets for Provider {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = request.into_inner().id;
        let value = self.get(&id).await?;
        Ok(Response::new(GetSecretResponse {
            data: value.expose().to_vec(),
        }))
    }
}
