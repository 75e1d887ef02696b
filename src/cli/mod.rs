//! The command line: flag definitions and the wiring from flags to the library. No logic lives
//! here beyond turning arguments into configured parts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::cli::logging::LogFormat;
use crate::secret::SecretValue;
use crate::source::aws::{Aws, Service};
use crate::source::aws_secret::AwsSecrets;
use crate::source::credentials::Credentials;
use crate::source::github::GitHubOidc;
use crate::source::identity::{self, Chosen, Identity, NoIdentity, Present};
use crate::source::irsa::Irsa;
use crate::source::jwt::Expectations;
use crate::source::mock::Mock;
use crate::source::platform::{Platform, PlatformRole};
use crate::source::static_secret::{Origin, SecretSpec, Static};
use crate::source::sts::exchange::Exchange;
use crate::source::sts::scope::Scope;
use crate::source::sts::{RoleChain, WebIdentity};
use crate::source::{IdentityIds, Source};

pub mod config;
mod docs;
mod health;
mod inspect;
pub mod logging;
mod mock;
mod probe;
mod proxy;
mod run;
mod scan;
mod serve;
mod signals;
mod sts;

/// Serve the runner's AWS identity to BuildKit builds as session secrets.
///
/// The identity is whichever the runner has (--identity picks one): IRSA (a projected
/// service-account token and its role), EKS Pod Identity, an ECS or CodeBuild container role,
/// GitHub Actions OIDC, the EC2 instance role (--identity imds: never taken unless asked for),
/// or a mock for laptops and tests (--mock). Build steps read it with
/// `RUN --mount=type=secret,id=aws-web-identity-token` (and `aws-role-arn`) or, for credential
/// identities, `id=aws-credentials`; no workflow passes --secret flags or static keys.
///
/// Set-up for each platform (ARC, GitLab Runner on Kubernetes, EC2, GitHub-hosted runners,
/// laptops): the project's README.md, Platforms, and its docs/ pages.
#[derive(Debug, Parser)]
#[command(name = "irsa-secrets", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stand in front of the Docker daemon: builds through this socket get the secrets.
    #[command(after_long_help = signals::HELP)]
    Proxy(Box<proxy::ProxyArgs>),
    /// Serve the Secrets service alone on a unix socket (for tests, embedding and debugging).
    #[command(after_long_help = signals::HELP)]
    Serve(serve::ServeArgs),
    /// Ask a running helper for secrets and print their size and fingerprint, never the value.
    Probe(probe::ProbeArgs),
    /// Print the token's claims and remaining lifetime (never the token itself).
    Token(inspect::TokenArgs),
    /// Check that the identity is set up: variables, token file, token validity, role ARN.
    Doctor(inspect::DoctorArgs),
    /// The mock identity for laptops: `mock write DIR` writes a token file and an env file.
    #[command(subcommand)]
    Mock(mock::MockCommand),
    /// Search an image for the secrets the helper serves and for AWS credentials; exit 0 when
    /// clean, 1 on findings, 2 on error.
    Scan(scan::ScanArgs),
    /// Run CMD with a helper of its own: `run [FLAGS] -- CMD...` starts the helper on a private
    /// socket before the current DOCKER_HOST (or the default socket), runs CMD with
    /// DOCKER_HOST and BUILDKIT_HOST pointing at it, passes signals on, and exits with CMD's
    /// code once the helper has stopped.
    Run(run::RunArgs),
    /// Exit 0 when the helper's socket accepts connections: the image's HEALTHCHECK and a
    /// Kubernetes exec probe (the image has no shell).
    Health(health::HealthArgs),
    /// Print a shell completion script, generated from these definitions.
    Completions(docs::CompletionsArgs),
    /// Print the man page (roff), generated from these definitions.
    Man(docs::ManArgs),
}

impl Cli {
    /// Parses the process's arguments (exiting with clap's message when they do not parse) and
    /// keeps the matches they came from, which `run` needs.
    pub fn from_env() -> (Self, clap::ArgMatches) {
        let matches = Self::command().get_matches();
        match Self::from_arg_matches(&matches) {
            Ok(cli) => (cli, matches),
            Err(e) => e.format(&mut Self::command()).exit(),
        }
    }

