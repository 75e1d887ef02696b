//! Test harness: runs the real `irsa-secrets` binary on private sockets in temp dirs, at trace
//! log level, and checks on teardown that no secret value reached its output.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use irsa_secrets::secret::SecretValue;
use irsa_secrets::wire::proto::secrets::secrets_client::SecretsClient;

/// The role ARN the tests' IRSA identity names.
pub const ARN: &str = "arn:aws:iam::123456789012:role/ci-builder";

/// The five ids credentials are served under (STS and the credential identities).
pub const CREDENTIAL_IDS: [&str; 5] = [
    "aws-credentials",
    "aws-access-key-id",
    "aws-secret-access-key",
    "aws-session-token",
    "aws-credentials-expiration",
];

/// A free loopback port, for a server that takes its address from its arguments or
/// configuration rather than handing back the one it bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 exchange on `host` (`request` ends with its blank line and asks
/// `Connection: close`): the status and the body, if the server answers within 5 s.
pub fn http_exchange(host: &str, request: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(host).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.get(9..12)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// Hex sha256, as `sha256sum` prints it inside a build step.
pub fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The last 40 lines of a log, for failure messages.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A process's resident set, in bytes, from /proc.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// How many descriptors a process holds, from /proc.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_irsa-secrets")
}

/// A `Command` for the binary with a clean identity environment and trace logging.
pub fn command() -> Command {
    command_for(Path::new(bin()))
}

/// Like [`command`], for a copy of the binary at `program` (e.g. one another user may run:
/// the build tree may sit in a directory only root can enter).
pub fn command_for(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_REGION",
        "IRSA_SECRETS_MOCK",
        "IRSA_SECRETS_LISTEN",
        "IRSA_SECRETS_STS",
        "AWS_ENDPOINT_URL_STS",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER",
        "AWS_ENDPOINT_URL_SSM",
        "AWS_ENDPOINT_URL_ECR",
        "AWS_ENDPOINT_URL_ECR_PUBLIC",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "trace");
    cmd
}

/// Values that must never appear in any output, shared by everything a test starts.
#[derive(Clone, Default)]
pub struct Radioactive(Arc<Mutex<Vec<Vec<u8>>>>);

impl Radioactive {
    /// Adds a value to watch for (ignores values too short to be meaningful).
    pub fn watch(&self, value: &[u8]) {
        if value.len() >= 8 {
            self.0.lock().unwrap().push(value.to_vec());
        }
    }

    /// Panics if `text` holds any watched value.
    pub fn assert_absent(&self, what: &str, text: &[u8]) {
        let values = self.0.lock().unwrap();
        // The NFA builds in linear time, also for the 600 KiB values some tests watch.
        let matcher = aho_corasick::AhoCorasick::builder()
            .kind(Some(aho_corasick::AhoCorasickKind::NoncontiguousNFA))
            .build(values.iter())
            .unwrap();
        if let Some(m) = matcher.find(text) {
            panic!("a secret value ({} bytes) leaked into {what}", m.len());
        }
    }
}

/// A helper process serving on a socket in its own temp dir.
pub struct Helper {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub radioactive: Radioactive,
}

impl Helper {
    /// Starts `irsa-secrets serve --listen unix://DIR/helper.sock ARGS...` and waits for the socket.
    pub fn serve(
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        radioactive: &Radioactive,
    ) -> Helper {
        let socket = dir.join("helper.sock");
        let mut cmd = command();
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()));
        cmd.args(args);
        Self::spawn(cmd, socket, dir, env, radioactive)
    }

    /// Spawns `cmd`, logging to DIR/helper-N.log, and waits for `socket` to accept connections.
    pub fn spawn(
        mut cmd: Command,
        socket: PathBuf,
        dir: &Path,
        env: &[(&str, &str)],
        radioactive: &Radioactive,
    ) -> Helper {
        let log = dir.join(format!(
            "helper-{}.log",
            std::process::id() as u64 * 1000 + rand_suffix()
        ));
        let log_file = std::fs::File::create(&log).unwrap();
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::null()).stderr(log_file);
        let child = cmd.spawn().expect("start irsa-secrets");
        let mut helper = Helper {
            child: Some(child),
            socket,
            log,
            radioactive: radioactive.clone(),
        };
        helper.wait_ready();
        helper
    }

    fn wait_ready(&mut self) {
        let Helper {
            child, socket, log, ..
        } = self;
        let child = child.as_mut().unwrap();
        eventually(
            Duration::from_secs(20),
            later(|| format!("the helper listens; its log:\n{}", log_of(log))),
            || {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "helper exited with {status} before listening:\n{}",
                        log_of(log)
                    );
                }
                std::os::unix::net::UnixStream::connect(&*socket)
                    .is_ok()
                    .then_some(())
            },
        );
    }

    /// A Secrets client on the helper's socket.
    pub async fn client(&self) -> Secrets {
        secrets(&self.socket).await
    }

    /// Fetches `id`, recording the value as radioactive.
    pub async fn get(&self, client: &mut Secrets, id: &str) -> Result<SecretValue, tonic::Status> {
        let r = get_secret(client, id).await;
        if let Ok(v) = &r {
            self.radioactive.watch(v.expose());
        }
        r
    }

    /// The helper's log so far, checked for watched values first: tests print it in their
    /// assertion messages, which must not show a value the teardown check would catch later.
    pub fn log_text(&self) -> String {
        let text = log_of(&self.log);
        self.radioactive
            .assert_absent("the helper's log", text.as_bytes());
        text
    }

    /// Sends SIGTERM and waits for exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.terminate_within(Duration::from_secs(10)).0
    }

    /// Sends SIGTERM and waits up to `limit` for the exit: the status, and how long it took.
    pub fn terminate_within(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let Helper { child, log, .. } = self;
        let running = child.as_mut().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(running.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let started = Instant::now();
        // Past the limit the panic leaves the child in place, for Drop to kill.
        let status = eventually(
            limit,
            later(|| {
                format!(
                    "the helper exits on SIGTERM; its log:\n{}",
                    tail(&log_of(log))
                )
            }),
            || running.try_wait().unwrap(),
        );
        let took = started.elapsed();
        *child = None;
        (status, took)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read(&self.log).unwrap_or_default();
        if !std::thread::panicking() {
            self.radioactive
                .assert_absent("the helper's trace log", &log);
        }
    }
}

