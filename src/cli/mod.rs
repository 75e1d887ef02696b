//! The command line: flag definitions and the call into the library. What the flags mean is
//! decided by [`crate::plan`]; [`assemble`] builds the parts a plan names.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::cli::logging::LogFormat;
use crate::source::identity::Choice;
use crate::source::static_secret::SecretSpec;

mod assemble;
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
    /// DOCKER_HOST and BUILDKIT_HOST pointing at it (and DOCKER_BUILDKIT=1 unless set), passes
    /// signals on, and exits with CMD's code once the helper has stopped.
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

impl IdentityArgs {
    /// True when an identity (IRSA or mock) is configured at all.
    pub fn has_identity(&self) -> bool {
        self.token.mock || self.token.token_file.is_some() || self.role_arn.is_some()
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
    #[command(flatten)]
    pub choice: ChoiceArgs,
}

/// `--identity`: which of the runner's identities (`serve`, each `proxy` listener, `doctor`).
#[derive(Debug, Clone, Args)]
pub struct ChoiceArgs {
    /// Which of the runner's identities to serve.
    #[arg(long = "identity", value_enum, default_value_t = Choice::Auto, env = "IRSA_SECRETS_IDENTITY", value_name = "IDENTITY")]
    pub choice: Choice,
}