    /// Runs the chosen command; the exit code is the command's verdict. `matches` are those
    /// the command was parsed from ([`Cli::from_env`]).
    pub async fn run(self, matches: &clap::ArgMatches) -> anyhow::Result<std::process::ExitCode> {
        match self.command {
            Command::Proxy(args) => {
                let empty = clap::ArgMatches::default();
                let own = matches.subcommand_matches("proxy").unwrap_or(&empty);
                proxy::run(*args, own).await
            }
            Command::Serve(args) => serve::run(args).await,
            Command::Probe(args) => probe::run(args).await,
            Command::Token(args) => inspect::token(args),
            Command::Doctor(args) => inspect::doctor(args).await,
            Command::Mock(cmd) => mock::run(cmd),
            Command::Scan(args) => scan::run(args).await,
            Command::Run(args) => run::run(args).await,
            Command::Health(args) => health::run(args).await,
            Command::Completions(args) => docs::completions(args),
            Command::Man(args) => docs::man(args),
        }
    }

    /// How the process logs and how many threads it runs: set by the commands that serve
    /// connections, the defaults for the others (which print their results and exit).
    pub fn runtime(&self) -> RuntimeArgs {
        match &self.command {
            Command::Proxy(args) => args.runtime.clone(),
            Command::Serve(args) => args.runtime.clone(),
            _ => RuntimeArgs::default(),
        }
    }
}

/// The default of `--worker-threads`, also used by commands that do not have the flag.
const DEFAULT_WORKER_THREADS: u16 = 1;

/// Process settings of the commands that serve connections (`proxy`, `serve`).
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::default(), env = "IRSA_SECRETS_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Threads serving connections. One suits a sidecar and spends the least CPU per byte
    /// forwarded; raise it for many concurrent builds on one helper.
    #[arg(long, default_value_t = DEFAULT_WORKER_THREADS, value_parser = clap::value_parser!(u16).range(1..=256), env = "IRSA_SECRETS_WORKER_THREADS")]
    pub worker_threads: u16,
}

impl Default for RuntimeArgs {
    fn default() -> Self {
        Self {
            log_format: LogFormat::default(),
            worker_threads: DEFAULT_WORKER_THREADS,
        }
    }
}

/// The web-identity token: where it comes from and what it must carry. `token` needs no more.
#[derive(Debug, Clone, Args)]
pub struct WebTokenArgs {
    /// Serve a mock identity (a realistic unsigned token and a fake role ARN) instead of IRSA:
    /// for laptops and tests with no AWS.
    #[arg(long, env = "IRSA_SECRETS_MOCK")]
    pub mock: bool,

    /// The projected service-account token, re-read on every request (kubelet rotates it).
    #[arg(long, env = "AWS_WEB_IDENTITY_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// The audience the token must carry (the projected volume's `audience`).
    #[arg(
        long,
        default_value = "sts.amazonaws.com",
        env = "IRSA_SECRETS_AUDIENCE"
    )]
    pub audience: String,

    /// A token with less lifetime left is still served, with a warning (e.g. 5m, 1h).
    #[arg(long, default_value = "5m", value_parser = crate::bound::duration, env = "IRSA_SECRETS_EXPIRY_MARGIN")]
    pub expiry_margin: Duration,
}

impl WebTokenArgs {
    fn expectations(&self) -> Expectations {
        Expectations {
            audience: self.audience.clone(),
            expiry_margin: self.expiry_margin,
        }
    }

    /// The mock identity these flags describe, serving `ids` (and `region` when set).
    fn mock_source(&self, ids: IdentityIds, region: Option<String>) -> Mock {
        Mock::new(ids, self.audience.clone(), self.expiry_margin, region)
    }
}

/// The AWS identity: the web-identity token and the role it may assume.
#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// The web-identity token.
    #[command(flatten)]
    pub token: WebTokenArgs,

    /// The IAM role the token may assume: arn:aws:iam::ACCOUNT:role/NAME.
    #[arg(long, env = "AWS_ROLE_ARN", value_name = "ARN")]
    pub role_arn: Option<String>,
}