/// A log file's text so far (empty if it is not there yet).
pub fn log_of(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A copy of the binary in `dir`, for a test that runs it as another user (the build tree may
/// be root's alone), once it can run: a fork by another test thread while the copy's write
/// descriptor was open holds that descriptor until the child execs, and running the copy fails
/// with ETXTBSY ("Text file busy") until then.
pub fn runnable_copy(dir: &Path) -> PathBuf {
    let program = dir.join("irsa-secrets");
    std::fs::copy(bin(), &program).unwrap();
    eventually(
        Duration::from_secs(10),
        "the copied binary can run",
        || match Command::new(&program).arg("--version").output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => None,
            other => Some(other.unwrap()),
        },
    );
    program
}

/// Runs the binary to completion and checks its output for watched values.
pub fn run(cmd: &mut Command, radioactive: &Radioactive) -> Output {
    let out = cmd.output().expect("run irsa-secrets");
    radioactive.assert_absent("stdout", &out.stdout);
    radioactive.assert_absent("stderr", &out.stderr);
    out
}

/// The output of `child` once it exits within `limit`. Past that the child is killed and the
/// test fails saying `what` did not finish, with what the child printed and then `context()`
/// (e.g. a log of the process it was talking to).
pub fn output_within(
    child: Child,
    limit: Duration,
    what: &str,
    context: impl Fn() -> String,
) -> Output {
    let child = std::cell::RefCell::new(child);
    eventually(
        limit,
        later(|| {
            let mut child = child.borrow_mut();
            let _ = child.kill();
            let _ = child.wait();
            let mut printed = Vec::new();
            if let Some(mut pipe) = child.stdout.take() {
                let _ = std::io::Read::read_to_end(&mut pipe, &mut printed);
            }
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_end(&mut pipe, &mut printed);
            }
            format!(
                "{what} finishes (killed now); it printed:\n{}\n{}",
                String::from_utf8_lossy(&printed),
                context()
            )
        }),
        || child.borrow_mut().try_wait().unwrap(),
    );
    child.into_inner().wait_with_output().unwrap()
}

