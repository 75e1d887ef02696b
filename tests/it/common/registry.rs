//! A real registry for the registry-credential tests: Debian's `docker-registry` (distribution
//! 2.8) on 127.0.0.1, seeded with an image pushed by the docker CLI's own `docker login` and
//! `docker push`, after which that login is dropped. It asks for credentials as ECR does:
//! htpasswd Basic auth, as private ECR answers; or token auth, as ECR Public answers (a Bearer
//! challenge naming a token server, here `tests/python/token_server.py`, that takes the Basic
//! credentials and hands out a signed JWT).
//!
//! For the current engine, which runs in its own network namespace, the registry (and its
//! token server) run in that namespace (`nsenter --net`), and the test reaches them there.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;

use super::dockerd::{docker_on, Dockerd, BASE_IMAGE};
use super::{eventually, free_port, http_exchange as exchange};

/// Debian's distribution server (package docker-registry).
pub const REGISTRY: &str = "/usr/bin/docker-registry";
/// apache2-utils' htpasswd, for the bcrypt entry distribution requires.
pub const HTPASSWD: &str = "/usr/bin/htpasswd";
/// The `service` of the token-auth registry: the audience of its tokens.
pub const TOKEN_SERVICE: &str = "irsa-test-registry";
/// The issuer the token-auth registry trusts.
const TOKEN_ISSUER: &str = "irsa-test-token-server";

/// A running registry; dropped, it is killed (and its token server with it).
pub struct Registry {
    /// `127.0.0.1:PORT`, the registry's host as image names spell it.
    pub host: String,
    dir: PathBuf,
    child: Child,
    tokens: Option<TokenServer>,
    /// The process whose network namespace the registry listens in, if not the machine's.
    netns: Option<u32>,
}

/// `program` run in the network namespace of process `netns`, if any.
fn command_in(netns: Option<u32>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        None => Command::new(program),
        Some(pid) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/proc/{pid}/ns/net")).arg(program);
            cmd
        }
    }
}

/// [`exchange`] from the network namespace of process `netns`, if any.
fn exchange_in(netns: Option<u32>, host: &str, request: &str) -> Option<(u16, String)> {
    match netns {
        None => exchange(host, request),
        Some(pid) => super::engine::in_netns(pid, || exchange(host, request)),
    }
}

/// Whether this machine has the registry and htpasswd (`scripts/deps` installs both).
pub fn available() -> Result<(), String> {
    for bin in [REGISTRY, HTPASSWD] {
        if !Path::new(bin).exists() {
            return Err(format!("{bin} is missing: run scripts/deps"));
        }
    }
    Ok(())
}

/// `Authorization: Basic` of `user` and `password`.
fn basic(user: &str, password: &str) -> String {
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {pair}")
}

/// The token server of a token-auth registry: `tests/python/token_server.py` with a key and
/// certificate made for this run. Dropped, it is killed.
pub struct TokenServer {
    /// `127.0.0.1:PORT`.
    pub host: String,
    log: PathBuf,
    child: Child,
    netns: Option<u32>,
}

