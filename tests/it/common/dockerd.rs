//! A private Docker daemon for tests, on one of the [`Engine`]s: its own data, exec root,
//! pidfile and socket in a temp dir, no bridge, no iptables, no forwarding; stopped (and its
//! mounts released) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::engine::Engine;
use super::{Helper, Projected, Radioactive, ARN};

/// The docker CLI with BuildKit built in (20.10 from Debian's docker.io).
pub const DOCKER: &str = "/usr/bin/docker";
/// The daemon binary.
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// The base image every test Dockerfile starts FROM.
pub const BASE_IMAGE: &str = "irsa-test-base";

/// A running private dockerd.
pub struct Dockerd {
    pub engine: Engine,
    pub root: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
}

/// The last lines of the log of the daemon under `root`.
fn log_tail_of(root: &Path) -> String {
    let log = std::fs::read_to_string(root.join("dockerd.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// True when this machine can run the daemon tests (root and Debian's docker.io present).
pub fn available() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("the dockerd tests need root".into());
    }
    for bin in [DOCKER, DOCKERD, "/bin/busybox"] {
        if !Path::new(bin).exists() {
            return Err(format!("{bin} is missing: run scripts/deps"));
        }
    }
    Ok(())
}

/// Whether the daemon tests must be skipped: only where `IRSA_SECRETS_SKIP_DOCKER` says so
/// (a test that silently skips where CI should run it would prove nothing).
pub fn skip() -> bool {
    match available() {
        Ok(()) => false,
        Err(why) => {
            assert!(
                std::env::var_os("IRSA_SECRETS_SKIP_DOCKER").is_some(),
                "{why} (set IRSA_SECRETS_SKIP_DOCKER=1 to skip)"
            );
            eprintln!("skipped: {why}");
            true
        }
    }
}

impl Dockerd {
    /// Starts Debian's daemon under `root` and imports the busybox base image.
    pub fn start(root: &Path) -> Dockerd {
        Self::start_on(Engine::Debian, root)
    }

    /// Starts `engine`'s daemon under `root` and imports the busybox base image.
    pub fn start_on(engine: Engine, root: &Path) -> Dockerd {
        let mut d = Dockerd {
            engine,
            root: root.to_path_buf(),
            socket: root.join("docker.sock"),
            child: None,
        };
        d.launch();
        d.import_base_image();
        d
    }

    fn launch(&mut self) {
        std::fs::create_dir_all(&self.root).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("dockerd.log"))
            .unwrap();
        let r = &self.root;
        // A pidfile left by a killed daemon names a PID that may be alive again (the current
        // engine's dockerd is always PID 1 of its namespace): dockerd would refuse to start.
        let _ = std::fs::remove_file(r.join("dockerd.pid"));
        let mut args: Vec<std::ffi::OsString> = vec![
            "--data-root".into(),
            r.join("data").into(),
            "--exec-root".into(),
            r.join("exec").into(),
            "--pidfile".into(),
            r.join("dockerd.pid").into(),
            "--host".into(),
            format!("unix://{}", self.socket.display()).into(),
        ];
        for flag in [
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--containerd-namespace=irsa-test",
            "--containerd-plugins-namespace=irsa-test-plugins",
        ] {
            args.push(flag.into());
        }
        if let Some(json) = self.engine.daemon_json() {
            let config = r.join("daemon.json");
            std::fs::write(&config, json).unwrap();
            args.extend(["--config-file".into(), config.into()]);
        }
        let child = self
            .engine
            .daemon_command(&r.join("run"), &args)
            .env_remove("DOCKER_HOST")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let Dockerd {
            engine,
            root,
            socket,
            child: running,
        } = self;
        let running = running.insert(child);
        super::eventually(
            Duration::from_secs(60),
            super::later(|| format!("dockerd answers; its log:\n{}", log_tail_of(root))),
            || {
                if let Some(status) = running.try_wait().unwrap() {
                    panic!("dockerd exited with {status}:\n{}", log_tail_of(root));
                }
                cli_on(*engine, socket)
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success())
                    .then_some(())
            },
        );
    }

    /// The last lines of the daemon's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail_of(&self.root)
    }

    /// A docker CLI command (the engine's own) talking to this daemon directly.
    pub fn docker(&self) -> Command {
        cli_on(self.engine, &self.socket)
    }

    /// The process whose network namespace the daemon runs in, for a registry it must reach
    /// ([`super::engine::in_netns`], `nsenter`): `None` for Debian's, which runs on the
    /// machine's own.
    pub fn netns_pid(&self) -> Option<u32> {
        self.engine
            .is_current()
            .then(|| self.child.as_ref().expect("a running daemon").id())
    }

    fn import_base_image(&self) {
        let rootfs = self.root.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in [
            "sh",
            "sha256sum",
            "cat",
            "find",
            "sort",
            "xargs",
            "sleep",
            "echo",
            "wc",
            "ls",
            "test",
            "true",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tar = self.root.join("rootfs.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(ok.success());
        let out = self
            .docker()
            .arg("import")
            .arg(&tar)
            .arg(BASE_IMAGE)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 20 s). The current engine's dockerd is
    /// the child of `unshare`; killing `unshare` ends its namespaces and all in them.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let mut pid = child.id();
        if self.engine.is_current() {
            let children = format!("/proc/{pid}/task/{pid}/children");
            if let Some(first) = std::fs::read_to_string(children)
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse().ok())
            {
                pid = first;
            }
        }
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops and starts the daemon on the same paths.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        // Release anything the daemon left mounted under its root before the temp dir goes.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = self.root.display().to_string();
        let mut targets: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&root))
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for t in targets {
            let _ = Command::new("umount").arg("-l").arg(t).status();
        }
    }
}