/// What to do on a machine with no identity, for every message that reports one missing.
pub const NO_IDENTITY_HINT: &str = "On EKS, annotate the runner's service account with \
     eks.amazonaws.com/role-arn (IRSA) or give it a Pod Identity association; on ECS or \
     CodeBuild, give the task or project a role; in GitHub Actions, grant the job \
     `permissions: id-token: write`, set AWS_ROLE_ARN and pass --identity github-oidc; on EC2, \
     pass --identity imds; on a laptop, pass --mock, or run `irsa-secrets mock write DIR` and \
     `set -a; . DIR/env; set +a`. Each platform's set-up: docs/ in the project (README.md, \
     Platforms)";

/// The most expiry margin a GitHub Actions token gets: they live minutes, not IRSA's hours.
const GITHUB_MARGIN: Duration = Duration::from_secs(60);

/// Which identity `--identity` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IdentityChoice {
    /// The first present of IRSA, the container endpoint (Pod Identity, ECS, CodeBuild) and
    /// GitHub Actions OIDC; never the EC2 instance role.
    Auto,
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
    /// Only what the listener's own keys name: how the config file marks a listener that did
    /// not opt into the helper's identity.
    #[value(hide = true)]
    Own,
}

impl IdentityArgs {
    /// The identity `choice` settles on with these flags and, unless `choice` is
    /// [`IdentityChoice::Own`], the environment.
    fn choose(&self, choice: IdentityChoice) -> Result<Chosen, NoIdentity> {
        let (token_file, role_arn) = (self.token.token_file.is_some(), self.role_arn.is_some());
        let asked = match choice {
            _ if self.token.mock => Some(Identity::Mock),
            IdentityChoice::Auto | IdentityChoice::Own => None,
            IdentityChoice::Irsa => Some(Identity::Irsa),
            IdentityChoice::PodIdentity => Some(Identity::PodIdentity),
            IdentityChoice::Container => Some(Identity::Container),
            IdentityChoice::Imds => Some(Identity::Imds),
            IdentityChoice::GithubOidc => Some(Identity::GithubOidc),
            IdentityChoice::Mock => Some(Identity::Mock),
        };
        let present = match choice {
            IdentityChoice::Own => Present {
                token_file,
                role_arn,
                ..Present::default()
            },
            _ => Present::from_env(token_file, role_arn),
        };
        identity::choose(asked, &present)
    }

    /// True when an identity (IRSA or mock) is configured at all.
    pub fn has_identity(&self) -> bool {
        self.token.mock || self.token.token_file.is_some() || self.role_arn.is_some()
    }

    /// The real IRSA identity, or an error that says which variable or flag is missing.
    fn irsa(&self, ids: IdentityIds, region: Option<String>) -> anyhow::Result<Irsa> {
        match (&self.token.token_file, &self.role_arn) {
            (Some(file), Some(arn)) => Irsa::new(
                ids,
                file.clone(),
                arn.clone(),
                region,
                self.token.expectations(),
            )
            .map_err(anyhow::Error::msg),
            (None, _) => anyhow::bail!(
                "no identity: AWS_WEB_IDENTITY_TOKEN_FILE (or --token-file) is not set. \
                 {NO_IDENTITY_HINT}"
            ),
            (_, None) => anyhow::bail!(
                "no identity: AWS_ROLE_ARN (or --role-arn) is not set. {NO_IDENTITY_HINT}"
            ),
        }
    }

