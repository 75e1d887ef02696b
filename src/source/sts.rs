//! Scoped, short-lived AWS credentials from a web identity: the token exchanged with STS
//! (AssumeRoleWithWebIdentity), so a build gets what its session policy allows for as long as
//! `--duration` says, not the token that can mint full-role credentials for hours; and a
//! credential identity narrowed with AssumeRole ([`RoleChain`]). Cached and served by
//! [`Credentials`].

use std::time::SystemTime;

use futures_util::future::BoxFuture;

use aws_credential_types::provider::SharedCredentialsProvider;

use super::credentials::{Credentials, Issued, Mint};
use super::irsa::Irsa;
use super::jwt::Claims;
use super::{ErrorKind, Source, SourceError};

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

/// Narrows a credential identity (Pod Identity, a container role, IMDS) with AssumeRole, so a
/// build gets less than the runner has: STS calls are signed with the identity's cached
/// credentials.
#[derive(Debug)]
pub struct RoleChain {
    base: Credentials,
    scope: Scope,
    exchange: Exchange,
    external_id: Option<String>,
}

impl RoleChain {
    /// Assumes `scope`'s role with `base`'s credentials, at `region`'s STS or `endpoint`.
    pub fn new(
        base: Credentials,
        scope: Scope,
        region: &str,
        endpoint: Option<&str>,
        external_id: Option<String>,
    ) -> Self {
        let signer = SharedCredentialsProvider::new(base.clone());
        Self {
            base,
            scope,
            exchange: Exchange::signed(region, endpoint, signer),
            external_id,
        }
    }
}

impl Mint for RoleChain {
    fn name(&self) -> &'static str {
        "assume-role"
    }

    fn mint(&self) -> BoxFuture<'_, Result<Issued, SourceError>> {
        Box::pin(async move {
            // No token, so no claims: a template naming the pod has nothing to fill it with.
            let session_name = self
                .scope
                .session_name
                .render(&Claims::default(), SystemTime::now())
                .map_err(|e| SourceError::new(ErrorKind::Invalid, e.to_string()))?;
            self.exchange
                .assume_role(
                    &self.scope,
                    &session_name,
                    self.base.name(),
                    self.external_id.as_deref(),
                )
                .await
        })
    }
}
