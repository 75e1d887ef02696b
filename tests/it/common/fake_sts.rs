//! A scripted STS on loopback for what moto cannot do: every AssumeRoleWithWebIdentity error
//! code, short-lived credentials, slow and hanging answers, throttling, bad XML. It runs on its
//! own thread and runtime, so tests of any flavour (and blocking ones) keep it serving; it counts
//! calls and records what it issued, for the tests to watch as radioactive.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// What the fake answers to one call.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Fresh credentials expiring after the given time, after an optional delay.
    Issue {
        /// Lifetime of the credentials.
        expires_in: Duration,
        /// Wait this long before answering.
        delay: Duration,
    },
    /// An `<ErrorResponse>` with this HTTP status, code and message.
    Error {
        /// HTTP status.
        status: u16,
        /// STS error code.
        code: &'static str,
        /// Message text.
        message: String,
    },
    /// Never answers (the connection stays open).
    Hang,
    /// HTTP 200 with a body that is not XML.
    BadXml,
}

impl Reply {
    /// Credentials for an hour, at once.
    pub fn ok() -> Reply {
        Reply::expiring(Duration::from_secs(3600))
    }

    /// Credentials expiring after `expires_in`, at once.
    pub fn expiring(expires_in: Duration) -> Reply {
        Reply::Issue {
            expires_in,
            delay: Duration::ZERO,
        }
    }

    /// The error STS gives for `code`, with its documented HTTP status.
    pub fn error(code: &'static str) -> Reply {
        let status = match code {
            "IDPRejectedClaim" | "AccessDenied" | "RegionDisabledException" => 403,
            "Throttling" => 400,
            "ServiceUnavailable" => 503,
            "InternalFailure" => 500,
            _ => 400,
        };
        Reply::Error {
            status,
            code,
            message: format!("fake STS says {code}"),
        }
    }
}

/// Credentials the fake issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCreds {
    /// `AccessKeyId`.
    pub access_key_id: String,
    /// `SecretAccessKey`.
    pub secret_access_key: String,
    /// `SessionToken`.
    pub session_token: String,
    /// `Expiration`, as sent.
    pub expiration: String,
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    default: Option<Reply>,
    calls: usize,
    issued: Vec<FakeCreds>,
    requests: Vec<HashMap<String, String>>,
}

/// The running fake; stops on drop.
pub struct FakeSts {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeSts {
    /// Starts on a free loopback port, answering `default` to every call not scripted.
    pub fn start(default: Reply) -> FakeSts {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            default: Some(default),
            ..State::default()
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(listener, shared, stopped));
        });
        FakeSts {
            url,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Queues replies for the next calls, before the default applies again.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Changes the answer to unscripted calls.
    pub fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = Some(reply);
    }

    /// Calls received so far (each attempt counts).
    pub fn calls(&self) -> usize {
        self.state.lock().unwrap().calls
    }

    /// Every credential issued so far, oldest first.
    pub fn issued(&self) -> Vec<FakeCreds> {
        self.state.lock().unwrap().issued.clone()
    }

    /// The form parameters of every call (they include the token: never print them whole).
    pub fn requests(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for FakeSts {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<Mutex<State>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            _ = &mut stopped => break,
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| answer(req, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    connections.abort_all();
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let form = parse_form(&String::from_utf8_lossy(&body));
    let reply = {
        let mut s = state.lock().unwrap();
        s.calls += 1;
        s.requests.push(form.clone());
        s.script.pop_front().or_else(|| s.default.clone()).unwrap()
    };
    let request_id = format!("fake-{:08x}", rand_u64() as u32);
    let (status, xml) = match reply {
        Reply::Hang => std::future::pending().await,
        Reply::BadXml => (200, "this is not <xml".to_string()),
        Reply::Error {
            status,
            code,
            message,
        } => {
            let who = if status >= 500 { "Receiver" } else { "Sender" };
            (
                status,
                format!(
                    "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
                     <Type>{who}</Type><Code>{code}</Code><Message>{message}</Message></Error>\
                     <RequestId>{request_id}</RequestId></ErrorResponse>"
                ),
            )
        }
        Reply::Issue { expires_in, delay } => {
            tokio::time::sleep(delay).await;
            let creds = mint(expires_in);
            state.lock().unwrap().issued.push(creds.clone());
            let session = form.get("RoleSessionName").cloned().unwrap_or_default();
            let role = form
                .get("RoleArn")
                .and_then(|a| a.rsplit('/').next())
                .unwrap_or_default()
                .to_string();
            (
                200,
                format!(
                    "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                     <AssumeRoleWithWebIdentityResult><Credentials>\
                     <AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey>\
                     <SessionToken>{}</SessionToken><Expiration>{}</Expiration></Credentials>\
                     <SubjectFromWebIdentityToken>system:serviceaccount:ci:runner</SubjectFromWebIdentityToken>\
                     <AssumedRoleUser><AssumedRoleId>AROAFAKE:{session}</AssumedRoleId>\
                     <Arn>arn:aws:sts::123456789012:assumed-role/{role}/{session}</Arn></AssumedRoleUser>\
                     <PackedPolicySize>6</PackedPolicySize><Provider>fake</Provider>\
                     <Audience>sts.amazonaws.com</Audience></AssumeRoleWithWebIdentityResult>\
                     <ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>\
                     </AssumeRoleWithWebIdentityResponse>",
                    creds.access_key_id, creds.secret_access_key, creds.session_token, creds.expiration
                ),
            )
        }
    };
    Ok(hyper::Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .header("x-amzn-requestid", request_id)
        .body(Full::new(Bytes::from(xml)))
        .unwrap())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn mint(expires_in: Duration) -> FakeCreds {
    let chunk = || format!("{:016x}", rand_u64());
    FakeCreds {
        access_key_id: format!("ASIAFAKE{}", &chunk()[..12]).to_uppercase(),
        secret_access_key: format!("fakeSecret/{}+{}", chunk(), chunk()),
        session_token: format!("FakeSessionToken{}{}{}//", chunk(), chunk(), chunk()),
        expiration: humantime::format_rfc3339_millis(SystemTime::now() + expires_in).to_string(),
    }
}

/// Decodes an `application/x-www-form-urlencoded` body.
fn parse_form(body: &str) -> HashMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    };
    body.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}
