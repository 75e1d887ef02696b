//! `irsa-secrets scan IMAGE`: fetches what the helper would serve now, scans the image for it
//! and for AWS credentials of any origin, prints the report. Exit 0 clean, 1 findings, 2 error.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser};

use super::assemble::{asked, secret_sources};
use super::sts::StsArgs;
use super::{IdentityArgs, IdsArgs, RegionArgs, SecretArgs};
use crate::plan::{fetchable, Asked};
use crate::scan::ignore::Ignore;
use crate::scan::report;
use crate::scan::{docker, ImageLimits, Needles, Options, Progress, Report};
use crate::source::identity::Choice;
use crate::source::static_secret::Origin;
use crate::source::Source;

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
        let (local, _) = self.asked(false)?.declared();
        secret_sources(&local, &[], None)
    }

    /// The `aws-sm` and `aws-ssm` declarations, as sources fetching with the helper's own
    /// access as `serve` would have it with these flags (the STS settings from their variables
    /// or defaults, the region from `--region`).
    pub fn aws_sources(&self) -> anyhow::Result<Vec<Arc<dyn Source>>> {
        let (asked, sts) = (self.asked(true)?, default_sts()?);
        let (_, remote) = asked.declared();
        if remote.is_empty() {
            return Ok(Vec::new());
        }
        let own = asked.own();
        fetchable(own, &remote)?;
        let aws = self
            .identity
            .own_aws(own, self.region.region.as_deref(), &sts)?;
        secret_sources(&[], &remote, aws.as_ref())
    }

    /// What these flags ask for with `serve`'s defaults, with the declarations of AWS values
    /// (`aws`) or of the others.
    fn asked(&self, aws: bool) -> anyhow::Result<Asked> {
        let mut secrets = self.secrets.clone();
        secrets
            .secrets
            .retain(|s| matches!(s.origin, Origin::Aws(_)) == aws);
        Ok(asked(
            &self.identity,
            Choice::Auto,
            &default_sts()?,
            &self.region,
            &secrets,
        ))
    }
}

/// The STS settings from their variables or defaults: `scan` has no STS flags.
fn default_sts() -> anyhow::Result<StsArgs> {
    #[derive(Parser)]
    #[command(no_binary_name = true)]
    struct Defaults {
        #[command(flatten)]
        sts: StsArgs,
    }
    Ok(Defaults::try_parse_from(std::iter::empty::<String>())?.sts)
}

/// Flags of `scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// The image: a `docker save` archive, an OCI layout directory or tar, or docker://NAME
    /// (read from the Docker Engine at DOCKER_HOST or /var/run/docker.sock).
    #[arg(value_name = "IMAGE")]
    pub image: String,

    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,

    /// Most bytes one layer may decompress to (suffixes K, M, G, T: powers of 1024).
    #[arg(long, default_value = "64G", value_parser = parse_size, value_name = "SIZE")]
    pub max_layer_size: u64,

    /// Most decompressed bytes per compressed byte of a layer beyond its first 16 MiB: larger
    /// ratios are decompression bombs.
    #[arg(long, default_value = "200", value_name = "N")]
    pub max_ratio: u64,

    /// Findings accepted as known false positives: one fingerprint a line, as every report
    /// prints them (`#` comments and blank lines allowed). Accepted findings are counted, not
    /// listed, and do not fail the scan.
    #[arg(long, value_name = "FILE")]
    pub ignore: Option<std::path::PathBuf>,

    /// Where the values to look for come from (the same flags as `serve`); with none, only the
    /// generic detectors run.
    #[command(flatten)]
    pub identity: SearchArgs,
}

pub(super) async fn run(args: ScanArgs) -> anyhow::Result<ExitCode> {
    match scan(args).await {
        Ok(report) => Ok(ExitCode::from(u8::from(
            !report.findings.is_empty() || report.omitted > 0,
        ))),
        Err(err) => {
            eprintln!("error: {err:#}");
            Ok(ExitCode::from(2))
        }
    }
}

