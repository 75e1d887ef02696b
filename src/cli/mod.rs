//! The command line: flag definitions and the wiring from flags to the library. No logic lives
//! here beyond turning arguments into configured parts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::jwt::Expectations;
use crate::logging::LogFormat;
use crate::sources::irsa::Irsa;
use crate::sources::mock::Mock;
use crate::sources::static_secret::{SecretSpec, Static};
use crate::sources::sts::exchange::Exchange;
use crate::sources::sts::Sts;
use crate::sources::{IdentityIds, Source};

mod docs;
mod health;
mod inspect;
mod mock;
mod probe;
mod proxy;
mod scan;
mod serve;
mod sts;

/// Serve the runner's AWS identity (IRSA) to BuildKit builds as session secrets.
///
/// Build steps read it with `RUN --mount=type=secret,id=aws-web-identity-token` and
/// `--mount=type=secret,id=aws-role-arn`; no workflow passes --secret flags or static keys.
#[derive(Debug, Parser)]
#[command(name = "irsa-secrets", version, propagate_version = true)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "IRSA_SECRETS_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    /// Threads serving connections. One suits a sidecar and spends the least CPU per byte
    /// forwarded; raise it for many concurrent builds on one helper.
    #[arg(long, global = true, default_value = "1", value_parser = clap::value_parser!(u16).range(1..=256), env = "IRSA_SECRETS_WORKER_THREADS")]
    pub worker_threads: u16,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stand in front of the Docker daemon: builds through this socket get the secrets.
    Proxy(Box<proxy::ProxyArgs>),
    /// Serve the Secrets service alone on a unix socket (for tests, embedding and debugging).
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
    /// Exit 0 when the helper's socket accepts connections: the image's HEALTHCHECK and a
    /// Kubernetes exec probe (the image has no shell).
    Health(health::HealthArgs),
    /// Print a shell completion script, generated from these definitions.
    Completions(docs::CompletionsArgs),
    /// Print the man page (roff), generated from these definitions.
    Man(docs::ManArgs),
}

impl Cli {
    /// Runs the chosen command; the exit code is the command's verdict.
    pub async fn run(self) -> anyhow::Result<std::process::ExitCode> {
        match self.command {
            Command::Proxy(args) => proxy::run(*args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Probe(args) => probe::run(args).await,
            Command::Token(args) => inspect::token(args),
            Command::Doctor(args) => inspect::doctor(args).await,
            Command::Mock(cmd) => mock::run(cmd),
            Command::Scan(args) => scan::run(args).await,
            Command::Health(args) => health::run(args).await,
            Command::Completions(args) => docs::completions(args),
            Command::Man(args) => docs::man(args),
        }
    }
}

/// Where the identity comes from and under which ids it is served; shared by every command
/// that serves or inspects it.
#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// Serve a mock identity (a realistic unsigned token and a fake role ARN) instead of IRSA:
    /// for laptops and tests with no AWS.
    #[arg(long, env = "IRSA_SECRETS_MOCK")]
    pub mock: bool,

    /// The projected service-account token, re-read on every request (kubelet rotates it).
    #[arg(long, env = "AWS_WEB_IDENTITY_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// The IAM role the token may assume: arn:aws:iam::ACCOUNT:role/NAME.
    #[arg(long, env = "AWS_ROLE_ARN", value_name = "ARN")]
    pub role_arn: Option<String>,

    /// AWS region; also served as the `aws-region` secret when set.
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,

    /// The audience the token must carry (the projected volume's `audience`).
    #[arg(
        long,
        default_value = "sts.amazonaws.com",
        env = "IRSA_SECRETS_AUDIENCE"
    )]
    pub audience: String,

    /// A token with less lifetime left is still served, with a warning (e.g. 5m, 1h).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, env = "IRSA_SECRETS_EXPIRY_MARGIN")]
    pub expiry_margin: Duration,

    /// Secret id under which the token is served.
    #[arg(long, default_value = crate::sources::TOKEN_ID, value_name = "ID")]
    pub token_id: String,

    /// Secret id under which the role ARN is served.
    #[arg(long, default_value = crate::sources::ROLE_ARN_ID, value_name = "ID")]
    pub role_arn_id: String,

    /// Secret id under which the region is served.
    #[arg(long, default_value = crate::sources::REGION_ID, value_name = "ID")]
    pub region_id: String,

    /// Also serve another secret, with buildx's syntax: id=ID,src=FILE or id=ID,env=VAR (a
    /// field holding a comma is quoted whole: '"src=/a,b"'). Repeatable; overrides the
    /// identity ids it names.
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR")]
    pub secrets: Vec<SecretSpec>,

    /// Scoped STS credentials instead of the raw identity.
    #[command(flatten)]
    pub sts: sts::StsArgs,
}