impl TokenServer {
    /// Makes a P-256 key and a self-signed certificate under `dir` (the certificate is the
    /// registry's `rootcertbundle`), starts the server admitting `user` with `password`, and
    /// waits for it to say its port.
    fn start(dir: &Path, user: &str, password: &str, netns: Option<u32>) -> TokenServer {
        let made = rcgen::generate_simple_self_signed(vec![TOKEN_ISSUER.to_string()]).unwrap();
        let (key, cert, secret) = (dir.join("token.key"), dir.join("token.crt"), dir.join("pw"));
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&secret, password).unwrap();
        let log = dir.join("token-requests.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/token_server.py");
        let stderr = std::fs::File::create(dir.join("token-server.log")).unwrap();
        let python = super::python::python3().get_program().to_owned();
        let mut child = command_in(netns, python)
            .arg(script)
            .args([&key, &cert])
            .args([TOKEN_ISSUER, TOKEN_SERVICE, user])
            .args([&secret, &log])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("python3: run scripts/deps-python and put target/pyenv/bin first on PATH");
        // A failed read leaves the line empty, and the parse below stops the child.
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the token server did not start:\n{}",
                super::log_of(&dir.join("token-server.log"))
            )
        });
        TokenServer {
            host: format!("127.0.0.1:{port}"),
            log,
            child,
            netns,
        }
    }

    /// The realm the registry's challenge names.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.host)
    }

    /// Every request so far, as the server logged it: `method`, `auth` (`basic` or `none`),
    /// `admitted`, `scopes`, `service`.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// A token for `scope` with Basic `user` and `password`, if the server gives one.
    fn token(&self, scope: &str, user: &str, password: &str) -> Option<String> {
        let (status, body) = exchange_in(
            self.netns,
            &self.host,
            &format!(
                "GET /token?service={TOKEN_SERVICE}&scope={scope} HTTP/1.1\r\nHost: {}\r\n\
                 Authorization: {}\r\nConnection: close\r\n\r\n",
                self.host,
                basic(user, password)
            ),
        )?;
        let body: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 200).then(|| body["token"].as_str().map(str::to_string))?
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts a registry under `dir` that admits only `user` with `password` by htpasswd Basic
    /// auth, and waits until it answers `/v2/` with its Basic challenge.
    pub fn start(dir: &Path, user: &str, password: &str) -> Registry {
        Self::start_in(None, dir, user, password)
    }

    /// Like [`Registry::start`], in the network namespace of process `netns` (a daemon's
    /// [`Dockerd::netns_pid`]) if any.
    pub fn start_in(netns: Option<u32>, dir: &Path, user: &str, password: &str) -> Registry {
        available().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let htpasswd = dir.join("htpasswd");
        let out = Command::new(HTPASSWD)
            .args(["-Bbn", user, password])
            .output()
            .unwrap();
        assert!(out.status.success(), "htpasswd failed");
        std::fs::write(&htpasswd, &out.stdout).unwrap();
        let auth = format!(
            "  htpasswd:\n    realm: test-registry\n    path: {}\n",
            htpasswd.display()
        );
        Self::launch(dir, &auth, None, netns)
    }

    /// Starts a registry under `dir` with token auth, as ECR Public answers: its challenge
    /// names a token server that gives tokens only to `user` with `password`. Waits until the
    /// registry answers `/v2/` with its Bearer challenge. Both run in the network namespace of
    /// process `netns` (the daemon's), if given.
    pub fn start_with_tokens_in(
        netns: Option<u32>,
        dir: &Path,
        user: &str,
        password: &str,
    ) -> Registry {
        available().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let tokens = TokenServer::start(dir, user, password, netns);
        let auth = format!(
            "  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    \
             rootcertbundle: {}\n",
            tokens.realm(),
            dir.join("token.crt").display()
        );
        Self::launch(dir, &auth, Some(tokens), netns)
    }

    /// Runs the registry under `dir` with `auth` (the YAML under `auth:`), in `netns`'s
    /// network namespace if any (where any port is free: it is new).
    fn launch(dir: &Path, auth: &str, tokens: Option<TokenServer>, netns: Option<u32>) -> Registry {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let host = format!("127.0.0.1:{}", free_port());
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: info\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n\
                 http:\n  addr: {host}\n\
                 auth:\n{auth}",
                data = dir.join("data").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = command_in(netns, REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = Registry {
            host,
            dir: dir.to_path_buf(),
            child,
            tokens,
            netns,
        };
        eventually(
            Duration::from_secs(20),
            super::later(|| format!("the registry answers:\n{}", registry.log_text())),
            || (registry.status("/v2/") == Some(401)).then_some(()),
        );
        registry
    }

    /// The token server, for a registry started with [`Registry::start_with_tokens_in`].
    pub fn tokens(&self) -> &TokenServer {
        self.tokens.as_ref().expect("a registry with token auth")
    }

    /// The registry's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// The HTTP status of an unauthenticated GET of `path`, if the registry answers at all.
    pub fn status(&self, path: &str) -> Option<u16> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host
        );
        exchange_in(self.netns, &self.host, &request).map(|(status, _)| status)
    }

    /// Whether `repo:tag` is in the registry, asked with `user` and `password` (through the
    /// token server, for a token-auth registry).
    pub fn has(&self, repo: &str, tag: &str, user: &str, password: &str) -> bool {
        let authorization = match &self.tokens {
            None => basic(user, password),
            Some(tokens) => {
                match tokens.token(&format!("repository:{repo}:pull"), user, password) {
                    Some(token) => format!("Bearer {token}"),
                    None => return false,
                }
            }
        };
        let request = format!(
            "HEAD /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: {}\r\nAuthorization: \
             {authorization}\r\nAccept: application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
             application/vnd.docker.distribution.manifest.list.v2+json\r\nConnection: close\r\n\r\n",
            self.host
        );
        exchange_in(self.netns, &self.host, &request).is_some_and(|(status, _)| status == 200)
    }

    /// Pushes the daemon's base image as `HOST/repo:latest` with the docker CLI's own login
    /// (`user`, `password`) in a scratch `DOCKER_CONFIG`, which is removed afterwards: no
    /// credential for the registry is left behind. Returns the image's name.
    pub fn seed(&self, daemon: &Dockerd, repo: &str, user: &str, password: &str) -> String {
        let image = format!("{}/{repo}:latest", self.host);
        let config = self.dir.join("seed-docker-config");
        let docker = |args: &[&str], stdin: Option<&str>| {
            let mut cmd = daemon.docker();
            cmd.env("DOCKER_CONFIG", &config).args(args);
            cmd.stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            if let Some(text) = stdin {
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(text.as_bytes())
                    .unwrap();
            }
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "docker {}: {}{}",
                args.first().unwrap(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        docker(
            &["login", &self.host, "-u", user, "--password-stdin"],
            Some(password),
        );
        docker(&["tag", BASE_IMAGE, &image], None);
        docker(&["push", &image], None);
        docker(&["logout", &self.host], None);
        docker(&["rmi", &image], None);
        std::fs::remove_dir_all(&config).unwrap();
        assert!(self.has(repo, "latest", user, password), "the seeded image");
        image
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A docker CLI on `socket` logged in to `host` as `user` in that socket's `DOCKER_CONFIG`: the
/// client's own credentials, for the tests where the client's answer must win.
pub fn client_login(socket: &Path, host: &str, user: &str, password: &str) {
    let mut child = docker_on(socket)
        .args(["login", host, "-u", user, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A build context whose Dockerfile starts `FROM image`.
pub fn context(dir: &Path, name: &str, image: &str) -> PathBuf {
    let dockerfile = format!("FROM {image}\nRUN cat /etc/hostname > /dev/null || true\n");
    super::dockerd::context(dir, name, &dockerfile)
}

/// The audit log's registry records.
pub fn registry_records(audit: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "registry_credentials")
        .collect()
}

/// The build output's line with the helper's error, for the test's output.
pub fn error_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.contains("irsa-secrets"))
        .unwrap_or_default()
}
