//! Types generated from `proto/` at build time.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `moby.buildkit.secrets.v1`: the session secrets service BuildKit calls.
pub mod secrets {
    tonic::include_proto!("moby.buildkit.secrets.v1");
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

/// Full path of the one method the helper answers inside a session.
pub const GET_SECRET_PATH: &str = "/moby.buildkit.secrets.v1.Secrets/GetSecret";

#[cfg(test)]
mod tests {
    use super::secrets::GetSecretResponse;

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
