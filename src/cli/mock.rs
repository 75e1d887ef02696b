//! `irsa-secrets mock write DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// Subcommands of `mock`.
#[derive(Debug, Subcommand)]
pub enum MockCommand {
    /// Write DIR/token (a mock service-account token, mode 0600) and DIR/env (the variables the
    /// EKS webhook would set), so the same Dockerfile and workflow run on a laptop:
    /// `set -a; . DIR/env; set +a; irsa-secrets serve ...`.
    Write {
        /// Directory to write into (created if missing).
        dir: PathBuf,
        /// Audience of the token.
        #[arg(long, default_value = "sts.amazonaws.com")]
        audience: String,
        /// Region written to the env file.
        #[arg(long, default_value = "us-east-1")]
        region: String,
    },
}

pub(super) fn run(cmd: MockCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MockCommand::Write {
            dir,
            audience,
            region,
        } => {
            let (token, env) = crate::sources::mock::write_files(&dir, &audience, &region)
                .map_err(|e| {
                    anyhow::anyhow!("cannot write the mock identity to {}: {e}", dir.display())
                })?;
            println!("wrote {}\nwrote {}", token.display(), env.display());
            println!("use it with: set -a; . {}; set +a", env.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