    /// The web identity: IRSA's token file, or with `github` GitHub Actions' token endpoint
    /// (`ACTIONS_ID_TOKEN_REQUEST_URL`, `ACTIONS_ID_TOKEN_REQUEST_TOKEN`).
    fn web_identity(
        &self,
        github: bool,
        ids: IdentityIds,
        region: Option<String>,
    ) -> anyhow::Result<Irsa> {
        if !github {
            return self.irsa(ids, region);
        }
        let var = |name| {
            std::env::var(name)
                .map_err(|_| anyhow::anyhow!("--identity github-oidc needs {name} (the job needs `permissions: id-token: write`)"))
        };
        let url = var("ACTIONS_ID_TOKEN_REQUEST_URL")?;
        let token = SecretValue::from(var("ACTIONS_ID_TOKEN_REQUEST_TOKEN")?);
        let mut want = self.token.expectations();
        // GitHub's tokens live minutes: a margin of the IRSA default would fetch one per use.
        want.expiry_margin = want.expiry_margin.min(GITHUB_MARGIN);
        let oidc = GitHubOidc::new(&url, token, want).map_err(anyhow::Error::msg)?;
        let role_arn = self.role_arn.clone().unwrap_or_default();
        Irsa::github(ids, oidc, role_arn, region).map_err(anyhow::Error::msg)
    }

    /// The raw identity (IRSA token and role ARN, or the mock), as a source.
    pub fn source(
        &self,
        ids: IdentityIds,
        region: Option<String>,
    ) -> anyhow::Result<Arc<dyn Source>> {
        Ok(if self.token.mock {
            Arc::new(self.token.mock_source(ids, region))
        } else {
            Arc::new(self.irsa(ids, region)?)
        })
    }
}

/// The AWS region, served as a secret and used for STS's regional endpoint.
#[derive(Debug, Clone, Args)]
pub struct RegionArgs {
    /// AWS region; also served as the `aws-region` secret when set.
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
}

/// The secret ids under which the identity is served.
#[derive(Debug, Clone, Args)]
pub struct IdsArgs {
    /// Secret id under which the token is served.
    #[arg(long, default_value = crate::source::TOKEN_ID, value_name = "ID")]
    pub token_id: String,

    /// Secret id under which the role ARN is served.
    #[arg(long, default_value = crate::source::ROLE_ARN_ID, value_name = "ID")]
    pub role_arn_id: String,

    /// Secret id under which the region is served.
    #[arg(long, default_value = crate::source::REGION_ID, value_name = "ID")]
    pub region_id: String,
}

impl IdsArgs {
    fn ids(&self) -> IdentityIds {
        IdentityIds {
            token: self.token_id.clone(),
            role_arn: self.role_arn_id.clone(),
            region: self.region_id.clone(),
        }
    }
}

/// Secrets beyond the identity, declared like buildx's `--secret`.
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// Also serve another secret, with buildx's syntax: id=ID,src=FILE or id=ID,env=VAR (a
    /// field holding a comma is quoted whole: '"src=/a,b"'); or from AWS, with the helper's own
    /// credentials: id=ID,type=aws-sm,name=NAME_OR_ARN[,key=JSON_KEY][,version-stage=STAGE]
    /// [,ttl=5m] or id=ID,type=aws-ssm,name=/PATH[,ttl=5m]. Repeatable; overrides the
    /// identity ids it names.
    #[arg(
        long = "secret",
        value_name = "id=ID,src=FILE|env=VAR|type=aws-sm,name=NAME"
    )]
    pub secrets: Vec<SecretSpec>,
}

impl SecretArgs {
    /// The `--secret` declarations as sources (files and variables, then Secrets Manager, then
    /// Parameter Store), the last declaration of an id winning. The AWS ones call with `aws`,
    /// the helper's own access: without it they are refused with what to do.
    pub fn sources(&self, aws: Option<&Aws>) -> anyhow::Result<Vec<Arc<dyn Source>>> {
        let mut last = std::collections::BTreeMap::new();
        for spec in &self.secrets {
            last.insert(spec.id.clone(), spec.origin.clone());
        }
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for (id, origin) in last {
            match origin {
                Origin::Aws(secret) => remote.push((id, secret)),
                origin => local.push(SecretSpec { id, origin }),
            }
        }
        let mut sources: Vec<Arc<dyn Source>> = Vec::new();
        if !local.is_empty() {
            sources.push(Arc::new(Static::new(local).map_err(anyhow::Error::msg)?));
        }
        if remote.is_empty() {
            return Ok(sources);
        }
        let Some(aws) = aws else {
            let (id, secret) = &remote[0];
            anyhow::bail!(
                "--secret id={id},type={}: the helper fetches it with its own AWS credentials, \
                 and it has none (the mock identity, or no identity): run it with a real \
                 identity (IRSA, Pod Identity, --identity imds, ...; in a config file, \
                 identity = \"process\" in the [[listener]]), or declare the secret with \
                 src=FILE or env=VAR where there is no AWS",
                secret.source_name()
            );
        };
        for service in [Service::SecretsManager, Service::Ssm] {
            if remote.iter().any(|(_, s)| s.service() == service) {
                sources.push(Arc::new(AwsSecrets::new(service, remote.clone(), aws)));
            }
        }
        Ok(sources)
    }
}

