//! `irsa-secrets mock write DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// Subcommands of `mock`.
#[derive(Debug, Subcommand)]
pub enum MockCommand {
    /// Write DIR/token (a mock service-account token, mode 0600) and DIR/env (the variables the
    /// EKS webhook would set), so the same Dockerfile and workflow run on a laptop:
    /// `set -a; . DIR/env; set +a; irsa-secrets proxy --listen unix:///PATH`. Existing files
    /// are left alone unless --force (the token lives 24 h: --force writes a fresh one).
    Write {
        /// Directory to write into (created if missing).
        dir: PathBuf,
        /// Audience of the token.
        #[arg(long, default_value = "sts.amazonaws.com")]
        audience: String,
        /// Region written to the env file.
        #[arg(long, default_value = "us-east-1")]
        region: String,
        /// Replace DIR/token and DIR/env if they exist.
        #[arg(long)]
        force: bool,
    },
}

pub(super) fn run(cmd: MockCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MockCommand::Write {
            dir,
            audience,
            region,
            force,
        } => {
            let existing: Vec<PathBuf> = ["token", "env"]
                .iter()
                .map(|name| dir.join(name))
                .filter(|path| std::fs::symlink_metadata(path).is_ok())
                .collect();
            if !force && !existing.is_empty() {
                let names: Vec<String> = existing.iter().map(|p| p.display().to_string()).collect();
                anyhow::bail!(
                    "{} already exists: pass --force to replace it with a fresh mock identity, \
                     or choose another DIR",
                    names.join(" and ")
                );
            }
            let (token, env) =
                crate::source::mock::write_files(&dir, &audience, &region).map_err(|e| {
                    anyhow::anyhow!("cannot write the mock identity to {}: {e}", dir.display())
                })?;
            let verb = |path: &PathBuf| {
                let replaced = existing
                    .iter()
                    .any(|old| old.file_name() == path.file_name());
                if replaced {
                    "replaced"
                } else {
                    "wrote"
                }
            };
            println!(
                "{} {}\n{} {}",
                verb(&token),
                token.display(),
                verb(&env),
                env.display()
            );
            println!("use it with: set -a; . {}; set +a", env.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