/// The identity source the flags select, if any.
pub enum Identity {
    /// The real IRSA token and role.
    Irsa(Irsa),
    /// The mock identity.
    Mock(Mock),
}

impl IdentityArgs {
    fn ids(&self) -> IdentityIds {
        IdentityIds {
            token: self.token_id.clone(),
            role_arn: self.role_arn_id.clone(),
            region: self.region_id.clone(),
        }
    }

    fn expectations(&self) -> Expectations {
        Expectations {
            audience: self.audience.clone(),
            expiry_margin: self.expiry_margin,
        }
    }

    /// The identity source, or an error that says which variable or flag is missing.
    pub fn identity(&self) -> anyhow::Result<Identity> {
        if self.mock {
            return Ok(Identity::Mock(Mock::new(
                self.ids(),
                self.audience.clone(),
                self.expiry_margin,
                self.region.clone(),
            )));
        }
        self.irsa().map(Identity::Irsa)
    }

    fn irsa(&self) -> anyhow::Result<Irsa> {
        match (&self.token_file, &self.role_arn) {
            (Some(file), Some(arn)) => Irsa::new(
                self.ids(),
                file.clone(),
                arn.clone(),
                self.region.clone(),
                self.expectations(),
            )
            .map_err(anyhow::Error::msg),
            (None, _) => anyhow::bail!(
                "no identity: AWS_WEB_IDENTITY_TOKEN_FILE (or --token-file) is not set. On EKS, \
                 annotate the runner's service account with eks.amazonaws.com/role-arn; on a \
                 laptop, use --mock"
            ),
            (_, None) => anyhow::bail!(
                "no identity: AWS_ROLE_ARN (or --role-arn) is not set. On EKS, annotate the \
                 runner's service account with eks.amazonaws.com/role-arn; on a laptop, use --mock"
            ),
        }
    }

    /// All sources, identity first so explicit `--secret` declarations win shared ids. With
    /// `--secret` declarations and no identity configured, serves just those.
    pub fn sources(&self) -> anyhow::Result<Vec<Arc<dyn Source>>> {
        let mut sources: Vec<Arc<dyn Source>> = Vec::new();
        if !self.has_identity() && !self.secrets.is_empty() {
            tracing::warn!("no AWS identity configured: serving only the --secret declarations");
        } else if self.sts.sts {
            sources.push(Arc::new(self.sts()?));
            if self.sts.serve_identity {
                sources.push(Arc::new(self.irsa()?));
            }
        } else {
            sources.push(self.identity_source()?);
        }
        sources.extend(self.static_source()?);
        Ok(sources)
    }

    /// True when an identity (IRSA or mock) is configured at all.
    pub fn has_identity(&self) -> bool {
        self.mock || self.token_file.is_some() || self.role_arn.is_some()
    }

    /// The raw identity (IRSA token and role ARN, or the mock), as a source.
    pub fn identity_source(&self) -> anyhow::Result<Arc<dyn Source>> {
        Ok(match self.identity()? {
            Identity::Irsa(s) => Arc::new(s),
            Identity::Mock(s) => Arc::new(s),
        })
    }

    /// The `--secret` declarations, as a source, if there are any.
    pub fn static_source(&self) -> anyhow::Result<Option<Arc<dyn Source>>> {
        if self.secrets.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(
            Static::new(self.secrets.clone()).map_err(anyhow::Error::msg)?,
        )))
    }

    /// The STS source `--sts` selects: the IRSA token exchanged for scoped credentials.
    pub fn sts(&self) -> anyhow::Result<Sts> {
        if self.mock {
            anyhow::bail!(
                "--sts exchanges the real IRSA token and --mock has none STS would accept: drop \
                 --mock and point --token-file and --role-arn at an identity"
            );
        }
        let irsa = self.irsa()?;
        let Some(region) = self.region.clone() else {
            anyhow::bail!(
                "--sts needs a region for STS's regional endpoint: set AWS_REGION or pass --region"
            );
        };
        let role_arn = self.role_arn.as_deref().unwrap_or_default();
        Ok(Sts::new(
            irsa,
            self.sts.scope(role_arn)?,
            Exchange::new(&region, self.sts.sts_endpoint.as_deref()),
            self.expiry_margin,
            Some((self.region_id.clone(), region)),
        ))
    }
}
