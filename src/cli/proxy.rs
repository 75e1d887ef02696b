//! `irsa-secrets proxy`: one or more listeners in front of daemons, with the audit trail and
//! the metrics endpoint shared between them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser};
use tokio_util::sync::CancellationToken;

use super::serve::SocketArgs;
use super::signals::Signals;
use super::{RuntimeArgs, ServedArgs};
use crate::cli::config::{Schema, Section};
use crate::front::socket::{self, SocketOptions};
use crate::front::{limits, Daemon, Gate, Limits, Upstream, UpstreamKind};
use crate::observe::audit::Audit;
use crate::observe::metrics::Metrics;
use crate::observe::ready::Checks;
use crate::plan::{Listener, ListenerAsked, Plan};
use crate::provider::{Provider, Registries};
use crate::source::aws::Aws;
use crate::source::ecr::Passwords;
use crate::wire::tls::TlsFiles;

/// Flags of `proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// A TOML file whose keys are these flags: top-level keys are the global ones, each
    /// [[listener]] table one listener (so several sockets can serve different ids).
    #[arg(long, value_name = "FILE", env = "IRSA_SECRETS_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(flatten)]
    pub listener: ListenerArgs,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Settings shared by every listener.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    /// Write one JSON line per secret request and session to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE|-", env = "IRSA_SECRETS_AUDIT_LOG")]
    pub audit_log: Option<String>,

    /// Key for the audit records' value fingerprints (HMAC-SHA256); random per process if unset.
    #[arg(long, value_name = "FILE", env = "IRSA_SECRETS_AUDIT_KEY_FILE")]
    pub audit_key_file: Option<PathBuf>,

    /// Serve /metrics (Prometheus), /healthz and /readyz on this address (off by default).
    #[arg(long, value_name = "ADDR:PORT", env = "IRSA_SECRETS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Most client connections open at once, over all listeners; more wait in the socket's
    /// backlog, and at the cap connections still without a request are closed first.
    /// [default: from the descriptor limit, (limit - 128) / 2]
    #[arg(long, value_name = "N", env = "IRSA_SECRETS_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// A client must have sent its whole first request (HTTP/1.1 head, first HTTP/2 call)
    /// within this long of connecting. [default: 30s]
    #[arg(long, value_name = "DURATION", env = "IRSA_SECRETS_HEADER_TIMEOUT", value_parser = duration)]
    pub header_timeout: Option<Duration>,

    /// An HTTP/1.1 connection is closed when its next request is not complete within this long
    /// of the last answer. [default: 90s]
    #[arg(long, value_name = "DURATION", env = "IRSA_SECRETS_IDLE_TIMEOUT", value_parser = duration)]
    pub idle_timeout: Option<Duration>,

    /// On SIGTERM, idle connections close at once; builds in flight get this long to finish,
    /// then are cut. [default: 10s]
    #[arg(long, value_name = "DURATION", env = "IRSA_SECRETS_SHUTDOWN_TIMEOUT", value_parser = duration)]
    pub shutdown_timeout: Option<Duration>,
}

