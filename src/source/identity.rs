//! Which of the runner's AWS identities the helper serves: the one asked for, or with `auto`
//! the first present of IRSA, a container credentials endpoint (EKS Pod Identity, ECS,
//! CodeBuild) and GitHub Actions OIDC. The EC2 instance role is never taken unasked: handing
//! the node's role to every build is what EKS hardening guides block.

use std::fmt;

use crate::source::platform::Platform;

/// An identity the helper can serve. The variants' first lines are `--identity`'s help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Identity {
    /// AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN.
    Irsa,
    /// The EKS Pod Identity agent (AWS_CONTAINER_CREDENTIALS_FULL_URI and
    /// AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE).
    PodIdentity,
    /// An ECS task role, CodeBuild's, or another container credentials endpoint.
    Container,
    /// The EC2 instance role, IMDSv2 only (AWS_EC2_METADATA_SERVICE_ENDPOINT overrides where).
    Imds,
    /// GitHub Actions OIDC (the job needs `permissions: id-token: write`) for AWS_ROLE_ARN.
    GithubOidc,
    /// The mock identity (as --mock).
    Mock,
}

/// Which identity `--identity` asks for: one by name, the first present, or (in the config
/// file) only what the listener's own keys name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    /// The first present (its help, below, says which).
    #[default]
    Auto,
    /// This identity, whether or not another is present.
    Named(Identity),
    /// Only what the listener's own keys name (its help, below, says when).
    Own,
}

impl clap::ValueEnum for Choice {
    fn value_variants<'a>() -> &'a [Self] {
        static ALL: std::sync::OnceLock<Vec<Choice>> = std::sync::OnceLock::new();
        ALL.get_or_init(|| {
            let named = Identity::value_variants()
                .iter()
                .copied()
                .map(Choice::Named);
            std::iter::once(Choice::Auto)
                .chain(named)
                .chain([Choice::Own])
                .collect()
        })
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        Some(match self {
            Choice::Auto => PossibleValue::new("auto").help(
                "The first present of IRSA, the container endpoint (Pod Identity, ECS, \
                 CodeBuild) and GitHub Actions OIDC; never the EC2 instance role",
            ),
            Choice::Named(identity) => return identity.to_possible_value(),
            Choice::Own => PossibleValue::new("own").hide(true).help(
                "Only what the listener's own keys name: how the config file marks a listener \
                 that did not opt into the helper's identity",
            ),
        })
    }
}