/// Waits for `child` up to `limit`, killing it past that.
pub fn wait_with_timeout(child: Child, limit: Duration) -> Output {
    super::output_within(child, limit, "the command", String::new)
}

/// Starts a build whose step runs long, and waits until the step is running.
pub fn start_long_build(s: &Stack, name: &str) -> Child {
    start_build_of_step(s, name, 60)
}

/// Starts a build whose step takes `seconds` and waits until the step is running.
pub fn start_build_of_step(s: &Stack, name: &str, seconds: u32) -> Child {
    let ctx = s.context(
        name,
        &format!("RUN --mount=type=secret,id=aws-role-arn echo {name}-running && sleep {seconds}"),
    );
    let mut child = s
        .build_cmd(&ctx, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the helper to have served the step's secret: the step has started.
    let served = |log: &str| {
        log.lines()
            .filter(|l| l.contains("secret served") && l.contains("id=\"aws-role-arn\""))
            .count()
    };
    let before = served(&s.helper.log_text());
    super::eventually(
        Duration::from_secs(120),
        "the long build reaches its step",
        || {
            if served(&s.helper.log_text()) > before {
                return Some(());
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the long build ended early"
            );
            None
        },
    );
    child
}

/// Starts `irsa-secrets proxy` before `daemon`, serving the projected token.
fn spawn_helper(
    dir: &Path,
    daemon: &Dockerd,
    projected: &Projected,
    r: &Radioactive,
    rust_log: &str,
    configure: impl FnOnce(&mut Command),
) -> Helper {
    let socket = dir.join("helper.sock");
    let mut proxy = super::command();
    proxy
        .arg("proxy")
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()))
        .arg("--upstream")
        .arg(format!("unix://{}", daemon.socket.display()));
    configure(&mut proxy);
    let token_file = projected.token_path().display().to_string();
    let env = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.as_str()),
        ("AWS_ROLE_ARN", ARN),
        ("RUST_LOG", rust_log),
    ];
    Helper::spawn(proxy, socket, dir, &env, r)
}