/// Runs `irsa-secrets probe --socket unix://SOCKET IDS...`: (success, stdout then stderr).
pub fn probe(socket: &Path, ids: &[&str], radioactive: &Radioactive) -> (bool, String) {
    let out = run(
        command()
            .arg("probe")
            .arg("--socket")
            .arg(format!("unix://{}", socket.display()))
            .args(ids),
        radioactive,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The line `probe` prints for a served value: its size and SHA-256.
pub fn probed(id: &str, value: &[u8]) -> String {
    format!("{id}: {} bytes, sha256 {}", value.len(), sha(value))
}

/// A JWT with the given lifetime window (seconds relative to now), audience sts.amazonaws.com.
pub fn token(exp_in: i64, nbf_in: i64) -> String {
    token_with(exp_in, nbf_in, "sts.amazonaws.com")
}

/// A JWT with the given lifetime window and audience.
pub fn token_with(exp_in: i64, nbf_in: i64, aud: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({
        "iss": "https://oidc.eks.eu-west-1.amazonaws.com/id/TEST",
        "sub": "system:serviceaccount:ci:runner",
        "aud": [aud],
        "exp": now + exp_in,
        "nbf": now + nbf_in,
        "iat": now + nbf_in,
        "jti": format!("{:016x}", rand_suffix() ^ now as u64),
    });
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"test"}"#);
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let s = URL_SAFE_NO_PAD.encode(format!("signature-{}", rand_suffix()));
    format!("{h}.{p}.{s}")
}

/// A kubelet-style projected token directory: `token -> ..data/token`, `..data -> ..TS`.
pub struct Projected {
    pub dir: PathBuf,
    generation: u64,
}

impl Projected {
    /// Creates the layout with an initial token.
    pub fn new(dir: &Path, token: &str) -> Projected {
        std::fs::create_dir_all(dir).unwrap();
        let mut p = Projected {
            dir: dir.to_path_buf(),
            generation: 0,
        };
        p.swap(token);
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        p
    }

    /// The path builds read.
    pub fn token_path(&self) -> PathBuf {
        self.dir.join("token")
    }

    /// Rotates as kubelet's atomic writer does: new dir, new `..data_tmp` link renamed over
    /// `..data`, old dir removed.
    pub fn swap(&mut self, token: &str) {
        self.generation += 1;
        let new = format!("..gen{}", self.generation);
        let new_dir = self.dir.join(&new);
        std::fs::create_dir(&new_dir).unwrap();
        std::fs::write(new_dir.join("token"), token).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&new, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if self.generation > 1 {
            std::fs::remove_dir_all(self.dir.join(format!("..gen{}", self.generation - 1)))
                .unwrap();
        }
    }
}
pub mod bollard;
pub mod dockerd;
#[macro_use]
pub mod engine;
pub mod fake_daemon;
pub mod fake_endpoints;
pub mod fake_sts;
pub mod h2_peer;
pub mod image;
pub mod moto;
pub mod python;
pub mod registry;
pub mod session_client;
pub mod sts_build;
pub mod tunnel_io;

/// A Secrets client on the tests' own HTTP/2 stack (hyper's client with its default settings),
/// never the crate's `wire::client`: a framing bug shared by the helper's client and server
/// cannot pass here by being on both ends.
pub type Secrets = SecretsClient<TonicPeer>;

/// Connects a [`Secrets`] client to the helper's socket at `path`.
pub async fn secrets(path: &Path) -> Secrets {
    let peer = TonicPeer(session_client::connect(path).await);
    SecretsClient::with_origin(peer, http::Uri::from_static("http://localhost"))
}

/// The tests' own HTTP/2 connection ([`tunnel_io::Peer`]) taking tonic's request bodies.
#[derive(Clone)]
pub struct TonicPeer(tunnel_io::Peer);

impl tower::Service<http::Request<tonic::body::Body>> for TonicPeer {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = <tunnel_io::Peer as tower::Service<http::Request<tunnel_io::Body>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), hyper::Error>> {
        tower::Service::<http::Request<tunnel_io::Body>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        use http_body_util::BodyExt;
        self.0
            .call(req.map(|body| body.map_err(Into::into).boxed_unsync()))
    }
}

/// Asks for one secret through `client`.
pub async fn get_secret(client: &mut Secrets, id: &str) -> Result<SecretValue, tonic::Status> {
    let request = irsa_secrets::wire::proto::secrets::GetSecretRequest {
        id: id.to_string(),
        annotations: Default::default(),
    };
    Ok(client.get_secret(request).await?.into_inner().into_value())
}

/// A provider serving the mock identity under the default ids.
pub fn mock_provider() -> irsa_secrets::provider::Provider {
    irsa_secrets::provider::Provider::new(vec![Arc::new(irsa_secrets::source::mock::Mock::new(
        irsa_secrets::source::IdentityIds::default(),
        "sts.amazonaws.com".into(),
        Duration::from_secs(300),
        None,
    ))])
}

/// Polls `condition` every 20 ms until it gives a value or `timeout` has passed; then panics
/// saying `what` never happened. The one wait for things the tests cannot be told about.
/// `what` is only formatted on failure: [`later`] builds it from what is known then.
pub fn eventually<T>(
    timeout: Duration,
    what: impl std::fmt::Display,
    mut condition: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = condition() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`eventually`] for conditions that must await.
pub async fn eventually_async<T, F: std::future::Future<Output = Option<T>>>(
    timeout: Duration,
    what: impl std::fmt::Display,
    mut condition: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = condition().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A failure message for [`eventually`] made by `make` when a wait fails, not before: for
/// what only exists then (a log's last lines, a killed child's output). Made once, however
/// often the panic is shown.
pub fn later<F: Fn() -> String>(make: F) -> Later<F> {
    Later {
        make,
        made: std::cell::OnceCell::new(),
    }
}

/// See [`later`].
pub struct Later<F> {
    make: F,
    made: std::cell::OnceCell<String>,
}

impl<F: Fn() -> String> std::fmt::Display for Later<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.made.get_or_init(&self.make))
    }
}