impl Identity {
    /// The name the flag and the logs use.
    pub fn name(self) -> &'static str {
        match self {
            Identity::Irsa => "irsa",
            Identity::PodIdentity => "pod-identity",
            Identity::Container => "container",
            Identity::Imds => "imds",
            Identity::GithubOidc => "github-oidc",
            Identity::Mock => "mock",
        }
    }

    /// The platform endpoint a credential identity's credentials come from; `None` for a web
    /// identity token (IRSA, GitHub OIDC) and the mock, which are tokens rather than
    /// credentials.
    pub fn platform(self) -> Option<Platform> {
        match self {
            Identity::PodIdentity => Some(Platform::PodIdentity),
            Identity::Container => Some(Platform::Container),
            Identity::Imds => Some(Platform::Imds),
            Identity::Irsa | Identity::GithubOidc | Identity::Mock => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which identity settings are present (from flags or their variables).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Present {
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` or `--token-file`.
    pub token_file: bool,
    /// `AWS_ROLE_ARN` or `--role-arn`.
    pub role_arn: bool,
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    pub full_uri: bool,
    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
    pub relative_uri: bool,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
    pub container_token_file: bool,
    /// `ACTIONS_ID_TOKEN_REQUEST_URL` and `ACTIONS_ID_TOKEN_REQUEST_TOKEN` both.
    pub github: bool,
}

impl Present {
    /// The container and GitHub variables as this process sees them; the web identity's two
    /// settings come from the flags, which the caller has parsed.
    pub fn from_env(token_file: bool, role_arn: bool) -> Self {
        let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        Self {
            token_file,
            role_arn,
            full_uri: set("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
            relative_uri: set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
            container_token_file: set("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
            github: set("ACTIONS_ID_TOKEN_REQUEST_URL") && set("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
        }
    }
}

/// The identity chosen and the settings that chose it, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The identity.
    pub identity: Identity,
    /// Why: which settings were asked for or found.
    pub because: &'static str,
}

/// No identity could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoIdentity {
    /// `auto` found none of the identities it may take.
    #[error(
        "none of AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN (IRSA), \
         AWS_CONTAINER_CREDENTIALS_FULL_URI or _RELATIVE_URI (EKS Pod Identity, ECS, CodeBuild), \
         or ACTIONS_ID_TOKEN_REQUEST_URL and _TOKEN with AWS_ROLE_ARN (GitHub Actions) is set. \
         The EC2 instance role is only served when asked for: --identity imds"
    )]
    NoneFound,
    /// The identity asked for lacks a setting it needs.
    #[error("the {identity} identity needs {needs}")]
    Incomplete {
        /// The identity asked for.
        identity: Identity,
        /// What is missing.
        needs: &'static str,
    },
}

/// The identity to serve: `asked`, when its settings are present, or with `None` (`auto`) the
/// first present of IRSA, the container endpoint and GitHub Actions OIDC.
pub fn choose(asked: Option<Identity>, present: &Present) -> Result<Chosen, NoIdentity> {
    let web_identity = present.token_file && present.role_arn;
    let pod_identity = present.full_uri && present.container_token_file;
    let container = present.full_uri || present.relative_uri;
    let github = present.github && present.role_arn;
    let chosen = |identity, because| Ok(Chosen { identity, because });
    let incomplete = |identity, needs| Err(NoIdentity::Incomplete { identity, needs });
    match asked {
        None if web_identity => chosen(
            Identity::Irsa,
            "AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN are set",
        ),
        None if pod_identity => chosen(
            Identity::PodIdentity,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE are set",
        ),
        None if container => chosen(
            Identity::Container,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI or _RELATIVE_URI is set",
        ),
        None if github => chosen(
            Identity::GithubOidc,
            "ACTIONS_ID_TOKEN_REQUEST_URL, ACTIONS_ID_TOKEN_REQUEST_TOKEN and AWS_ROLE_ARN are set",
        ),
        None if present.token_file => incomplete(Identity::Irsa, "AWS_ROLE_ARN (or --role-arn)"),
        None if present.role_arn => incomplete(
            Identity::Irsa,
            "AWS_WEB_IDENTITY_TOKEN_FILE (or --token-file)",
        ),
        None => Err(NoIdentity::NoneFound),
        Some(Identity::Irsa) if !present.token_file => incomplete(
            Identity::Irsa,
            "AWS_WEB_IDENTITY_TOKEN_FILE (or --token-file)",
        ),
        Some(identity @ (Identity::Irsa | Identity::GithubOidc)) if !present.role_arn => {
            incomplete(identity, "AWS_ROLE_ARN (or --role-arn)")
        }
        Some(Identity::PodIdentity) if !pod_identity => incomplete(
            Identity::PodIdentity,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        ),
        Some(Identity::Container) if !container => incomplete(
            Identity::Container,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI or AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        ),
        Some(Identity::GithubOidc) if !present.github => incomplete(
            Identity::GithubOidc,
            "ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN (the job needs \
             `permissions: id-token: write`)",
        ),
        Some(identity) => chosen(identity, "--identity asks for it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// The logs' names are the flag's: one spelling of each identity.
    #[test]
    fn names_are_the_flags_values() {
        for identity in Identity::value_variants() {
            let value = identity.to_possible_value().unwrap();
            assert_eq!(value.get_name(), identity.name());
            assert_eq!(
                Choice::from_str(identity.name(), false),
                Ok(Choice::Named(*identity))
            );
        }
        assert_eq!(Choice::from_str("auto", false), Ok(Choice::Auto));
        assert_eq!(Choice::from_str("own", false), Ok(Choice::Own));
    }

    fn auto(present: Present) -> Result<Identity, NoIdentity> {
        choose(None, &present).map(|c| c.identity)
    }

    #[test]
    fn auto_takes_irsa_then_the_container_endpoint_then_github() {
        let all = Present {
            token_file: true,
            role_arn: true,
            full_uri: true,
            relative_uri: true,
            container_token_file: true,
            github: true,
        };
        assert_eq!(auto(all), Ok(Identity::Irsa));
        let no_irsa = Present {
            token_file: false,
            ..all
        };
        assert_eq!(auto(no_irsa), Ok(Identity::PodIdentity));
        let ecs = Present {
            container_token_file: false,
            full_uri: false,
            ..no_irsa
        };
        assert_eq!(auto(ecs), Ok(Identity::Container));
        let github = Present {
            relative_uri: false,
            ..ecs
        };
        assert_eq!(auto(github), Ok(Identity::GithubOidc));
        // GitHub's token is of no use without a role to assume.
        let no_role = Present {
            role_arn: false,
            ..github
        };
        assert_eq!(auto(no_role), Err(NoIdentity::NoneFound));
        // Half an IRSA identity says which half is missing.
        let half = Present {
            token_file: true,
            ..Present::default()
        };
        let err = choose(None, &half).unwrap_err().to_string();
        assert_eq!(err, "the irsa identity needs AWS_ROLE_ARN (or --role-arn)");
    }

    #[test]
    fn auto_never_takes_the_instance_role() {
        let err = auto(Present::default()).unwrap_err();
        assert!(err.to_string().contains("--identity imds"), "{err}");
        assert_eq!(
            choose(Some(Identity::Imds), &Present::default()).map(|c| c.identity),
            Ok(Identity::Imds)
        );
    }

    #[test]
    fn an_identity_asked_for_names_what_it_lacks() {
        let only_uri = Present {
            full_uri: true,
            ..Present::default()
        };
        let err = choose(Some(Identity::PodIdentity), &only_uri).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the pod-identity identity needs AWS_CONTAINER_CREDENTIALS_FULL_URI and \
             AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
        );
        assert_eq!(
            choose(Some(Identity::Container), &only_uri).map(|c| c.identity),
            Ok(Identity::Container)
        );
        let err = choose(Some(Identity::GithubOidc), &only_uri).unwrap_err();
        assert!(err.to_string().contains("AWS_ROLE_ARN"), "{err}");
        let role = Present {
            role_arn: true,
            ..only_uri
        };
        let err = choose(Some(Identity::GithubOidc), &role).unwrap_err();
        assert!(err.to_string().contains("id-token: write"), "{err}");
        let err = choose(Some(Identity::Irsa), &role).unwrap_err();
        assert!(
            err.to_string().contains("AWS_WEB_IDENTITY_TOKEN_FILE"),
            "{err}"
        );
    }
}