/// `docker build` of `ctx` on `socket` (the daemon's or a listener's): success and the
/// combined output, which must hold none of `r`'s values.
pub fn build_on(socket: &Path, ctx: &Path, r: &Radioactive) -> (bool, String) {
    build_with(Engine::Debian, socket, ctx, r)
}

/// A finished build's success and its stdout and stderr as one text, checked for watched values
/// before anything can print it.
pub fn build_output(out: &Output, r: &Radioactive) -> (bool, String) {
    r.assert_absent("build output", &out.stdout);
    r.assert_absent("build output", &out.stderr);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Like [`build_on`], with `engine`'s CLI.
pub fn build_with(engine: Engine, socket: &Path, ctx: &Path, r: &Radioactive) -> (bool, String) {
    let out = cli_on(engine, socket)
        .args(["build", "--network=none", "--progress=plain", "--no-cache"])
        .arg(ctx)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    build_output(&out, r)
}

/// Debian's docker CLI on `socket` (the daemon's or the helper's), with BuildKit on.
pub fn docker_on(socket: &Path) -> Command {
    cli_on(Engine::Debian, socket)
}

/// `engine`'s docker CLI on `socket`, with BuildKit on and the `DOCKER_CONFIG` beside the
/// socket (which holds the CLI plugins for the current engine, and no credentials).
pub fn cli_on(engine: Engine, socket: &Path) -> Command {
    let mut cmd = Command::new(engine.cli());
    cmd.env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("DOCKER_BUILDKIT", "1")
        .env(
            "DOCKER_CONFIG",
            engine.docker_config(socket.parent().unwrap()),
        )
        .env_remove("BUILDKIT_PROGRESS");
    cmd
}

/// A private dockerd with the helper's front door before it, serving the IRSA identity of a
/// projected token: what the tests that build through the helper start from. Dropped, it stops
/// the helper, then the daemon, then removes its directory.
pub struct Stack {
    pub helper: Helper,
    pub daemon: Dockerd,
    /// The token the helper serves.
    pub token: String,
    /// Values no output may hold: the token and the role ARN.
    pub r: Radioactive,
    /// The stack's private directory.
    pub dir: PathBuf,
    _projected: Projected,
    _tmp: tempfile::TempDir,
}

impl Stack {
    /// Starts the daemon and `irsa-secrets proxy` in a new temp dir named `prefix...`.
    pub fn start(prefix: &str) -> Stack {
        Self::start_with(prefix, "debug", |_| {})
    }

    /// Like [`Stack::start`], with the helper's log at `rust_log` and its command changed by
    /// `configure` (more flags, limits).
    pub fn start_with(prefix: &str, rust_log: &str, configure: impl FnOnce(&mut Command)) -> Stack {
        Self::start_on(Engine::Debian, prefix, rust_log, configure)
    }

    /// Like [`Stack::start_with`], on `engine`.
    pub fn start_on(
        engine: Engine,
        prefix: &str,
        rust_log: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Stack {
        let tmp = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let r = Radioactive::default();
        let token = super::token(3600, -10);
        r.watch(token.as_bytes());
        r.watch(ARN.as_bytes());
        let projected = Projected::new(&dir.join("sa"), &token);
        let daemon = Dockerd::start_on(engine, &dir.join("d"));
        let helper = spawn_helper(&dir, &daemon, &projected, &r, rust_log, configure);
        Stack {
            helper,
            daemon,
            token,
            r,
            dir,
            _projected: projected,
            _tmp: tmp,
        }
    }

    /// Stops the helper (if it still runs) and starts a new one on the same socket.
    pub fn restart_helper(&mut self, rust_log: &str, configure: impl FnOnce(&mut Command)) {
        if let Some(mut child) = self.helper.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.helper = spawn_helper(
            &self.dir,
            &self.daemon,
            &self._projected,
            &self.r,
            rust_log,
            configure,
        );
    }

    /// A build context DIR/`name` whose Dockerfile is `dockerfile` on the base image.
    pub fn context(&self, name: &str, dockerfile: &str) -> PathBuf {
        context(
            &self.dir,
            name,
            &format!("FROM {BASE_IMAGE}\n{dockerfile}\n"),
        )
    }

    /// The engine's docker CLI through the helper.
    pub fn docker(&self) -> Command {
        cli_on(self.daemon.engine, &self.helper.socket)
    }

    /// `docker build` of `ctx` through the helper with the engine's CLI, output piped.
    pub fn build_cmd(&self, ctx: &Path, extra: &[&str]) -> Command {
        let mut cmd = self.docker();
        cmd.args(["build", "--network=none", "--progress=plain", "--no-cache"])
            .args(extra)
            .arg(ctx);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    /// Builds through the helper; returns success and the combined output.
    pub fn build(&self, ctx: &Path, extra: &[&str]) -> (bool, String) {
        self.build_within(ctx, extra, Duration::from_secs(300))
    }

    /// Like [`Stack::build`], failing the test when the build takes longer than `limit`.
    pub fn build_within(&self, ctx: &Path, extra: &[&str], limit: Duration) -> (bool, String) {
        let out = wait_with_timeout(self.build_cmd(ctx, extra).spawn().unwrap(), limit);
        build_output(&out, &self.r)
    }

    /// Runs a client command of the test's own (buildx, bake, compose) through the helper and
    /// fails the test, naming `what`, when it fails; returns the combined output.
    pub fn run_ok(&self, what: &str, cmd: &mut Command) -> String {
        let (ok, text) = build_output(&cmd.output().unwrap(), &self.r);
        self.assert_built(ok, &format!("{what}:\n{text}"));
        text
    }

    /// Builds through the helper and fails the test with both logs when the build fails.
    pub fn build_ok(&self, ctx: &Path, extra: &[&str]) -> String {
        let (ok, text) = self.build(ctx, extra);
        self.assert_built(ok, &text);
        text
    }

    /// Fails the test with both logs unless `ok`.
    pub fn assert_built(&self, ok: bool, text: &str) {
        assert!(
            ok,
            "build failed:\n{text}\nhelper log:\n{}\ndockerd:\n{}",
            super::tail(&self.helper.log_text()),
            self.daemon.log_tail()
        );
    }

    /// How many descriptors the helper holds.
    pub fn helper_fds(&self) -> usize {
        super::open_fds(self.helper.child.as_ref().unwrap().id())
    }

    /// Waits up to 20 s for the helper to hold no more than `baseline` descriptors.
    pub fn assert_descriptors_back_to(&self, baseline: usize) {
        super::eventually(
            Duration::from_secs(20),
            super::later(|| {
                format!(
                    "the helper holds at most {baseline} descriptors, as at the baseline (it \
                     holds {})",
                    self.helper_fds()
                )
            }),
            || (self.helper_fds() <= baseline).then_some(()),
        );
    }

    /// Asserts that a step's `sha256sum` of both mounts, in `out`, shows the served token and ARN.
    pub fn assert_step_saw_the_identity(&self, out: &str) {
        for (value, id) in [
            (self.token.as_str(), "aws-web-identity-token"),
            (ARN, "aws-role-arn"),
        ] {
            let line = format!("{}  /run/secrets/{id}", super::sha(value.as_bytes()));
            assert!(out.contains(&line), "no `{line}` in:\n{out}");
        }
    }
}

/// Whether a build's output has BuildKit's error for a required secret `id` nobody gave:
/// `secret ID not found` (v0.8), `secret ID: not found` (current BuildKit).
pub fn says_secret_not_found(out: &str, id: &str) -> bool {
    out.contains(&format!("secret {id} not found"))
        || out.contains(&format!("secret {id}: not found"))
}

/// A build context `dir`/`name` whose Dockerfile is `dockerfile`, whole.
pub fn context(dir: &Path, name: &str, dockerfile: &str) -> PathBuf {
    let ctx = dir.join(name);
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx
}
