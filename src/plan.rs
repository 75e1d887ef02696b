//! What the flags and the config file's listeners ask for, decided and checked whole before
//! anything is opened or bound: which identity each listener serves and how, which identity
//! the helper's own AWS calls use, which secrets and registries each listener answers. No I/O
//! here: the environment's identity settings come in as [`Present`], files are named, never
//! read. The command line builds sources and binds sockets from a [`Plan`] only once every
//! listener in it is valid, so a bad second listener leaves no socket of the first behind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::front::socket::{self, SocketError};
use crate::source::aws_secret::AwsSecret;
use crate::source::ecr::host::AliasError;
use crate::source::ecr::Hosts;
use crate::source::identity::{self, Choice, Chosen, Identity, NoIdentity, Present};
use crate::source::platform::Platform;
use crate::source::static_secret::{Origin, SecretSpec};

/// What to do on a machine with no identity, for every message that reports one missing.
pub const NO_IDENTITY_HINT: &str = "On EKS, annotate the runner's service account with \
     eks.amazonaws.com/role-arn (IRSA) or give it a Pod Identity association; on ECS or \
     CodeBuild, give the task or project a role; in GitHub Actions, grant the job \
     `permissions: id-token: write`, set AWS_ROLE_ARN and pass --identity github-oidc; on EC2, \
     pass --identity imds; on a laptop, pass --mock, or run `irsa-secrets mock write DIR` and \
     `set -a; . DIR/env; set +a`. Each platform's set-up: docs/ in the project (README.md, \
     Platforms)";

/// What one set of identity flags (`serve`'s, or one listener's) asks for.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    /// `--identity`.
    pub choice: Choice,
    /// `--mock`: the mock identity, whatever `--identity` says.
    pub mock: bool,
    /// The identity settings present: `token_file` and `role_arn` from the flags (or their
    /// variables), the others from the environment. With [`Choice::Own`] only the first two
    /// count.
    pub present: Present,
    /// `--sts`.
    pub sts: bool,
    /// `--serve-identity`.
    pub serve_identity: bool,
    /// `--assume-role`: the role a credential identity is narrowed to.
    pub assume_role: Option<String>,
    /// `--region` (or `AWS_REGION`).
    pub region: Option<String>,
    /// The `--secret` declarations, in order.
    pub secrets: Vec<SecretSpec>,
}

impl Asked {
    /// The identity these flags settle on.
    pub fn choose(&self) -> Result<Chosen, NoIdentity> {
        let asked = match self.choice {
            _ if self.mock => Some(Identity::Mock),
            Choice::Auto | Choice::Own => None,
            Choice::Named(identity) => Some(identity),
        };
        let present = match self.choice {
            Choice::Own => Present {
                token_file: self.present.token_file,
                role_arn: self.present.role_arn,
                ..Present::default()
            },
            _ => self.present,
        };
        identity::choose(asked, &present)
    }

    /// The helper's own AWS identity with these flags, for the calls it makes itself (registry
    /// passwords, `aws-sm` and `aws-ssm` secrets): the chosen identity with its role's full
    /// permissions (`--assume-role` narrows only what builds get). `None` for the mock identity
    /// or none at all: they have no AWS credentials.
    pub fn own(&self) -> Option<Own> {
        let identity = self.choose().ok()?.identity;
        match identity.platform() {
            Some(platform) => Some(Own::Credentials(platform)),
            None if identity == Identity::Mock => None,
            None => Some(Own::WebIdentity(identity)),
        }
    }

    /// What these flags serve, or the first rule they break.
    pub fn serving(&self) -> Result<Serving, ServeError> {
        let chosen = match self.choose() {
            Err(NoIdentity::NoneFound) if !self.secrets.is_empty() => None,
            Err(e) => return Err(ServeError::NoIdentity(e)),
            Ok(chosen) => Some(chosen),
        };
        let builds = chosen
            .as_ref()
            .map(|c| self.builds(c.identity))
            .transpose()?;
        let own = self.own();
        let (local, remote) = self.declared();
        fetchable(own, &remote)?;
        Ok(Serving {
            chosen,
            builds,
            own,
            local,
            remote,
        })
    }

