//! `irsa-secrets run [FLAGS] -- CMD...`: the helper for one command, as `aws-vault exec` and
//! `op run` do for theirs. A helper (`proxy`, started from this binary) listens on a private
//! socket in front of the daemon CMD would have used; CMD runs with DOCKER_HOST and
//! BUILDKIT_HOST pointing at it (and DOCKER_BUILDKIT=1 unless set), gets the signals this
//! process gets, and its exit code is this process's. The helper stops when CMD ends.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

/// The daemon CMD would have used without the helper: Docker's own default.
const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// How long the helper may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Flags for the helper, `--`, then the command: any of `irsa-secrets proxy --help`'s
    /// flags but --listen (e.g. --identity github-oidc, --mock, --secret ...). --upstream
    /// defaults to DOCKER_HOST, or unix:///var/run/docker.sock.
    #[arg(
        num_args = 1..,
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "FLAGS -- CMD"
    )]
    pub args: Vec<String>,
}

/// The signals passed on to CMD: what a terminal, a CI runner or a supervisor sends to stop it.
const FORWARDED: [SignalKind; 4] = [
    SignalKind::interrupt(),
    SignalKind::terminate(),
    SignalKind::hangup(),
    SignalKind::quit(),
];

pub(super) async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // With no flags before it, clap has taken `--` for its own: everything is the command.
    let (flags, command) = match args.args.iter().position(|a| a == "--") {
        Some(split) => (&args.args[..split], &args.args[split + 1..]),
        None => (&args.args[..0], &args.args[..]),
    };
    let Some((program, rest)) = command.split_first() else {
        anyhow::bail!("run needs a command after `--`");
    };
    if flags.iter().any(|f| is_flag(f, "--listen")) {
        anyhow::bail!("run chooses the helper's socket itself: drop --listen");
    }
    // Watched from the start: a signal before CMD runs must not end this process and orphan
    // the helper; it is passed on to CMD once CMD runs.
    let mut signals = Vec::new();
    for kind in FORWARDED {
        signals.push((kind, signal(kind).context("cannot watch signals")?));
    }
    let dir = tempfile::Builder::new()
        .prefix("irsa-secrets-run.")
        .tempdir()
        .context("cannot make a private directory for the helper's socket")?;
    let socket = dir.path().join("helper.sock");
    let address = format!("unix://{}", socket.display());
    let mut helper = start_helper(flags, &address)?;
    if let Err(e) = wait_listening(&socket, &mut helper).await {
        stop_helper(helper).await;
        return Err(e);
    }

    let mut cmd = Command::new(program);
    cmd.args(rest)
        .env("DOCKER_HOST", &address)
        .env("BUILDKIT_HOST", &address);
    // Only BuildKit builds open a session: a 20.10 CLI's legacy builder would get no secrets.
    // A DOCKER_BUILDKIT the caller set (even to 0) is theirs to keep.
    if std::env::var_os("DOCKER_BUILDKIT").is_none() {
        cmd.env("DOCKER_BUILDKIT", "1");
    }
    let child = cmd.spawn();
    let status = match child {
        Ok(child) => forward_signals_until_exit(child, &mut signals).await,
        Err(e) => Err(anyhow::anyhow!("cannot start {program}: {e}")),
    };
    stop_helper(helper).await;
    Ok(exit_code(status?))
}

/// Starts `proxy` on `address` with `flags`, in its own process group, so a terminal's Ctrl-C
/// reaches CMD (and through it the build) while the helper serves on until CMD has ended.
fn start_helper(flags: &[String], address: &str) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the irsa-secrets binary")?;
    let mut helper = Command::new(exe);
    helper.arg("proxy").arg("--listen").arg(address).args(flags);
    if !flags.iter().any(|f| is_flag(f, "--upstream")) {
        let upstream = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string());
        helper.arg("--upstream").arg(upstream);
    }
    helper
        .env_remove("IRSA_SECRETS_LISTEN")
        .stdin(Stdio::null())
        // CMD's output stays CMD's: the helper logs to stderr, and has nothing for stdout.
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the helper (irsa-secrets proxy)")
}

/// Waits until the helper's socket accepts connections; an error when the helper exits first
/// (its own message, on stderr, says why) or takes too long.
async fn wait_listening(socket: &Path, helper: &mut Child) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = helper.try_wait()? {
            anyhow::bail!("the helper did not start ({status}): CMD was not run");
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the helper did not listen within {}: CMD was not run",
                humantime::format_duration(START_TIMEOUT)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `child`, passing on every signal of `signals` this process gets meanwhile.
async fn forward_signals_until_exit(
    mut child: Child,
    signals: &mut [(SignalKind, tokio::signal::unix::Signal)],
) -> anyhow::Result<ExitStatus> {
    let pid = Pid::from_raw(child.id() as i32);
    let mut exited = tokio::task::spawn_blocking(move || child.wait());
    loop {
        let next = futures_util::future::select_all(
            signals
                .iter_mut()
                .map(|(kind, s)| Box::pin(async move { s.recv().await.map(|_| *kind) })),
        );
        tokio::select! {
            status = &mut exited => return Ok(status??),
            (got, _, _) = next => {
                if let Some(sig) = got.and_then(|k| Signal::try_from(k.as_raw_value()).ok()) {
                    tracing::debug!(signal = %sig, "passing the signal on to CMD");
                    let _ = kill(pid, sig);
                }
            }
        }
    }
}

/// Stops the helper as a supervisor would (SIGTERM: builds in flight finish, the socket goes)
/// and waits for it; a helper that does not stop in time is killed.
async fn stop_helper(mut helper: Child) {
    let _ = kill(Pid::from_raw(helper.id() as i32), Signal::SIGTERM);
    let waited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if !matches!(helper.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = helper.kill();
        let _ = helper.wait();
    });
    let _ = waited.await;
}

/// True when `arg` is `flag`, as `--flag` or `--flag=VALUE` (not `--flag-kind`).
fn is_flag(arg: &str, flag: &str) -> bool {
    arg.strip_prefix(flag)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
}

/// CMD's exit code, or 128 + the signal that ended it, as a shell reports it.
fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