/// A positive duration such as `30s`, `2m` or `1m30s`, at most [`crate::bound::MAX_DURATION`].
fn duration(s: &str) -> Result<Duration, String> {
    match crate::bound::duration(s)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

impl GlobalArgs {
    /// The timeouts and the connection cap these flags ask for, defaults filled in.
    fn limits(&self) -> Limits {
        let nofile = limits::descriptor_limit();
        let max = self
            .max_connections
            .map_or_else(|| limits::default_max_connections(nofile), |n| n as usize);
        tracing::info!(
            max_connections = max,
            descriptor_limit = nofile,
            "serving at most {max} connections at once"
        );
        if let Some(warning) = limits::descriptor_warning(max, nofile) {
            tracing::warn!(
                max_connections = max,
                descriptor_limit = nofile,
                "{warning}"
            );
        }
        let mut l = Limits::new(max);
        l.header_timeout = self.header_timeout.unwrap_or(l.header_timeout);
        l.idle_timeout = self.idle_timeout.unwrap_or(l.idle_timeout);
        l.shutdown_timeout = self.shutdown_timeout.unwrap_or(l.shutdown_timeout);
        l
    }
}

/// One listener: a socket, the daemon behind it, what it serves and to whom.
#[derive(Debug, Clone, Args)]
pub struct ListenerArgs {
    /// Name of this listener in logs, audit records and metrics.
    #[arg(long, default_value = "default")]
    pub name: String,

    /// Socket to listen on; point DOCKER_HOST, buildctl --addr or the buildx remote driver at it.
    #[arg(long, env = "IRSA_SECRETS_LISTEN", value_name = "unix:///PATH")]
    pub listen: Option<String>,

    /// The daemon to forward to: dockerd (e.g. unix:///var/run/docker.sock) or buildkitd
    /// (e.g. unix:///run/buildkit/buildkitd.sock).
    #[arg(
        long,
        default_value = "unix:///var/run/docker.sock",
        env = "IRSA_SECRETS_UPSTREAM",
        value_name = "unix:///PATH|tcp://HOST:PORT"
    )]
    pub upstream: Upstream,

    /// What the upstream is; auto asks it (GET /_ping).
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "IRSA_SECRETS_UPSTREAM_KIND"
    )]
    pub upstream_kind: UpstreamKind,

    /// Serve only these ids on this listener (repeatable); others are answered as absent.
    #[arg(long = "allow-id", value_name = "ID")]
    pub allow_ids: Vec<String>,

    /// Answer registry credentials for HOST as for that ECR registry (repeatable): pull-through
    /// caches, VPC endpoint names, mirrors. Also a top-level config key, for every listener.
    #[arg(
        long = "ecr-alias",
        value_name = "HOST=ACCOUNT.dkr.ecr.REGION.amazonaws.com"
    )]
    pub ecr_aliases: Vec<String>,

    /// Answer registry credentials only for these hosts (repeatable); a listener with
    /// --allow-id answers none without it.
    #[arg(long = "allow-registry", value_name = "HOST")]
    pub allow_registries: Vec<String>,

    /// Only processes of this uid may connect (repeatable; checked with SO_PEERCRED).
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uids: Vec<u32>,

    /// Only processes of this gid may connect (repeatable; a uid or a gid match admits).
    #[arg(long = "allow-gid", value_name = "GID")]
    pub allow_gids: Vec<u32>,

    /// Most build sessions open at once on this listener; more are refused with a clear error.
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<usize>,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub socket: SocketArgs,

    #[command(flatten)]
    pub served: ServedArgs,
}

/// The flags of TLS to the daemon.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) that signed the daemon's certificate; turns TLS on.
    #[arg(long, value_name = "FILE", env = "IRSA_SECRETS_TLSCACERT")]
    pub tlscacert: Option<PathBuf>,
    /// Client certificate (PEM) to present to the daemon.
    #[arg(
        long,
        value_name = "FILE",
        env = "IRSA_SECRETS_TLSCERT",
        requires = "tlskey"
    )]
    pub tlscert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        env = "IRSA_SECRETS_TLSKEY",
        requires = "tlscert"
    )]
    pub tlskey: Option<PathBuf>,
    /// Name to verify in the daemon's certificate (default: the upstream's host).
    #[arg(long, value_name = "NAME", env = "IRSA_SECRETS_TLSSERVERNAME")]
    pub tlsservername: Option<String>,
}

impl From<TlsArgs> for TlsFiles {
    fn from(a: TlsArgs) -> Self {
        Self {
            tlscacert: a.tlscacert,
            tlscert: a.tlscert,
            tlskey: a.tlskey,
            tlsservername: a.tlsservername,
        }
    }
}

