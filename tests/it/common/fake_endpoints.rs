//! A scriptable plain HTTP/1.1 server on 127.0.0.1, standing in for the EKS Pod Identity agent,
//! an ECS credentials endpoint, IMDSv2, GitHub's OIDC token endpoint and ECR Public's API.
//! Written by hand on std's `TcpListener`, independent of the product's HTTP stack, it records
//! every request and answers what the test's handler says.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The value of header `name` (any case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// What the fake does with a request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answers `status` with `body` (`application/json`).
    Status(u16, String),
    /// Answers `status` with `body` and these extra headers.
    Headed(u16, Vec<(String, String)>, String),
    /// Waits, then answers as the inner reply does.
    Slow(Duration, Box<Reply>),
    /// Closes the connection without answering: the endpoint is down.
    Hangup,
}

/// Decides the reply to each request.
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// The fake server; stops accepting when dropped.
pub struct FakeEndpoint {
    port: u16,
    handler: Arc<Mutex<Handler>>,
    requests: Arc<Mutex<Vec<Request>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeEndpoint {
    /// A fake that refuses every call at once (HTTP 400: no retry) and records where it was
    /// asked: for checking which endpoint a call goes to.
    pub fn refusing() -> FakeEndpoint {
        Self::start(|_| Reply::Status(400, "{}".into()))
    }

    /// Listens on 127.0.0.1:0 and answers with `handler` until told otherwise.
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> FakeEndpoint {
        Self::start_on(0, handler)
    }

    /// Like [`FakeEndpoint::start`] on a given port: an endpoint that comes back where it was.
    pub fn start_on(
        port: u16,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> FakeEndpoint {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake = FakeEndpoint {
            port,
            handler: Arc::new(Mutex::new(Arc::new(handler))),
            requests: Arc::default(),
            connections: Arc::default(),
            stop: Arc::default(),
        };
        let (handler, requests, connections, stop) = (
            fake.handler.clone(),
            fake.requests.clone(),
            fake.connections.clone(),
            fake.stop.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                connections.fetch_add(1, Ordering::SeqCst);
                let (handler, requests) = (handler.clone(), requests.clone());
                std::thread::spawn(move || serve(stream, &handler, &requests));
            }
        });
        fake
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replaces the handler for the requests from now on.
    pub fn set(&self, handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Arc::new(handler);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// How many TCP connections were accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FakeEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Answers the requests of one connection (keep-alive) until the peer closes or a hangup.
fn serve(stream: TcpStream, handler: &Mutex<Handler>, requests: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        );
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let request = Request {
            method,
            target,
            headers,
        };
        if let Some(len) = request
            .header("content-length")
            .and_then(|l| l.parse::<usize>().ok())
        {
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        requests.lock().unwrap().push(request.clone());
        let handler = handler.lock().unwrap().clone();
        let mut reply = handler(&request);
        loop {
            match reply {
                Reply::Slow(wait, then) => {
                    std::thread::sleep(wait);
                    reply = *then;
                }
                Reply::Hangup => return,
                Reply::Status(status, body) => {
                    reply = Reply::Headed(status, Vec::new(), body);
                }
                Reply::Headed(status, extra, body) => {
                    let extra: String =
                        extra.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
                    let answer = format!(
                        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\n{extra}\r\n{body}",
                        if status < 400 { "OK" } else { "Error" },
                        body.len()
                    );
                    if writer.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

/// Credentials a fake issues, each value unique to the fake's test.
#[derive(Debug, Clone)]
pub struct FakeCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
    /// RFC 3339.
    pub expiration: String,
}

impl FakeCredentials {
    /// Fresh values expiring `life_secs` from now (negative: already expired).
    pub fn new(life_secs: i64) -> FakeCredentials {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let expiry = std::time::UNIX_EPOCH + Duration::from_secs((now + life_secs) as u64);
        let n = rand::random::<u64>();
        FakeCredentials {
            access_key_id: format!("ASIAFAKE{n:012X}"),
            secret_access_key: format!("fake-secret-access-key-{n:016x}"),
            token: format!("fake-session-token-{n:016x}-{}", "x".repeat(40)),
            expiration: humantime::format_rfc3339_seconds(expiry).to_string(),
        }
    }

    /// The container endpoint's answer (ECS and the Pod Identity agent).
    pub fn container_json(&self) -> String {
        serde_json::json!({
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.token,
            "Expiration": self.expiration,
            "AccountId": "123456789012",
        })
        .to_string()
    }

    /// IMDS's answer for a role.
    pub fn imds_json(&self) -> String {
        serde_json::json!({
            "Code": "Success",
            "LastUpdated": "2026-01-01T00:00:00Z",
            "Type": "AWS-HMAC",
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.token,
            "Expiration": self.expiration,
        })
        .to_string()
    }
}

/// The `X-Amz-Target` of ECR Public's `GetAuthorizationToken` (awsJson1.1; moto has no ECR
/// Public, so this fake stands in for it).
pub const ECR_PUBLIC_TOKEN_TARGET: &str = "SpencerFrontendService.GetAuthorizationToken";

/// ECR Public's API, for `AWS_ENDPOINT_URL_ECR_PUBLIC`: `GetAuthorizationToken` answers
/// `base64("AWS:" + password)`, valid for 12 hours, or `AccessDeniedException` once told to
/// refuse; every other call is a 400.
pub struct FakeEcrPublic {
    endpoint: FakeEndpoint,
    deny: Arc<AtomicBool>,
}

impl FakeEcrPublic {
    /// Starts answering with `password`.
    pub fn start(password: &str) -> FakeEcrPublic {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
        let deny = Arc::new(AtomicBool::new(false));
        let refusing = Arc::clone(&deny);
        let endpoint = FakeEndpoint::start(move |req: &Request| {
            if req.header("x-amz-target") != Some(ECR_PUBLIC_TOKEN_TARGET) {
                return Reply::Status(400, r#"{"__type":"UnknownOperationException"}"#.into());
            }
            if refusing.load(Ordering::SeqCst) {
                let body = r#"{"__type":"AccessDeniedException","message":"User: arn:aws:sts::123456789012:assumed-role/ci-builder/x is not authorized to perform: ecr-public:GetAuthorizationToken"}"#;
                return Reply::Headed(
                    400,
                    vec![("x-amzn-ErrorType".into(), "AccessDeniedException".into())],
                    body.into(),
                );
            }
            let expires = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 12 * 3600;
            Reply::Status(
                200,
                serde_json::json!({
                    "authorizationData": {"authorizationToken": token, "expiresAt": expires}
                })
                .to_string(),
            )
        });
        FakeEcrPublic { endpoint, deny }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.endpoint.base()
    }

    /// Whether `GetAuthorizationToken` answers AccessDeniedException from now on.
    pub fn deny(&self, deny: bool) {
        self.deny.store(deny, Ordering::SeqCst);
    }

    /// How many `GetAuthorizationToken` calls arrived (each SDK attempt counts).
    pub fn calls(&self) -> usize {
        self.endpoint
            .requests()
            .iter()
            .filter(|r| r.header("x-amz-target") == Some(ECR_PUBLIC_TOKEN_TARGET))
            .count()
    }
}
