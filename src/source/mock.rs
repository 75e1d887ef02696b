//! A stand-in identity for laptops and tests: a realistic, obviously unsigned service-account
//! token and a role ARN in AWS's documentation account, so the same Dockerfile and workflow run
//! where there is no cluster and no AWS.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use super::clock;
use super::{IdentityIds, Part, Source, SourceError};
use crate::secret::SecretValue;
use crate::source::jwt::{self, Audience, Claims};

/// The role ARN the mock serves: account 111122223333 is reserved for AWS documentation.
pub const MOCK_ROLE_ARN: &str = "arn:aws:iam::111122223333:role/irsa-secrets-mock";
/// The signature text: readable in any JWT debugger as what it is.
pub const MOCK_SIGNATURE: &str = "irsa-secrets-mock-signature-not-valid";
/// Lifetime of a minted token (a typical EKS projected token lives 24 h).
pub const MOCK_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const MOCK_ISSUER: &str =
    "https://oidc.eks.us-east-1.amazonaws.com/id/0123456789ABCDEF0123456789MOCK0";

/// Serves a minted token (re-minted when under the margin), the mock role ARN and the region.
#[derive(Debug)]
pub struct Mock {
    ids: IdentityIds,
    audience: String,
    margin: Duration,
    region: Option<String>,
    clock: clock::Shared,
    current: Mutex<Option<(u64, SecretValue)>>,
}

impl Mock {
    /// A mock identity for `audience`, re-minting tokens that have less than `margin` left.
    pub fn new(
        ids: IdentityIds,
        audience: String,
        margin: Duration,
        region: Option<String>,
    ) -> Self {
        Self {
            ids,
            audience,
            margin,
            region,
            clock: clock::system(),
            current: Mutex::new(None),
        }
    }

    /// The same, minting and aging tokens by `clock`.
    pub fn with_clock(self, clock: clock::Shared) -> Self {
        Self { clock, ..self }
    }

    /// The current token, minted on first use and again when it nears expiry.
    pub fn token(&self) -> SecretValue {
        let now = secs(self.clock.now());
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match &*current {
            Some((exp, value)) if *exp > now + self.margin.as_secs() => value.clone(),
            _ => {
                let (exp, value) = mint(&self.audience, now);
                *current = Some((exp, value.clone()));
                value
            }
        }
    }
}

impl Source for Mock {
    fn name(&self) -> &'static str {
        "mock"
    }

    fn ids(&self) -> Vec<String> {
        self.ids.served(self.region.is_some())
    }

    fn expiry(&self) -> Option<Result<Duration, SourceError>> {
        self.token();
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let exp = current.as_ref().map(|(exp, _)| *exp).unwrap_or_default();
        Some(Ok(Duration::from_secs(
            exp.saturating_sub(secs(self.clock.now())),
        )))
    }

    fn fetch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SecretValue>, SourceError>> {
        Box::pin(async move {
            Ok(match self.ids.part(id) {
                Some(Part::Token) => Some(self.token()),
                Some(Part::RoleArn) => Some(SecretValue::from(MOCK_ROLE_ARN.to_string())),
                Some(Part::Region) => self.region.clone().map(SecretValue::from),
                None => None,
            })
        })
    }
}

/// `t` in whole seconds since the epoch, as tokens count time.
fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Mints a token issued at `now`; returns its expiry and the token.
pub fn mint(audience: &str, now: u64) -> (u64, SecretValue) {
    let exp = now + MOCK_LIFETIME.as_secs();
    let other = serde_json::json!({
        "kubernetes.io": {
            "namespace": "ci",
            "serviceaccount": { "name": "builder", "uid": "6d6f636b-0000-4000-8000-000000000001" },
            "pod": { "name": "runner-mock-0", "uid": "6d6f636b-0000-4000-8000-000000000002" }
        }
    });
    let claims = Claims {
        iss: Some(MOCK_ISSUER.into()),
        sub: Some("system:serviceaccount:ci:builder".into()),
        aud: Audience::Many(vec![audience.to_string()]),
        exp,
        nbf: Some(now),
        iat: Some(now),
        other: other.as_object().cloned().unwrap_or_default(),
    };
    let token = jwt::encode_unverifiable(&claims, "irsa-secrets-mock", MOCK_SIGNATURE);
    (exp, SecretValue::from(token))
}

/// Writes `DIR/token` (mode 0600) and `DIR/env`, which sets `AWS_WEB_IDENTITY_TOKEN_FILE`,
/// `AWS_ROLE_ARN` and `AWS_REGION` the way the EKS webhook would, for `irsa-secrets mock write`.
pub fn write_files(
    dir: &Path,
    audience: &str,
    region: &str,
) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    let token_path = dir.join("token");
    let (_, token) = mint(audience, secs(SystemTime::now()));
    let tmp = dir.join(".token.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(token.expose())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &token_path)?;
    let env_path = dir.join("env");
    let env = format!(
        "AWS_WEB_IDENTITY_TOKEN_FILE={}\nAWS_ROLE_ARN={MOCK_ROLE_ARN}\nAWS_REGION={region}\n",
        token_path.display()
    );
    std::fs::write(&env_path, env)?;
    Ok((token_path, env_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::jwt::Expectations;

    #[test]
    fn minted_tokens_validate_like_real_ones() {
        let now = SystemTime::now();
        let (exp, token) = mint("sts.amazonaws.com", secs(now));
        let want = Expectations {
            audience: "sts.amazonaws.com".into(),
            expiry_margin: Duration::from_secs(300),
        };
        let checked = jwt::check(token.expose(), &want, now).unwrap();
        assert_eq!(checked.claims.exp, exp);
        assert_eq!(
            checked.claims.sub.as_deref(),
            Some("system:serviceaccount:ci:builder")
        );
        assert!(checked.claims.other.contains_key("kubernetes.io"));
        assert!(crate::source::irsa::check_role_arn(MOCK_ROLE_ARN).is_ok());
    }

    #[test]
    fn the_token_is_stable_until_it_nears_expiry() {
        let m = Mock::new(
            IdentityIds::default(),
            "sts.amazonaws.com".into(),
            Duration::from_secs(300),
            None,
        );
        assert_eq!(m.token(), m.token());
        let short = Mock::new(
            IdentityIds::default(),
            "sts.amazonaws.com".into(),
            MOCK_LIFETIME * 2,
            None,
        );
        let clock = clock::Manual::shared();
        let short = short.with_clock(clock.clone());
        let first = short.token();
        clock.advance(Duration::from_secs(1));
        assert_ne!(
            first,
            short.token(),
            "a token under the margin is re-minted"
        );
    }
}
