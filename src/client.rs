//! A Secrets client over a unix socket: what `probe` and the tests use to ask a helper what a
//! build would get.

use std::path::Path;

use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::secrets::secrets_client::SecretsClient;
use crate::proto::secrets::GetSecretRequest;
use crate::secret::SecretValue;

/// Connects to the Secrets service on the unix socket at `path`.
pub async fn secrets(path: &Path) -> anyhow::Result<SecretsClient<Channel>> {
    let path = path.to_path_buf();
    // The URI is a placeholder: the connector ignores it and dials the socket.
    let channel = Endpoint::try_from("http://irsa-secrets.local")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the helper's socket: {e}"))?;
    Ok(SecretsClient::new(channel))
}

/// Asks for one secret.
pub async fn get_secret(
    client: &mut SecretsClient<Channel>,
    id: &str,
) -> Result<SecretValue, tonic::Status> {
    let response = client
        .get_secret(GetSecretRequest {
            id: id.to_string(),
            annotations: Default::default(),
        })
        .await?;
    Ok(response.into_inner().into_value())
}

/// The hex SHA-256 of a value: what a build step can print to prove which value it got.
pub fn fingerprint(value: &SecretValue) -> String {
    hex::encode(Sha256::digest(value.expose()))
}