    /// How builds get `identity`, or the flag that does not fit it.
    fn builds(&self, identity: Identity) -> Result<Builds, ServeError> {
        let github = identity == Identity::GithubOidc;
        let Some(platform) = identity.platform() else {
            if self.assume_role.is_some() {
                return Err(ServeError::AssumeRoleOnWebIdentity(identity));
            }
            return Ok(match identity {
                _ if self.sts => Builds::Sts {
                    github,
                    serve_identity: self.serve_identity,
                    region: self.exchange(identity)?,
                },
                Identity::Mock => Builds::Mock,
                _ => Builds::Token { github },
            });
        };
        if self.sts {
            return Err(ServeError::StsOnCredentials(identity));
        }
        Ok(Builds::Credentials {
            platform,
            assume_role: self.narrowing()?,
        })
    }

    /// The region of the `--sts` exchange of `identity`'s token (a web identity's).
    pub fn exchange(&self, identity: Identity) -> Result<String, ServeError> {
        if identity == Identity::Mock {
            return Err(ServeError::StsOnMock);
        }
        self.region.clone().ok_or(ServeError::StsNeedsRegion)
    }

    /// The role `--assume-role` narrows a credential identity to, and the region of that call.
    pub fn narrowing(&self) -> Result<Option<AssumeRole>, ServeError> {
        let Some(role) = &self.assume_role else {
            return Ok(None);
        };
        let region = self
            .region
            .clone()
            .ok_or(ServeError::AssumeRoleNeedsRegion)?;
        Ok(Some(AssumeRole {
            role: role.clone(),
            region,
        }))
    }

    /// The `--secret` declarations, the last of an id winning: files and variables, then the
    /// AWS ones, each in id order.
    pub fn declared(&self) -> (Vec<SecretSpec>, Vec<(String, AwsSecret)>) {
        let last: BTreeMap<&str, &Origin> = self
            .secrets
            .iter()
            .map(|s| (s.id.as_str(), &s.origin))
            .collect();
        let (mut local, mut remote) = (Vec::new(), Vec::new());
        for (id, origin) in last {
            match origin {
                Origin::Aws(secret) => remote.push((id.to_string(), secret.clone())),
                origin => local.push(SecretSpec {
                    id: id.to_string(),
                    origin: origin.clone(),
                }),
            }
        }
        (local, remote)
    }
}

/// Refuses `aws-sm` and `aws-ssm` declarations (`remote`) when the helper has no AWS identity
/// of its own (`own`) to fetch them with.
pub fn fetchable(own: Option<Own>, remote: &[(String, AwsSecret)]) -> Result<(), ServeError> {
    match (own, remote.first()) {
        (None, Some((id, secret))) => Err(ServeError::AwsSecretWithoutAws {
            id: id.clone(),
            kind: secret.source_name(),
        }),
        _ => Ok(()),
    }
}

/// How builds get the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builds {
    /// The web identity token and role ARN as they are: IRSA's token file, or with `github`
    /// GitHub Actions' token.
    Token {
        /// GitHub Actions' token rather than IRSA's file.
        github: bool,
    },
    /// The web identity exchanged with STS for scoped credentials.
    Sts {
        /// GitHub Actions' token rather than IRSA's file.
        github: bool,
        /// Also the token and role ARN themselves (`--serve-identity`).
        serve_identity: bool,
        /// The region of STS's endpoint.
        region: String,
    },
    /// The mock identity's token and role ARN.
    Mock,
    /// A platform's credentials, narrowed with AssumeRole when `assume_role` says to.
    Credentials {
        /// Where they come from.
        platform: Platform,
        /// `--assume-role`.
        assume_role: Option<AssumeRole>,
    },
}