async fn scan(args: ScanArgs) -> anyhow::Result<Report> {
    let ignore = args.ignore.as_deref().map(Ignore::load).transpose()?;
    let (needles, notes) = needles(&args.identity).await?;
    let limits = ImageLimits {
        max_layer_bytes: args.max_layer_size,
        max_ratio: args.max_ratio,
        ..ImageLimits::default()
    };
    let spooled = match args.image.strip_prefix("docker://") {
        Some(name) => {
            let host = std::env::var("DOCKER_HOST").ok();
            let socket = docker::socket_path(host.as_deref())?;
            Some(docker::fetch(&socket, name).await?)
        }
        None => None,
    };
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let display = std::io::stderr()
        .is_terminal()
        .then(|| show_progress(progress.clone(), stop.clone()));
    let image = args.image.clone();
    let result = tokio::task::spawn_blocking(move || {
        let options = Options {
            limits,
            progress: Some(&progress),
            ignore: ignore.as_ref(),
        };
        match spooled {
            Some(file) => crate::scan::scan_file(file, &image, &needles, &options),
            None => crate::scan::scan_path_with(std::path::Path::new(&image), &needles, &options),
        }
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    if let Some(display) = display {
        let _ = display.join();
    }
    let mut report = result?;
    report.notes.splice(0..0, notes);
    let mut out = std::io::stdout().lock();
    out.write_all(report::render(&report, args.format.into()).as_bytes())?;
    out.flush()?;
    Ok(report)
}

/// The values every configured source serves now. Sources that fail fail the scan: scanning
/// without them would report a clean image it has not checked.
async fn needles(identity: &SearchArgs) -> anyhow::Result<(Needles, Vec<String>)> {
    let mut needles = Needles::default();
    let mut notes = Vec::new();
    if !identity.has_identity() && identity.secrets.secrets.is_empty() {
        notes.push(
            "no identity or --secret configured: only the generic detectors ran (AWS keys, \
             session tokens, identity JWTs, ECR registry passwords)"
                .to_string(),
        );
        return Ok((needles, notes));
    }
    let mut sources: Vec<Arc<dyn Source>> = Vec::new();
    if identity.has_identity() {
        sources.push(identity.identity_source()?);
    }
    sources.extend(identity.local_sources()?);
    for source in sources {
        for id in source.ids() {
            match source.fetch(&id).await {
                Ok(Some(value)) => needles.add(id, value),
                Ok(None) => {}
                Err(e) => anyhow::bail!("cannot fetch secret {id} to search for it: {e}"),
            }
        }
    }
    // A value in AWS that cannot be fetched now (no access from here, the service down) leaves
    // the rest of the search worth doing: the report says which was not searched for.
    match identity.aws_sources() {
        Err(e) => notes.push(format!(
            "the aws-sm and aws-ssm secrets were not searched for: {e:#}"
        )),
        Ok(sources) => {
            for source in sources {
                for id in source.ids() {
                    let name = source.origin(&id).unwrap_or_default().to_string();
                    match source.fetch(&id).await {
                        Ok(Some(value)) => needles.add(id, value),
                        Ok(None) => {}
                        Err(e) => notes.push(format!(
                            "secret {id} ({} {name}) was not searched for: cannot fetch it: {e}",
                            source.name()
                        )),
                    }
                }
            }
        }
    }
    Ok((needles, notes))
}

/// Redraws one status line on stderr (a terminal) until `stop`, for images over 64 MiB.
fn show_progress(progress: Arc<Progress>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut drawn = false;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let total = progress.total.load(Ordering::Relaxed);
            if total >= 64 << 20 {
                let done = progress.done.load(Ordering::Relaxed);
                eprint!(
                    "\rscanning: {} / {} MiB ({}%)   ",
                    done >> 20,
                    total >> 20,
                    done * 100 / total
                );
                drawn = true;
            }
        }
        if drawn {
            eprint!("\r{:60}\r", "");
        }
    })
}

/// Parses `1024`, `64K`, `512M`, `64G`, `1T` (powers of 1024; a trailing `iB` or `B` is fine).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches("iB").trim_end_matches('B');
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        Some((i, 'T' | 't')) => (&t[..i], 40),
        _ => (t, 0),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size: use e.g. 1048576, 512M or 64G"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("64G"), Ok(64 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}

/// Output formats of `scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per finding, then a summary.
    Text,
    /// The report as one JSON object.
    Json,
    /// SARIF 2.1.0, for code-scanning tools.
    Sarif,
}

impl From<Format> for report::Format {
    fn from(f: Format) -> Self {
        match f {
            Format::Text => Self::Text,
            Format::Json => Self::Json,
            Format::Sarif => Self::Sarif,
        }
    }
}
