//! Types generated from `proto/` at build time.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `moby.buildkit.secrets.v1`: the session secrets service BuildKit calls.
pub mod secrets {
    tonic::include_proto!("moby.buildkit.secrets.v1");
}

/// `moby.filesync.v1`: the registry credentials service BuildKit calls (the `Auth` service
/// lives in the file-sync package).
pub mod auth {
    tonic::include_proto!("moby.filesync.v1");
}

/// `moby.buildkit.v1`: the frame of the `Control/Session` tunnel.
pub mod control {
    tonic::include_proto!("moby.buildkit.v1");
}

/// The generated Debug would print the value; this one says how long it is.
impl std::fmt::Debug for secrets::GetSecretResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetSecretResponse")
            .field(
                "data",
                &format_args!("[redacted, {} bytes]", self.data.len()),
            )
            .finish()
    }
}

impl secrets::GetSecretResponse {
    /// The answer carrying `value`: a copy, wiped when the message is dropped.
    pub fn carrying(value: &crate::secret::SecretValue) -> Self {
        Self {
            data: value.expose().to_vec(),
        }
    }

    /// Moves the value into a [`SecretValue`](crate::secret::SecretValue), leaving nothing behind to wipe.
    pub fn into_value(mut self) -> crate::secret::SecretValue {
        crate::secret::SecretValue::new(std::mem::take(&mut self.data))
    }
}

/// Wipes the value when the message is dropped, as `SecretValue` does.
impl Drop for secrets::GetSecretResponse {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.data);
    }
}

/// The generated Debug would print the registry password; this one names the user only.
impl std::fmt::Debug for auth::CredentialsResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsResponse")
            .field("username", &self.username)
            .field(
                "secret",
                &format_args!("[redacted, {} bytes]", self.secret.len()),
            )
            .finish()
    }
}

/// Wipes the password when the message is dropped.
impl Drop for auth::CredentialsResponse {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

/// Full path of the registry credentials method.
pub const CREDENTIALS_PATH: &str = "/moby.filesync.v1.Auth/Credentials";
/// Full path of the method that asks the client for a token-signing key (Bearer registries).
pub const TOKEN_AUTHORITY_PATH: &str = "/moby.filesync.v1.Auth/GetTokenAuthority";
/// Full path of the method that asks the client to prove it holds a token-signing key BuildKit
/// already has a token fetcher for (a later session linking that fetcher).
pub const VERIFY_TOKEN_AUTHORITY_PATH: &str = "/moby.filesync.v1.Auth/VerifyTokenAuthority";

/// Full path of the secrets method.
pub const GET_SECRET_PATH: &str = "/moby.buildkit.secrets.v1.Secrets/GetSecret";

#[cfg(test)]
mod tests {
    use super::auth::CredentialsResponse;
    use super::secrets::GetSecretResponse;

    #[test]
    fn a_credentials_response_debugs_without_its_secret() {
        let r = CredentialsResponse {
            username: "AWS".into(),
            secret: "hunter2-password".into(),
        };
        let text = format!("{r:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("AWS") && text.contains("[redacted, 16 bytes]"),
            "{text}"
        );
    }

    #[test]
    fn a_secret_response_debugs_without_its_value() {
        let r = GetSecretResponse {
            data: b"hunter2-value".to_vec(),
        };
        let text = format!("{r:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("[redacted, 13 bytes]"), "{text}");
    }
}