/// `--assume-role`: narrow a credential identity to this role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    /// The role's ARN.
    pub role: String,
    /// The region of STS's endpoint.
    pub region: String,
}

/// The identity of the helper's own AWS calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Own {
    /// A platform's credentials (shared with builds' when they get the same).
    Credentials(Platform),
    /// A web identity (IRSA's or GitHub's) exchanged with STS for the helper alone, whether
    /// or not builds get `--sts` credentials.
    WebIdentity(Identity),
}

/// What one set of identity flags serves.
#[derive(Debug, Clone)]
pub struct Serving {
    /// The identity chosen; `None` when only `--secret` declarations are served.
    pub chosen: Option<Chosen>,
    /// How builds get it.
    pub builds: Option<Builds>,
    /// The helper's own AWS identity.
    pub own: Option<Own>,
    /// The file and variable declarations, one per id.
    pub local: Vec<SecretSpec>,
    /// The `aws-sm` and `aws-ssm` declarations, one per id, fetched with [`Serving::own`].
    pub remote: Vec<(String, AwsSecret)>,
}

/// A flag that does not fit the identity, or an identity missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// No identity, or one asked for and incomplete.
    #[error("no identity: {0}. {hint}", hint = NO_IDENTITY_HINT)]
    NoIdentity(NoIdentity),
    /// `--assume-role` on a web identity token.
    #[error(
        "--assume-role narrows a credential identity (pod-identity, container, imds); the \
         {0} identity is a web identity token: narrow it with --sts and --session-policy or \
         --policy-arn, for the role in --role-arn"
    )]
    AssumeRoleOnWebIdentity(Identity),
    /// `--sts` on credentials.
    #[error(
        "--sts exchanges a web identity token, and the {0} identity is credentials already: \
         drop --sts (its credentials are served as aws-credentials, aws-access-key-id, ...)"
    )]
    StsOnCredentials(Identity),
    /// `--sts` with the mock identity.
    #[error(
        "--sts exchanges the real IRSA token and --mock has none STS would accept: drop --mock \
         and point --token-file and --role-arn at an identity"
    )]
    StsOnMock,
    /// `--sts` with no region.
    #[error("--sts needs a region for STS's regional endpoint: set AWS_REGION or pass --region")]
    StsNeedsRegion,
    /// `--assume-role` with no region.
    #[error(
        "--assume-role needs a region for STS's regional endpoint: set AWS_REGION or pass \
         --region"
    )]
    AssumeRoleNeedsRegion,
    /// An `aws-sm` or `aws-ssm` secret on a helper with no AWS credentials of its own.
    #[error(
        "--secret id={id},type={kind}: the helper fetches it with its own AWS credentials, and \
         it has none (the mock identity, or no identity): run it with a real identity (IRSA, \
         Pod Identity, --identity imds, ...; in a config file, identity = \"process\" in the \
         [[listener]]), or declare the secret with src=FILE or env=VAR where there is no AWS"
    )]
    AwsSecretWithoutAws {
        /// The secret's id.
        id: String,
        /// `aws-sm` or `aws-ssm`.
        kind: &'static str,
    },
}

/// Whether a config file's `[[listener]]` table settles its identity: `process` when it takes
/// the helper's (`identity = "process"` or a named one), `own_keys` the identity keys of its
/// own it sets (`token_file`, `role_arn`, `mock`), `secrets` when it declares any. The
/// environment's identity never reaches a listener that did not ask for it.
pub fn table_identity(
    process: bool,
    own_keys: &[&str],
    secrets: bool,
) -> Result<(), TableIdentity> {
    match (process, own_keys.is_empty()) {
        (true, false) => Err(TableIdentity::Two {
            keys: own_keys.join(" and "),
        }),
        (false, true) if !secrets => Err(TableIdentity::None),
        _ => Ok(()),
    }
}

