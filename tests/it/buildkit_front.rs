//! The BuildKit API front door through the real binary, against a fake buildkitd on a unix
//! socket: sessions get the helper's secrets; HTTP/1.1 clients, a dead daemon, a daemon that
//! dies mid-session and garbage on the socket each get a clear result, and the helper carries on.

#![allow(clippy::result_large_err)] // tonic fixes body errors to `Status`.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use common::fake_daemon::{daemon_script, fake_daemon, FakeBuildkitd, Observed};
use common::session_client::{client_session, connect};
use common::tunnel_io;
use common::{command, token, Helper, Radioactive, ARN};
use irsa_secrets::front::grpc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::Code;
use tower::{Service, ServiceExt};

/// Opens a build session named `id` through the helper and waits for the daemon's report of
/// it, which must show the role ARN the helper serves; returns the report and the session.
async fn session_through(
    helper: &Path,
    id: &str,
    observed: &mut mpsc::UnboundedReceiver<Observed>,
) -> (Observed, tokio::task::JoinHandle<()>) {
    let control = connect(helper).await;
    let session = tokio::spawn(client_session(
        control,
        id.into(),
        None,
        Arc::new(AtomicUsize::new(0)),
    ));
    let o = tokio::time::timeout(Duration::from_secs(30), observed.recv())
        .await
        .expect("the daemon reports the session")
        .unwrap();
    assert_eq!(o.session, id);
    assert_eq!(o.role_arn.as_deref(), Ok(ARN.as_bytes()));
    (o, session)
}

fn start_helper(dir: &Path, daemon: &Path, r: &Radioactive, token_file: &Path) -> Helper {
    let socket = dir.join("helper.sock");
    let mut cmd = command();
    cmd.arg("proxy")
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()));
    cmd.arg("--upstream")
        .arg(format!("unix://{}", daemon.display()));
    let tf = token_file.display().to_string();
    Helper::spawn(
        cmd,
        socket,
        dir,
        &[("AWS_WEB_IDENTITY_TOKEN_FILE", &tf), ("AWS_ROLE_ARN", ARN)],
        r,
    )
}

/// A helper (with a token and the role ARN watched as radioactive) fronting a fake buildkitd
/// that reports each session to `observed`. Fields drop in order: the helper (checking its log)
/// before the temp dir.
struct Front {
    helper: Helper,
    daemon: Option<FakeBuildkitd>,
    daemon_sock: PathBuf,
    report: mpsc::UnboundedSender<Observed>,
    observed: mpsc::UnboundedReceiver<Observed>,
    _dir: tempfile::TempDir,
}

impl Front {
    fn start() -> Front {
        let dir = tempfile::tempdir().unwrap();
        let r = Radioactive::default();
        let t = token(3600, -10);
        r.watch(t.as_bytes());
        r.watch(ARN.as_bytes());
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, &t).unwrap();
        let daemon_sock: PathBuf = dir.path().join("buildkitd.sock");
        let (report, observed) = mpsc::unbounded_channel();
        let daemon = FakeBuildkitd::start(&daemon_sock, daemon_script(report.clone()));
        let helper = start_helper(dir.path(), &daemon_sock, &r, &token_file);
        Front {
            helper,
            daemon: Some(daemon),
            daemon_sock,
            report,
            observed,
            _dir: dir,
        }
    }

    /// A session named `id` through the helper, checked as [`session_through`] does.
    async fn session(&mut self, id: &str) -> (Observed, tokio::task::JoinHandle<()>) {
        session_through(&self.helper.socket, id, &mut self.observed).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_through_the_buildkit_front_gets_the_helpers_secrets() {
    let mut f = Front::start();
    // The daemon's GetSecret calls get the helper's values.
    let (o, session) = f.session("bk-1").await;
    assert_eq!(o.probe, Code::NotFound);
    assert!(o.health);
    session.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_on_a_buildkit_front_is_told_to_use_buildctl() {
    let f = Front::start();
    let mut raw = tokio::net::UnixStream::connect(&f.helper.socket)
        .await
        .unwrap();
    raw.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = raw.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("buildctl --addr"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_a_valid_preface_ends_that_connection_and_the_helper_carries_on() {
    let mut f = Front::start();
    let mut raw = tokio::net::UnixStream::connect(&f.helper.socket)
        .await
        .unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff garbage")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut sink))
        .await
        .expect("the helper closes a broken connection");
    // It carries on: the next session is served.
    let (_, session) = f.session("after-garbage").await;
    session.abort();
}

/// One test, as each step needs the one before: the session open when the daemon dies, the
/// dead daemon before it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_dies_mid_session_ends_it_and_is_named_until_it_is_back() {
    let mut f = Front::start();
    let (_, session) = f.session("bk-1").await;
    // The daemon dies mid-session: the client's session ends; new clients get Unavailable
    // with a message naming the daemon; once it is back, sessions work again.
    drop(f.daemon.take());
    std::fs::remove_file(&f.daemon_sock).unwrap();
    tokio::time::timeout(Duration::from_secs(15), session)
        .await
        .expect("the client's session ends with its daemon")
        .ok();
    let mut fresh = connect(&f.helper.socket).await;
    let req = tunnel_io::call("/moby.buildkit.v1.Control/ListWorkers", b"");
    let res = fresh.ready().await.unwrap().call(req).await.unwrap();
    let status = tonic::Status::from_header_map(res.headers()).expect("a trailers-only gRPC error");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("buildkitd.sock")
            && status.message().contains("cannot be reached"),
        "{}",
        status.message()
    );

    f.daemon = Some(FakeBuildkitd::start(
        &f.daemon_sock,
        daemon_script(f.report.clone()),
    ));
    let (_, again) = f.session("bk-2").await;
    again.abort();
}

/// The helper's resident memory.
fn rss_bytes(helper: &Helper) -> u64 {
    common::rss(helper.child.as_ref().unwrap().id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_message_over_16_mib_is_refused_without_buffering_it() {
    use http_body_util::BodyExt;
    let mut f = Front::start();
    // Sessions before and after the hostile one are served.
    let (_, before) = f.session("before").await;
    let baseline = rss_bytes(&f.helper);

    // A peer opens a session and announces a 4 GiB message, then streams 256 MiB of it.
    const SENT: usize = 256 << 20;
    let (tx, rx) = mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>(4);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = http::Request::post(format!("http://localhost{}", grpc::SESSION_PATH))
        .header("content-type", "application/grpc")
        .header(irsa_secrets::session::SESSION_UUID, "hostile")
        .body(common::tunnel_io::boxed(body))
        .unwrap();
    let mut control = connect(&f.helper.socket).await;
    let res = control.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let feeder = tokio::spawn(async move {
        let header = bytes::Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff]);
        let chunk = bytes::Bytes::from(vec![0x0a; 1 << 20]);
        let mut sent = 0;
        let frames = std::iter::once(header).chain(std::iter::repeat_n(chunk, SENT >> 20));
        for frame in frames {
            sent += frame.len();
            if tx.send(Ok(http_body::Frame::data(frame))).await.is_err() {
                break;
            }
        }
        sent
    });
    let trailers = tokio::time::timeout(Duration::from_secs(60), async {
        let mut body = res.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(trailers) = frame
                .expect("the answer ends with trailers")
                .into_trailers()
            {
                return trailers;
            }
        }
        panic!("the answer ended without trailers");
    })
    .await
    .expect("the helper answers the hostile session");
    let status = tonic::Status::from_header_map(&trailers).unwrap();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("found 4294967295 bytes, the limit is: 16777216 bytes"),
        "{status:?}"
    );
    let sent = feeder.await.unwrap();
    assert!(sent < SENT, "the helper stops reading the message");
    let grown = rss_bytes(&f.helper).saturating_sub(baseline);
    assert!(
        grown < 64 << 20,
        "the helper grew by {} MiB after the peer sent {} MiB",
        grown >> 20,
        sent >> 20
    );
    let log = f.helper.log_text();
    assert!(log.contains("build session ended abnormally"), "{log}");

    let (_, after) = f.session("after").await;
    before.abort();
    after.abort();
}