/// Everything `serve` and each `proxy` listener serve: the identity, its ids, extra secrets,
/// and the STS exchange.
#[derive(Debug, Clone, Args)]
pub struct ServedArgs {
    /// The token and the role.
    #[command(flatten)]
    pub identity: IdentityArgs,

    /// The region.
    #[command(flatten)]
    pub region: RegionArgs,

    /// The ids the identity is served under.
    #[command(flatten)]
    pub ids: IdsArgs,

    /// The `--secret` declarations.
    #[command(flatten)]
    pub secrets: SecretArgs,

    /// Scoped STS credentials instead of the raw identity.
    #[command(flatten)]
    pub sts: sts::StsArgs,

    /// Which of the runner's identities to serve.
    #[arg(long = "identity", value_enum, default_value_t = IdentityChoice::Auto, env = "IRSA_SECRETS_IDENTITY", value_name = "IDENTITY")]
    pub choice: IdentityChoice,
}

impl ServedArgs {
    /// All sources, identity first so explicit `--secret` declarations win shared ids. With
    /// `--secret` declarations and no identity found, serves just those. `aws` is the helper's
    /// own access ([`ServedArgs::own_aws`]), for the `aws-sm` and `aws-ssm` declarations.
    pub fn sources(&self, aws: Option<&Aws>) -> anyhow::Result<Vec<Arc<dyn Source>>> {
        let mut sources: Vec<Arc<dyn Source>> = Vec::new();
        match self.identity.choose(self.choice) {
            Err(NoIdentity::NoneFound) if !self.secrets.secrets.is_empty() => {
                tracing::warn!("no AWS identity configured: serving only the --secret declarations")
            }
            Err(e) => anyhow::bail!("no identity: {e}. {NO_IDENTITY_HINT}"),
            Ok(chosen) => {
                tracing::info!(
                    identity = %chosen.identity,
                    because = chosen.because,
                    "serving the {} identity",
                    chosen.identity
                );
                sources.extend(self.identity_sources(chosen.identity, aws)?);
            }
        }
        sources.extend(self.secrets.sources(aws)?);
        Ok(sources)
    }

    /// The sources that serve `identity`; a credential identity shares its cache with the
    /// helper's own access `aws`, so the agent or IMDS is asked once for both.
    fn identity_sources(
        &self,
        identity: Identity,
        aws: Option<&Aws>,
    ) -> anyhow::Result<Vec<Arc<dyn Source>>> {
        let (ids, region) = (self.ids.ids(), self.region.region.clone());
        let github = identity == Identity::GithubOidc;
        if self.sts.assume_role.is_some() && identity.platform().is_none() {
            anyhow::bail!(
                "--assume-role narrows a credential identity (pod-identity, container, imds); \
                 the {identity} identity is a web identity token: narrow it with --sts and \
                 --session-policy or --policy-arn, for the role in --role-arn"
            );
        }
        let platform = match identity.platform() {
            Some(platform) => platform,
            None if self.sts.sts => {
                let mut sources: Vec<Arc<dyn Source>> = vec![Arc::new(self.sts.source(
                    &self.identity,
                    github,
                    &ids,
                    region.clone(),
                )?)];
                if self.sts.serve_identity {
                    sources.push(Arc::new(self.identity.web_identity(github, ids, region)?));
                }
                return Ok(sources);
            }
            None if github => {
                return Ok(vec![Arc::new(
                    self.identity.web_identity(true, ids, region)?,
                )]);
            }
            None => return Ok(vec![self.identity.source(ids, region)?]),
        };
        if self.sts.sts {
            anyhow::bail!(
                "--sts exchanges a web identity token, and the {identity} identity is credentials \
                 already: drop --sts (its credentials are served as aws-credentials, \
                 aws-access-key-id, ...)"
            );
        }
        let served_region = region.map(|r| (ids.region.clone(), r));
        Ok(vec![Arc::new(credential_source(
            platform,
            &self.sts,
            self.identity.token.expiry_margin,
            served_region,
            aws.map(Aws::credentials),
        )?)])
    }
}