/// Parses one `[[listener]]` table's flags.
#[derive(Debug, Parser)]
#[command(name = "listener", no_binary_name = true)]
struct ListenerFlags {
    #[command(flatten)]
    listener: ListenerArgs,
}

/// Parses the config file's global flags.
#[derive(Debug, Parser)]
#[command(name = "config", no_binary_name = true)]
struct GlobalFlags {
    #[command(flatten)]
    global: GlobalArgs,
}

/// A listener ready to run.
struct Ready {
    bound: socket::BoundSocket,
    daemon: Daemon,
    provider: Provider,
    gate: Gate,
}

/// Runs `proxy`. `matches` are the command's own, which alone know where each value came from
/// (command line, variable or default): the config file yields to the first two only.
pub(super) async fn run(args: ProxyArgs, matches: &clap::ArgMatches) -> anyhow::Result<ExitCode> {
    let signals = Signals::install()?;
    let settings = load(args, matches)?;
    let plan = Plan::new(settings.listeners.iter().map(ListenerArgs::asked).collect())?;
    let prepared = prepare_all(settings, plan).await?;
    spawn(prepared, signals).await
}

/// What the command line and the config file settle on together.
struct Settings {
    global: GlobalArgs,
    listeners: Vec<ListenerArgs>,
}

/// Reads the flags and the config file into one settled value. A global flag given on the
/// command line (or in its variable) wins over the file's key; both go through the same clap
/// definition, so a new global flag needs no edit here.
fn load(args: ProxyArgs, matches: &clap::ArgMatches) -> anyhow::Result<Settings> {
    let Some(path) = &args.config else {
        return Ok(Settings {
            global: args.global,
            listeners: vec![args.listener],
        });
    };
    // A value from `IRSA_SECRETS_LISTEN` does not conflict with `--config`: the image sets that
    // variable (for `health`) and has no shell to unset it.
    if matches.value_source("listen") == Some(clap::parser::ValueSource::CommandLine) {
        anyhow::bail!("give listeners either in --config or with --listen, not both");
    }
    let top = INHERITED.iter().fold(GlobalFlags::command(), |top, flag| {
        top.arg(
            clap::Arg::new(*flag)
                .long(*flag)
                .action(clap::ArgAction::Append),
        )
    });
    let schema = Schema::new(top, ListenerFlags::command());
    let file = schema.load(path)?;
    let inherited = inherited(&file.global);
    let mut global = schema
        .matches::<GlobalFlags>(path, Section::Top, &file.global)?
        .global;
    // Only values the command line or the environment gave are in `matches`: they replace the
    // file's, the rest of the file's stay.
    global.update_from_arg_matches(matches)?;
    let mut listeners = Vec::new();
    for (i, own) in file.listeners.iter().enumerate() {
        let place = Section::Listener(i + 1);
        // The table is checked on its own first: one that names no identity stays refused
        // whatever the top level declares for every listener.
        schema.matches::<ListenerFlags>(path, place, own)?;
        // The top level's values come first, so a listener's own alias of the same host, or
        // its own secret of the same id, wins.
        let flags: Vec<String> = inherited.iter().chain(own).cloned().collect();
        let parsed: ListenerFlags = schema.matches(path, place, &flags)?;
        listeners.push(parsed.listener);
    }
    if listeners.is_empty() {
        anyhow::bail!("{} has no [[listener]] table", path.display());
    }
    Ok(Settings { global, listeners })
}

/// The listener flags the config file also takes at the top level, for every listener: ECR
/// aliases and `--secret` declarations (on the command line, the one listener's flags are
/// already that). A listener with `allow_id` still serves only the ids it names.
const INHERITED: [&str; 2] = ["ecr-alias", "secret"];