/// Test PKI: a CA, a server certificate for `buildkitd.test` and a client certificate.
struct Pki {
    ca_pem: String,
    ca_der: rustls_pki_types::CertificateDer<'static>,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "irsa-secrets test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        server: leaf("buildkitd.test", ExtendedKeyUsagePurpose::ServerAuth),
        client: leaf("ci-runner", ExtendedKeyUsagePurpose::ClientAuth),
    }
}

/// A fake buildkitd behind mutual TLS on loopback, offering only `h2` as gRPC servers do.
async fn tls_daemon(
    pki: &Pki,
    report: mpsc::UnboundedSender<Observed>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let certs =
        vec![rustls_pki_types::CertificateDer::from_pem_slice(pki.server.0.as_bytes()).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.server.1.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = daemon_script(report);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, script) = (acceptor.clone(), script.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    fake_daemon(tls, script).await;
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_upstream_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let pki = pki();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (ca, cert, key) = (
        file("ca.pem", &pki.ca_pem),
        file("cert.pem", &pki.client.0),
        file("key.pem", &pki.client.1),
    );
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token(3600, -10)).unwrap();
    let tf = token_file.display().to_string();
    let (report, mut observed) = mpsc::unbounded_channel();
    let (addr, daemon) = tls_daemon(&pki, report).await;

    let start = |name: &str, tls: &[&str]| {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let socket = sub.join("helper.sock");
        let mut cmd = command();
        cmd.arg("proxy")
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()));
        cmd.arg("--upstream").arg(format!("tcp://{addr}")).args(tls);
        Helper::spawn(
            cmd,
            socket,
            &sub,
            &[("AWS_WEB_IDENTITY_TOKEN_FILE", &tf), ("AWS_ROLE_ARN", ARN)],
            &r,
        )
    };
    let good = start(
        "good",
        &[
            "--tlscacert",
            &ca,
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
            "--tlsservername",
            "buildkitd.test",
        ],
    );
    let (_, session) = session_through(&good.socket, "tls-1", &mut observed).await;
    session.abort();

    // Without a client certificate, or with the wrong server name, the daemon cannot be
    // reached: the client is told so, and why.
    for (name, why, flags) in [
        (
            "no-client-cert",
            "received fatal alert: CertificateRequired",
            vec!["--tlscacert", &ca, "--tlsservername", "buildkitd.test"],
        ),
        (
            "wrong-name",
            "certificate not valid for name \"other.test\"",
            vec![
                "--tlscacert",
                &ca,
                "--tlscert",
                &cert,
                "--tlskey",
                &key,
                "--tlsservername",
                "other.test",
            ],
        ),
    ] {
        let helper = start(name, &flags);
        let mut control = connect(&helper.socket).await;
        let req = tunnel_io::call("/moby.buildkit.v1.Control/ListWorkers", b"");
        let res = match control.ready().await.unwrap().call(req).await {
            Ok(res) => res,
            Err(e) => panic!("{name}: {e:?}\n{}", helper.log_text()),
        };
        let status = tonic::Status::from_header_map(res.headers()).expect("a gRPC error");
        assert_eq!(status.code(), Code::Unavailable, "{name}: {status:?}");
        let msg = status.message();
        assert!(
            msg.contains("the daemon") && msg.contains(why),
            "{name}: {msg}"
        );
    }
    daemon.abort();
}
