//! Scoped, short-lived AWS credentials from a web identity: the token exchanged with STS
//! (AssumeRoleWithWebIdentity), so a build gets what its session policy allows for as long as
//! `--duration` says, not the token that can mint full-role credentials for hours. Cached and
//! served by [`Credentials`](super::credentials::Credentials).

use std::time::SystemTime;

use futures_util::future::BoxFuture;

use super::credentials::{Issued, Mint};
use super::irsa::Irsa;
use super::{ErrorKind, SourceError};

pub mod exchange;
pub mod scope;

use exchange::Exchange;
use scope::Scope;

/// Exchanges a freshly read web identity token for credentials of one [`Scope`].
#[derive(Debug)]
pub struct WebIdentity {
    identity: Irsa,
    scope: Scope,
    exchange: Exchange,
}

impl WebIdentity {
    /// Exchanges `identity`'s token for `scope` through `exchange`.
    pub fn new(identity: Irsa, scope: Scope, exchange: Exchange) -> Self {
        Self {
            identity,
            scope,
            exchange,
        }
    }
}

impl Mint for WebIdentity {
    fn name(&self) -> &'static str {
        "sts"
    }

    fn mint(&self) -> BoxFuture<'_, Result<Issued, SourceError>> {
        Box::pin(async move {
            let (token, checked) = self.identity.checked_token().await?;
            let session_name = self
                .scope
                .session_name
                .render(&checked.claims, SystemTime::now())
                .map_err(|e| SourceError::new(ErrorKind::Invalid, e.to_string()))?;
            self.exchange
                .assume(&self.scope, &token, &checked.claims, &session_name)
                .await
        })
    }
}