/// The top level's values of the [`INHERITED`] flags (`--flag=value`), as listener flags.
fn inherited(global: &[String]) -> Vec<String> {
    let flags: Vec<String> = INHERITED.iter().map(|f| format!("--{f}=")).collect();
    global
        .iter()
        .filter(|flag| flags.iter().any(|f| flag.starts_with(f.as_str())))
        .cloned()
        .collect()
}

/// Everything bound and built, nothing running yet.
struct Prepared {
    global: GlobalArgs,
    limits: Limits,
    audit: Audit,
    metrics: Metrics,
    ready: Vec<Ready>,
}

/// Settles the limits (saying before any socket is bound when the cap exceeds the descriptor
/// limit), opens the audit trail, builds each listener of `plan` (its provider and daemon),
/// and only then binds the sockets (each waiting up to the shutdown timeout for a helper being
/// stopped on its path to leave): a listener that cannot be built leaves no socket behind.
async fn prepare_all(settings: Settings, plan: Plan) -> anyhow::Result<Prepared> {
    let Settings { global, listeners } = settings;
    let limits = global.limits();
    let audit = match &global.audit_log {
        Some(target) => {
            Audit::open(target, global.audit_key_file.as_deref()).map_err(anyhow::Error::msg)?
        }
        None => Audit::default(),
    };
    let metrics = Metrics::default();
    let mut built = Vec::new();
    for (args, listener) in listeners.into_iter().zip(plan.listeners) {
        built.push(build(args, listener, &audit, &metrics)?);
    }
    let mut ready = Vec::new();
    for built in built {
        let bound = socket::bind(&built.socket, &built.options, limits.shutdown_timeout)
            .await
            .map_err(|e| anyhow::anyhow!("listener {}: {e}", built.provider.listener()))?;
        ready.push(Ready {
            bound,
            daemon: built.daemon,
            provider: built.provider,
            gate: built.gate,
        });
    }
    Ok(Prepared {
        global,
        limits,
        audit,
        metrics,
        ready,
    })
}

