//! A real registry for the registry-credential tests: Debian's `docker-registry` (distribution
//! 2.8) on 127.0.0.1 with htpasswd Basic auth, as ECR answers, seeded with an image pushed by the
//! docker CLI's own `docker login` and `docker push`, after which that login is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::dockerd::{docker_on, Dockerd, BASE_IMAGE};
use super::eventually;

/// Debian's distribution server (package docker-registry).
pub const REGISTRY: &str = "/usr/bin/docker-registry";
/// apache2-utils' htpasswd, for the bcrypt entry distribution requires.
pub const HTPASSWD: &str = "/usr/bin/htpasswd";

/// A running registry; dropped, it is killed.
pub struct Registry {
    /// `127.0.0.1:PORT`, the registry's host as image names spell it.
    pub host: String,
    dir: PathBuf,
    child: Child,
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

impl Registry {
    /// Starts a registry under `dir` that admits only `user` with `password`, and waits until it
    /// answers `/v2/` with its Basic challenge.
    pub fn start(dir: &Path, user: &str, password: &str) -> Registry {
        available().unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let htpasswd = dir.join("htpasswd");
        let out = Command::new(HTPASSWD)
            .args(["-Bbn", user, password])
            .output()
            .unwrap();
        assert!(out.status.success(), "htpasswd failed");
        std::fs::write(&htpasswd, &out.stdout).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: info\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n\
                 http:\n  addr: {host}\n\
                 auth:\n  htpasswd:\n    realm: test-registry\n    path: {htpasswd}\n",
                data = dir.join("data").display(),
                htpasswd = htpasswd.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new(REGISTRY)
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
        };
        eventually(
            Duration::from_secs(20),
            super::later(|| format!("the registry answers:\n{}", registry.log_text())),
            || (registry.status("/v2/") == Some(401)).then_some(()),
        );
        registry
    }

    /// The registry's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// The HTTP status of an unauthenticated GET of `path`, if the registry answers at all.
    pub fn status(&self, path: &str) -> Option<u16> {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(&self.host).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host
        )
        .ok()?;
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    /// Whether `repo:tag` is in the registry, asked with `user` and `password`.
    pub fn has(&self, repo: &str, tag: &str, user: &str, password: &str) -> bool {
        use base64::Engine;
        use std::io::{Read, Write};
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let Ok(mut conn) = std::net::TcpStream::connect(&self.host) else {
            return false;
        };
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            conn,
            "HEAD /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {basic}\r\n\
             Accept: application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n",
            self.host
        )
        .unwrap();
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
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
                use std::io::Write;
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
    use std::io::Write;
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