impl ServedArgs {
    /// The helper's own AWS access, for the calls it makes itself (registry passwords, `aws-sm`
    /// and `aws-ssm` secrets): the chosen identity's credentials with its role's full
    /// permissions (a web identity exchanged through STS for the helper alone, whether or not
    /// builds get `--sts` credentials; `--assume-role` narrows only what builds get). `None`
    /// for the mock identity or no identity at all: it has no AWS credentials.
    pub fn own_aws(&self) -> anyhow::Result<Option<Aws>> {
        self.identity
            .own_aws(self.choice, self.region.region.as_deref(), &self.sts)
    }
}

impl IdentityArgs {
    /// The helper's own AWS access with the identity `choice` settles on (see
    /// [`ServedArgs::own_aws`]), in `region` (else [`DEFAULT_REGION`]), exchanging a web
    /// identity as `sts` says (its endpoint, duration and session name).
    fn own_aws(
        &self,
        choice: IdentityChoice,
        region: Option<&str>,
        sts: &sts::StsArgs,
    ) -> anyhow::Result<Option<Aws>> {
        let Ok(chosen) = self.choose(choice) else {
            return Ok(None);
        };
        let identity = chosen.identity;
        let margin = self.token.expiry_margin;
        let region = region.unwrap_or(DEFAULT_REGION);
        let credentials = match identity.platform() {
            Some(platform) => Credentials::new(PlatformRole::new(platform), margin, None),
            None if identity == Identity::Mock => return Ok(None),
            None => {
                let github = identity == Identity::GithubOidc;
                let web = self.web_identity(github, IdentityIds::default(), None)?;
                let scope = Scope {
                    role_arn: self.role_arn.clone().unwrap_or_default(),
                    policy: None,
                    policy_arns: Vec::new(),
                    duration: sts.duration,
                    session_name: sts.role_session_name.clone(),
                };
                let exchange = Exchange::new(region, sts.sts_endpoint.as_deref());
                Credentials::new(WebIdentity::new(web, scope, exchange), margin, None)
            }
        };
        Ok(Some(Aws::new(credentials, region, identity.name())))
    }
}

/// The region of the helper's own calls when neither `--region` nor `AWS_REGION` names one:
/// where STS's global endpoint and ECR Public's API live.
const DEFAULT_REGION: &str = "us-east-1";

/// The credentials of `platform`, narrowed by `--assume-role` when `sts` names a role; the
/// region, when served, is `(id, value)`. `own`, the helper's own credentials of that platform
/// when it has them, are reused rather than cached a second time.
fn credential_source(
    platform: Platform,
    sts: &sts::StsArgs,
    margin: Duration,
    region: Option<(String, String)>,
    own: Option<&Credentials>,
) -> anyhow::Result<Credentials> {
    let role = PlatformRole::new(platform);
    tracing::info!(
        identity = platform.name(),
        endpoint = role.endpoint(),
        "credentials come from {}",
        role.endpoint()
    );
    let platform_credentials = move |region| match own {
        Some(own) => own.with_region(region),
        None => Credentials::new(role, margin, region),
    };
    let Some(target) = &sts.assume_role else {
        return Ok(platform_credentials(region));
    };
    let Some((_, sts_region)) = &region else {
        anyhow::bail!(
            "--assume-role needs a region for STS's regional endpoint: set AWS_REGION or pass \
             --region"
        );
    };
    let chain = RoleChain::new(
        platform_credentials(None),
        sts.scope(target)?,
        sts_region,
        sts.sts_endpoint.as_deref(),
        sts.external_id.clone(),
    );
    tracing::info!(role = %target, "narrowing the {} identity with AssumeRole", platform.name());
    Ok(Credentials::new(chain, margin, region))
}