/// Starts the metrics endpoint and the listeners, and stops them at `signals`.
async fn spawn(prepared: Prepared, signals: Signals) -> anyhow::Result<ExitCode> {
    let Prepared {
        global,
        limits,
        audit: _audit,
        metrics,
        ready,
    } = prepared;
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = global.metrics_listen {
        let checks = Arc::new(readiness(&ready));
        let (metrics, stop) = (metrics.clone(), stop.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on --metrics-listen {addr}: {e}"))?;
        tasks.spawn(async move {
            if let Err(e) =
                crate::observe::metrics::serve(listener, metrics, checks, stop.cancelled_owned())
                    .await
            {
                tracing::error!(error = %e, "the metrics endpoint failed");
            }
        });
    }
    for r in ready {
        let Ready {
            bound,
            daemon,
            provider,
            gate,
        } = r;
        tracing::info!(
            listener = provider.listener(),
            socket = %bound.file.path().display(),
            upstream = %daemon.upstream,
            ids = ?provider.ids(),
            "proxying: point DOCKER_HOST, buildctl --addr or the buildx remote driver at unix://{}",
            bound.file.path().display()
        );
        tokio::spawn(
            daemon
                .upstream
                .clone()
                .warn_if_silent(provider.listener().to_string()),
        );
        let (stop, limits) = (stop.clone(), limits.clone());
        tasks.spawn(async move {
            crate::front::run(
                bound,
                daemon,
                provider,
                gate,
                limits,
                stop.cancelled_owned(),
            )
            .await;
        });
    }
    signals.stopped(Some(limits.slots.clone())).await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `/readyz`: every listener's identity is valid and its daemon reachable.
fn readiness(ready: &[Ready]) -> Checks {
    let mut checks = Checks::default();
    for r in ready {
        let name = format!("listener {}", r.provider.listener());
        let provider = r.provider.clone();
        checks.add(&name, move || {
            std::future::ready(provider.identity_problems())
        });
        let upstream = r.daemon.upstream.clone();
        checks.add(name, move || {
            let upstream = upstream.clone();
            async move { upstream.unreachable().await.into_iter().collect() }
        });
    }
    checks
}

/// A listener built, its socket not yet bound.
struct Built {
    socket: PathBuf,
    options: SocketOptions,
    daemon: Daemon,
    provider: Provider,
    gate: Gate,
}

/// Builds the parts of `listener` from its flags `l`: the sources, the helper's own AWS
/// access, the registry answers, TLS to the daemon and the options its socket takes.
fn build(
    l: ListenerArgs,
    listener: Listener,
    audit: &Audit,
    metrics: &Metrics,
) -> anyhow::Result<Built> {
    let context = |e: String| anyhow::anyhow!("listener {}: {e}", listener.name);
    let serving = &listener.serving;
    let aws = l
        .served
        .own_aws(serving)
        .map_err(|e| context(format!("{e:#}")))?;
    let sources = l
        .served
        .sources(serving, aws.as_ref())
        .map_err(|e| context(format!("{e:#}")))?;
    let tls = TlsFiles::from(l.tls)
        .load(l.upstream.host())
        .map_err(|e| context(e.to_string()))?;
    let provider = Provider::new(sources)
        .with_policy(&listener.name, listener.allowed_ids.clone())
        .with_registries(registries(&listener, aws))
        .with_observers(audit.clone(), metrics.clone());
    Ok(Built {
        socket: listener.socket,
        options: l.socket.options(),
        daemon: Daemon::new(l.upstream, tls, l.upstream_kind),
        provider,
        gate: Gate::new(l.allow_uids, l.allow_gids, l.max_sessions),
    })
}

impl ListenerArgs {
    /// What this listener asks for, as the plan reads it.
    fn asked(&self) -> ListenerAsked {
        ListenerAsked {
            name: self.name.clone(),
            listen: self.listen.clone(),
            asked: self.served.asked(),
            ecr_aliases: self.ecr_aliases.clone(),
            allow_ids: self.allow_ids.clone(),
            allow_registries: self.allow_registries.clone(),
        }
    }
}

/// The listener's registry credentials: ECR's hosts and the aliases, answered with the
/// helper's own AWS access when it has one, for the registries the plan allows.
fn registries(l: &Listener, aws: Option<Aws>) -> Registries {
    let allowed = l.allowed_registries.clone();
    let listener = &l.name;
    match (&aws, &allowed) {
        (None, _) => tracing::info!(
            listener,
            "registry credentials: not answered (this listener has no AWS identity of its own: \
             mock or none); ECR pulls go on to the client's own credentials"
        ),
        (Some(_), Some(a)) if a.is_empty() => tracing::info!(
            listener,
            "registry credentials: not answered (a listener with allow_id answers none unless \
             allow_registry names the hosts)"
        ),
        (Some(aws), _) => {
            let aliases: Vec<String> = l.hosts.aliases().map(|(h, r)| format!("{h}={r}")).collect();
            tracing::info!(
                listener,
                identity = aws.identity(),
                ?aliases,
                allowed = ?allowed,
                "registry credentials: answered for ECR hosts with the helper's own identity"
            );
        }
    }
    Registries::new(l.hosts.clone(), aws.map(Passwords::from_aws), allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ecr_alias` at the top level reaches every listener, before the listener's own;
    /// `allow_registry` is a listener key.
    #[test]
    fn the_config_file_takes_ecr_aliases_at_both_levels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "ecr_alias = [\"mirror.example=123456789012.dkr.ecr.us-east-1.amazonaws.com\"]\n\
             [[listener]]\nlisten = \"unix:///tmp/a.sock\"\nmock = true\n\
             ecr_alias = [\"127.0.0.1:5000=210987654321.dkr.ecr.eu-west-1.amazonaws.com\"]\n\
             allow_registry = [\"127.0.0.1:5000\"]\n\
             [[listener]]\nname = \"b\"\nlisten = \"unix:///tmp/b.sock\"\nmock = true\n",
        )
        .unwrap();
        let cli = ["irsa-secrets", "proxy", "--config", path.to_str().unwrap()];
        let m = super::super::Cli::command()
            .try_get_matches_from(cli)
            .unwrap();
        let m = m.subcommand_matches("proxy").unwrap();
        let args = ProxyArgs::from_arg_matches(m).unwrap();
        let settings = load(args, m).unwrap();
        let [a, b] = &settings.listeners[..] else {
            panic!("two listeners")
        };
        assert_eq!(
            a.ecr_aliases,
            [
                "mirror.example=123456789012.dkr.ecr.us-east-1.amazonaws.com",
                "127.0.0.1:5000=210987654321.dkr.ecr.eu-west-1.amazonaws.com"
            ]
        );
        assert_eq!(a.allow_registries, ["127.0.0.1:5000"]);
        assert_eq!(
            b.ecr_aliases,
            ["mirror.example=123456789012.dkr.ecr.us-east-1.amazonaws.com"]
        );
        assert!(b.allow_registries.is_empty());
    }

    #[test]
    fn top_level_aliases_and_secrets_become_listener_flags() {
        let global = [
            "--audit-log=-",
            "--ecr-alias=a=b",
            "--secret=id=x,env=X",
            "--secret-x=1",
            "--ecr-alias=c=d",
        ]
        .map(String::from);
        assert_eq!(
            inherited(&global),
            ["--ecr-alias=a=b", "--secret=id=x,env=X", "--ecr-alias=c=d"]
        );
    }

    /// A top-level `secret` reaches every listener, before the listener's own (which wins an
    /// id they share); it does not make a table that names no identity acceptable.
    #[test]
    fn the_config_file_takes_secrets_at_both_levels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let top = "secret = [\"id=shared,env=SHARED\", \"id=both,env=TOP\"]\n";
        let a = "[[listener]]\nlisten = \"unix:///tmp/a.sock\"\nmock = true\n\
                 secret = [\"id=both,env=OWN\"]\n";
        let load_text = |text: String| {
            std::fs::write(&path, text).unwrap();
            let cli = ["irsa-secrets", "proxy", "--config", path.to_str().unwrap()];
            let m = super::super::Cli::command()
                .try_get_matches_from(cli)
                .unwrap();
            let m = m.subcommand_matches("proxy").unwrap();
            load(ProxyArgs::from_arg_matches(m).unwrap(), m)
        };
        let settings = load_text(format!("{top}{a}")).unwrap();
        let ids: Vec<String> = settings.listeners[0]
            .served
            .secrets
            .secrets
            .iter()
            .map(|s| format!("{s:?}"))
            .collect();
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert!(
            ids[0].contains("SHARED") && ids[2].contains("OWN"),
            "{ids:?}"
        );
        let Err(err) = load_text(format!(
            "{top}[[listener]]\nlisten = \"unix:///tmp/b.sock\"\n"
        )) else {
            panic!("a listener naming no identity was taken")
        };
        assert!(format!("{err:#}").contains("names no identity"), "{err:#}");
    }

    /// The file's global values stay unless the command line gives the same flag.
    #[test]
    fn command_line_wins_over_file_per_flag() {
        let file = GlobalFlags::try_parse_from(["--audit-log", "/file", "--idle-timeout", "5s"])
            .unwrap()
            .global;
        let m = super::super::Cli::command()
            .try_get_matches_from(["irsa-secrets", "proxy", "--audit-log", "/cli"])
            .unwrap();
        let mut global = file;
        global
            .update_from_arg_matches(m.subcommand_matches("proxy").unwrap())
            .unwrap();
        assert_eq!(global.audit_log.as_deref(), Some("/cli"));
        assert_eq!(global.idle_timeout, Some(Duration::from_secs(5)));
        assert_eq!(global.metrics_listen, None);
    }
}
