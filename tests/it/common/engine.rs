//! The Docker Engines the daemon tests run on: Debian 12's docker.io 20.10 (BuildKit v0.8), and
//! the current engine from Debian's `sid` (docker.io and docker-cli 28.5, containerd 2.1,
//! buildx, compose) that `scripts/deps-engine` unpacks under `target/engine/root`, with the
//! classic image store or the containerd image store. The current engine runs in private
//! network, mount and PID namespaces (`unshare`): only loopback, the test's own folder bound
//! over `/run` (containerd 2.x keeps its shim sockets under `/run/containerd` whatever its
//! configuration says), and every process it starts gone with the namespace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// One engine a daemon test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Debian 12's docker.io 20.10 and its CLI (BuildKit v0.8), on the machine's namespaces.
    Debian,
    /// sid's Docker Engine 28.5 on containerd 2.1, classic image store (graph drivers).
    Current,
    /// The same with the containerd image store (`containerd-snapshotter`).
    CurrentContainerd,
}

/// Defines one test per engine, each calling `$body(Engine)`, in a module per engine:
/// `engines!(body)` gives `debian_20_10::body`, `current::body` and `current_containerd::body`.
/// `engines!(async body)` does the same for `async fn body(Engine)`, on tokio's multi-thread
/// runtime with two workers (what the async daemon tests use).
#[macro_export]
macro_rules! engines {
    (async $($body:ident),+ $(,)?) => { $crate::engines!(@mods async $($body),+); };
    ($($body:ident),+ $(,)?) => { $crate::engines!(@mods sync $($body),+); };
    (@mods $kind:tt $($body:ident),+) => {
        mod debian_20_10 { $($crate::engines!(@test $kind $body Debian);)+ }
        mod current { $($crate::engines!(@test $kind $body Current);)+ }
        mod current_containerd { $($crate::engines!(@test $kind $body CurrentContainerd);)+ }
    };
    (@test sync $body:ident $engine:ident) => {
        #[test]
        fn $body() {
            super::$body($crate::common::engine::Engine::$engine)
        }
    };
    (@test async $body:ident $engine:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $body() {
            super::$body($crate::common::engine::Engine::$engine).await
        }
    };
}

/// Where `scripts/deps-engine` unpacks the current engine.
fn engine_dir() -> PathBuf {
    std::env::var_os("IRSA_SECRETS_ENGINE_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/engine"),
        PathBuf::from,
    )
}

/// The unpacked current engine's root, fetched by `scripts/deps-engine` on first use in this
/// process (it skips the fetch when the binaries are there) and its versions printed. A failed
/// fetch fails the test with the script's own message.
pub fn current_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/deps-engine");
        let out = Command::new(&script)
            .output()
            .expect("run scripts/deps-engine");
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "scripts/deps-engine could not fetch the current Docker Engine (see above)"
        );
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        engine_dir().join("root")
    })
}

impl Engine {
    /// Whether this is the engine from sid, which runs in its own namespaces.
    pub fn is_current(self) -> bool {
        self != Engine::Debian
    }

    /// The daemon binary.
    pub fn dockerd(self) -> PathBuf {
        match self {
            Engine::Debian => PathBuf::from(super::dockerd::DOCKERD),
            _ => current_root().join("usr/sbin/dockerd"),
        }
    }

    /// The engine's own docker CLI.
    pub fn cli(self) -> PathBuf {
        match self {
            Engine::Debian => PathBuf::from(super::dockerd::DOCKER),
            _ => current_root().join("usr/bin/docker"),
        }
    }

    /// The daemon's configuration file (`daemon.json`), if the engine needs one.
    pub fn daemon_json(self) -> Option<&'static str> {
        match self {
            Engine::Debian => None,
            Engine::Current => Some("{}"),
            Engine::CurrentContainerd => Some(r#"{"features":{"containerd-snapshotter":true}}"#),
        }
    }

    /// A `DOCKER_CONFIG` under `dir` holding nothing but links to the current engine's CLI
    /// plugins (buildx, compose): no `config.json`, no credentials. Safe to call from
    /// concurrent builds: a link another build made first is kept.
    pub fn docker_config(self, dir: &Path) -> PathBuf {
        let config = dir.join("docker-config");
        if self.is_current() {
            let plugins = config.join("cli-plugins");
            std::fs::create_dir_all(&plugins).unwrap();
            for p in ["docker-buildx", "docker-compose"] {
                let target = current_root()
                    .join("usr/libexec/docker/cli-plugins")
                    .join(p);
                match std::os::unix::fs::symlink(target, plugins.join(p)) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        panic!("link the {p} plugin: {e}")
                    }
                    _ => {}
                }
            }
        }
        config
    }

    /// The command that runs `dockerd` with `args`: directly for Debian's; for the current
    /// engine, inside new network, mount and PID namespaces with loopback up and `run` bound
    /// over `/run`, its binaries first on `PATH` (runc stays the system's). Killing the
    /// returned process (`unshare`) kills every process in the namespaces.
    pub fn daemon_command(self, run: &Path, args: &[std::ffi::OsString]) -> Command {
        if !self.is_current() {
            let mut cmd = Command::new(self.dockerd());
            cmd.args(args);
            return cmd;
        }
        std::fs::create_dir_all(run).unwrap();
        let bin = current_root().join("usr/bin");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--net",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "sh",
            "-c",
            "ip link set lo up && mount --bind \"$0\" /run && exec \"$@\"",
        ])
        .arg(run)
        .arg(self.dockerd())
        .args(args)
        .env("PATH", path);
        cmd
    }
}

/// Runs `f` on a thread inside the network namespace of process `pid`, so its sockets reach
/// what listens on that namespace's loopback.
pub fn in_netns<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> T {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("the daemon's netns");
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap()
    })
}
