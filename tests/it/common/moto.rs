//! moto (`moto_server` from PyPI, installed by scripts/deps-python into target/pyenv) on a free
//! loopback port, started and stopped by the test: a real STS + IAM + S3 to prove served
//! credentials sign requests.
//!
//! moto's quirks (shared/docs/anchors.md section 4): AssumeRoleWithWebIdentity validates nothing
//! and must be called before auth enforcement is switched on (it answers 500 after); S3 with
//! enforcement checks the key, the session token, the SigV4 signature and the role's policies,
//! so the role must exist in IAM with a policy allowing S3.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// A running `moto_server`; killed on drop, also when the test panics.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: PathBuf,
}

/// Credentials moto issued, as its `/moto-api/data.json` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// `AccessKeyId`.
    pub access_key_id: String,
    /// `SecretAccessKey`.
    pub secret_access_key: String,
    /// `SessionToken`.
    pub session_token: String,
    /// The role session name the request carried.
    pub session_name: String,
}

/// An HTTP answer.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Moto {
    /// Starts `moto_server -H 127.0.0.1 -p PORT` logging to DIR/moto.log and waits until it
    /// answers.
    pub fn start(dir: &Path) -> Moto {
        let port = super::free_port();
        let log = dir.join("moto.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // The request recorder's file (moto's default is in the working directory).
            .env("MOTO_RECORDER_FILEPATH", dir.join("moto-recording.jsonl"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect(
                "moto_server is not on PATH: run scripts/deps-python and put target/pyenv/bin \
                 first on PATH (scripts/test does both)",
            );
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let Moto { child, log, .. } = &mut moto;
        super::eventually(
            Duration::from_secs(60),
            super::later(|| format!("moto_server listens; its log:\n{}", super::log_of(log))),
            || {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("moto_server exited with {status}:\n{}", super::log_of(log));
                }
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .is_ok()
                    .then_some(())
            },
        );
        moto
    }

    /// Stops moto: every service it plays is gone from now on.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// moto's log so far.
    pub fn log_text(&self) -> String {
        super::log_of(&self.log)
    }

    /// An IAM query call; moto routes on the Authorization header's service, which it does not
    /// check before enforcement is on.
    async fn iam(&self, params: &[(&str, &str)]) {
        let body = form(params);
        let req = http::Request::post(format!("{}/", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/iam/aws4_request, \
                 SignedHeaders=host, Signature=00",
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let answer = send(req).await;
        assert_eq!(answer.status, 200, "IAM {params:?}: {}", answer.text());
    }

    /// Creates role `name` (account 123456789012) with an inline policy allowing all of S3.
    pub async fn create_role_with_s3_access(&self, name: &str) {
        self.iam(&[
            ("Action", "CreateRole"),
            ("Version", "2010-05-08"),
            ("RoleName", name),
            (
                "AssumeRolePolicyDocument",
                r#"{"Version":"2012-10-17","Statement":[]}"#,
            ),
        ])
        .await;
        self.iam(&[
            ("Action", "PutRolePolicy"),
            ("Version", "2010-05-08"),
            ("RoleName", name),
            ("PolicyName", "s3"),
            (
                "PolicyDocument",
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#,
            ),
        ])
        .await;
    }

    /// Creates an S3 bucket (before enforcement is on).
    pub async fn create_bucket(&self, name: &str) {
        let req = http::Request::put(format!("{}/{name}", self.url))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = send(req).await;
        assert_eq!(answer.status, 200, "create bucket: {}", answer.text());
    }

    /// Switches auth enforcement on: only after the STS call, which moto cannot serve with it.
    pub async fn enforce_auth(&self) {
        let req = http::Request::post(format!("{}/moto-api/reset-auth", self.url))
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"0")))
            .unwrap();
        let answer = send(req).await;
        assert_eq!(answer.status, 200, "reset-auth: {}", answer.text());
    }

    /// Every credential moto's STS issued.
    pub async fn issued(&self) -> Vec<Issued> {
        let req = http::Request::get(format!("{}/moto-api/data.json", self.url))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = send(req).await;
        let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        let field = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or_default().to_string();
        json["sts"]["AssumedRole"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| Issued {
                access_key_id: field(r, "access_key_id"),
                secret_access_key: field(r, "secret_access_key"),
                session_token: field(r, "session_token"),
                session_name: field(r, "session_name"),
            })
            .collect()
    }

    /// An S3 request signed with SigV4 by `creds` (access key, secret key, session token).
    pub async fn s3(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        creds: (&str, &str, &str),
    ) -> Answer {
        use aws_sigv4::http_request::{sign, PayloadChecksumKind, SignableBody, SignableRequest};
        use aws_sigv4::http_request::{SigningSettings, UriPathNormalizationMode};
        let url = format!("{}{path}", self.url);
        let identity = aws_credential_types::Credentials::new(
            creds.0,
            creds.1,
            Some(creds.2.to_string()),
            None,
            "irsa-secrets-test",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let host = self.url.trim_start_matches("http://").to_string();
        let headers = [("host", host.as_str())];
        let signable = SignableRequest::new(
            method,
            &url,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("host", host)
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap();
        instructions.apply_to_request_http1x(&mut req);
        send(req).await
    }
}

impl Moto {
    /// SDK settings for calls of the test's own to moto in `region` (fake static keys: moto
    /// checks none before enforcement is on), to create what the helper then reads.
    pub fn sdk_config(&self, region: &str) -> aws_types::SdkConfig {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        aws_types::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_types::region::Region::new(region.to_string()))
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(
                    aws_credential_types::Credentials::new("test", "test", None, None, "test"),
                ),
            )
            .http_client(http)
            .endpoint_url(&self.url)
            .build()
    }

    /// A Secrets Manager client on moto in `region`.
    pub fn secrets_manager(&self, region: &str) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.sdk_config(region))
    }

    /// A Parameter Store client on moto in `region`.
    pub fn ssm(&self, region: &str) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::new(&self.sdk_config(region))
    }

    /// Starts moto's request recorder afresh: only requests from now on are recorded.
    pub async fn start_recording(&self) {
        for action in ["reset-recording", "start-recording"] {
            let req = http::Request::post(format!("{}/moto-api/recorder/{action}", self.url))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let answer = send(req).await;
            assert_eq!(answer.status, 200, "{action}: {}", answer.text());
        }
    }

    /// The JSON-protocol calls recorded since [`Moto::start_recording`] whose `X-Amz-Target`
    /// is `target` (e.g. `secretsmanager.GetSecretValue`), as their request bodies.
    pub async fn recorded(&self, target: &str) -> Vec<serde_json::Value> {
        use base64::Engine as _;
        let req = http::Request::get(format!("{}/moto-api/recorder/download-recording", self.url))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = send(req).await;
        assert_eq!(answer.status, 200, "download-recording: {}", answer.text());
        answer
            .text()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|entry| {
                entry["headers"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .any(|(k, v)| k.eq_ignore_ascii_case("x-amz-target") && v == target)
            })
            .map(|entry| {
                let body = entry["body"].as_str().unwrap_or_default();
                let body = if entry["body_encoded"] == true {
                    base64::engine::general_purpose::STANDARD
                        .decode(body)
                        .unwrap_or_default()
                } else {
                    body.as_bytes().to_vec()
                };
                serde_json::from_slice(&body).unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `application/x-www-form-urlencoded` encoding.
fn form(params: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Sends one HTTP/1.1 request on a new connection to its URI's authority.
pub async fn send(req: http::Request<Full<Bytes>>) -> Answer {
    let authority = req.uri().authority().unwrap().to_string();
    let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    if !parts.headers.contains_key("host") {
        parts.headers.insert("host", authority.parse().unwrap());
    }
    // hyper's client wants origin-form paths.
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap();
    let response = sender
        .send_request(http::Request::from_parts(parts, body))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer { status, body }
}
