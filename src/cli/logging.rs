//! Log set-up: human text or JSON lines on stderr, filtered by `RUST_LOG` (default `info`).

use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber. Secret values never reach it: they only exist as
/// `SecretValue`, which formats as `[redacted]`.
///
/// The AWS SDK's debug and trace levels print what the helper does not control: HTTP exchanges
/// with their error bodies, the signer's canonical request with the session token header, the
/// signing identity with its access key id. Its crates are capped at info whatever `RUST_LOG`
/// says.
pub fn init(format: LogFormat) {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let sdk_cap = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("aws_smithy_runtime", LevelFilter::INFO)
        .with_target("aws_smithy_runtime_api", LevelFilter::INFO)
        .with_target("aws_sigv4", LevelFilter::INFO)
        .with_target("aws_config", LevelFilter::INFO);
    let filter = env.and(sdk_cap);
    let layer = fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(layer.json().flatten_event(true).with_filter(filter))
            .init(),
    }
}