/// A `[[listener]]` table whose identity would be a guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableIdentity {
    /// It names no identity and declares no secret.
    #[error(
        "this listener names no identity, and a listener never takes the helper's own \
         silently: write identity = \"process\" to serve the helper's (AWS_WEB_IDENTITY_TOKEN_FILE \
         and AWS_ROLE_ARN, or IRSA_SECRETS_MOCK), token_file and role_arn (or mock = true) to \
         serve one of its own, or only secret = [...] declarations to serve just those"
    )]
    None,
    /// It both opts into the helper's identity and names one of its own.
    #[error(
        "identity = \"process\" and {keys} each name an identity: keep identity = \"process\" \
         for the helper's own, or drop it to serve this listener's own"
    )]
    Two {
        /// The listener's own identity keys.
        keys: String,
    },
}

/// What one `proxy` listener asks for.
#[derive(Debug, Clone, Default)]
pub struct ListenerAsked {
    /// `--name`.
    pub name: String,
    /// `--listen`.
    pub listen: Option<String>,
    /// The identity flags.
    pub asked: Asked,
    /// `--ecr-alias`.
    pub ecr_aliases: Vec<String>,
    /// `--allow-id`.
    pub allow_ids: Vec<String>,
    /// `--allow-registry`.
    pub allow_registries: Vec<String>,
}

/// One listener, checked.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Its name in logs, audit records and metrics.
    pub name: String,
    /// The socket's path.
    pub socket: PathBuf,
    /// What it serves.
    pub serving: Serving,
    /// ECR's hosts and the aliases.
    pub hosts: Hosts,
    /// The only ids it serves, when limited.
    pub allowed_ids: Option<BTreeSet<String>>,
    /// The only registries it answers for, when limited: `allow_registry`'s hosts, else none on
    /// a listener with `allow_id`.
    pub allowed_registries: Option<BTreeSet<String>>,
}

/// Every listener of `proxy`, each valid, their names distinct.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The listeners, in the order given.
    pub listeners: Vec<Listener>,
}

impl Plan {
    /// Checks every listener; the first problem found is the error.
    pub fn new(listeners: Vec<ListenerAsked>) -> Result<Self, PlanError> {
        let mut names = BTreeSet::new();
        let mut checked = Vec::new();
        for l in listeners {
            if !names.insert(l.name.clone()) {
                return Err(PlanError::SameName(l.name));
            }
            let name = l.name.clone();
            checked
                .push(Listener::new(l).map_err(|problem| PlanError::Listener { name, problem })?);
        }
        Ok(Self { listeners: checked })
    }
}

impl Listener {
    fn new(l: ListenerAsked) -> Result<Self, ListenerError> {
        let listen = l.listen.as_deref().ok_or(ListenerError::NoListen)?;
        let serving = l.asked.serving()?;
        let hosts = Hosts::new(&l.ecr_aliases)?;
        let socket = socket::parse_unix_address(listen)?;
        let allowed_ids = (!l.allow_ids.is_empty()).then(|| l.allow_ids.iter().cloned().collect());
        let allowed_registries = if !l.allow_registries.is_empty() {
            Some(l.allow_registries.into_iter().collect())
        } else {
            allowed_ids.as_ref().map(|_| BTreeSet::new())
        };
        Ok(Self {
            name: l.name,
            socket,
            serving,
            hosts,
            allowed_ids,
            allowed_registries,
        })
    }
}

/// A listener that cannot be served, or two with one name.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Two listeners share a name.
    #[error("two listeners are named {0:?}; give each a distinct name")]
    SameName(String),
    /// One listener's problem.
    #[error("listener {name}: {problem}")]
    Listener {
        /// The listener's name.
        name: String,
        /// What is wrong with it.
        problem: ListenerError,
    },
}

/// What is wrong with one listener.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// No socket to listen on.
    #[error("--listen unix:///PATH is required")]
    NoListen,
    /// The socket address is not a path.
    #[error(transparent)]
    Address(#[from] SocketError),
    /// What it serves.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// An ECR alias.
    #[error(transparent)]
    Alias(#[from] AliasError),
}

#[cfg(test)]
mod tests;