/// What `scan` looks for: the values the helper would serve with the same flags. The STS
/// flags are left out (fresh credentials cannot be in an image, and the generic detectors find
/// STS keys of any origin), and so is the region (no credential, and in every AWS SDK); the
/// expiry margin and the region's id, which change nothing here, are hidden.
#[derive(Debug, Clone, Args)]
#[command(
    mut_arg("mock", |a| a
        .help("Look for the mock identity's values instead of IRSA's")
        .long_help(None::<&str>)),
    mut_arg("token_file", |a| a
        .help("Look for the token in this file (the projected service-account token)")
        .long_help(None::<&str>)),
    mut_arg("role_arn", |a| a.help("Look for this IAM role ARN")),
    mut_arg("audience", |a| a.help("The audience the token in --token-file must carry")),
    mut_arg("expiry_margin", |a| a.hide(true)),
    mut_arg("token_id", |a| a.help("The id a token finding is reported under")),
    mut_arg("role_arn_id", |a| a.help("The id a role ARN finding is reported under")),
    mut_arg("region_id", |a| a.hide(true)),
    mut_arg("secrets", |a| a
        .help("Also look for this secret, declared as for `serve`: id=ID,src=FILE, id=ID,env=VAR or id=ID,type=aws-sm|aws-ssm,name=NAME (repeatable)")
        .long_help(None::<&str>)),
    mut_arg("region", |a| a.help("The region of aws-sm and aws-ssm secrets not named by ARN")),
)]
pub struct SearchArgs {
    /// The token and the role.
    #[command(flatten)]
    pub identity: IdentityArgs,

    /// The ids the identity is served under.
    #[command(flatten)]
    pub ids: IdsArgs,

    /// The `--secret` declarations.
    #[command(flatten)]
    pub secrets: SecretArgs,

    /// The region of the AWS declarations.
    #[command(flatten)]
    pub region: RegionArgs,
}

impl SearchArgs {
    /// True when an identity (IRSA or mock) is configured at all.
    pub fn has_identity(&self) -> bool {
        self.identity.has_identity()
    }

    /// The raw identity, as a source (without the region, which is no credential).
    pub fn identity_source(&self) -> anyhow::Result<Arc<dyn Source>> {
        self.identity.source(self.ids.ids(), None)
    }

    /// The `--secret` declarations of files and variables, as sources.
    pub fn local_sources(&self) -> anyhow::Result<Vec<Arc<dyn Source>>> {
        self.declared(false).sources(None)
    }

    /// The `aws-sm` and `aws-ssm` declarations, as sources fetching with the helper's own
    /// access as `serve` would have it with these flags (the STS settings from their variables
    /// or defaults, the region from `--region`).
    pub fn aws_sources(&self) -> anyhow::Result<Vec<Arc<dyn Source>>> {
        let aws_only = self.declared(true);
        if aws_only.secrets.is_empty() {
            return Ok(Vec::new());
        }
        #[derive(Parser)]
        #[command(no_binary_name = true)]
        struct Defaults {
            #[command(flatten)]
            sts: sts::StsArgs,
        }
        let sts = Defaults::try_parse_from(std::iter::empty::<String>())?.sts;
        let aws =
            self.identity
                .own_aws(IdentityChoice::Auto, self.region.region.as_deref(), &sts)?;
        aws_only.sources(aws.as_ref())
    }

    /// The declarations of AWS values (`aws`) or of the others.
    fn declared(&self, aws: bool) -> SecretArgs {
        let secrets = self
            .secrets
            .secrets
            .iter()
            .filter(|s| matches!(s.origin, Origin::Aws(_)) == aws)
            .cloned()
            .collect();
        SecretArgs { secrets }
    }
}
