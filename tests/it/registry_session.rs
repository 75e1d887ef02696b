//! Registry credentials inside a session, against a fake buildkitd that calls the client's `Auth`
//! service as BuildKit does, through the real binary with an identity of its own: which calls
//! the helper answers, which reach the client untouched. No ECR call succeeds (its endpoint is a
//! closed loopback port, or a fake that refuses and records where it was asked): the client's
//! own login answers where it has one.

use crate::common;

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use common::fake_daemon::FakeBuildkitd;
use common::fake_endpoints::{FakeEndpoint, ECR_PUBLIC_TOKEN_TARGET};
use common::fake_sts::{self, FakeSts};
use common::session_client::{
    client_session, connect, CLIENT_LOGINS, CLIENT_TOKEN_KEY, CLIENT_TOKEN_PROOF,
};
use common::{command, token, tunnel_io, Helper, Radioactive, ARN};
use irsa_secrets::wire::proto::auth::{
    CredentialsRequest, CredentialsResponse, GetTokenAuthorityRequest, GetTokenAuthorityResponse,
    VerifyTokenAuthorityRequest, VerifyTokenAuthorityResponse,
};
use irsa_secrets::wire::proto::{
    CREDENTIALS_PATH, TOKEN_AUTHORITY_PATH, VERIFY_TOKEN_AUTHORITY_PATH,
};
use tokio::sync::mpsc;
use tonic::Code;

/// A host that is not ECR's.
const OTHER: &str = "ghcr.io";

/// What the fake daemon got back for each call: the key, its proof, or the user and secret.
#[derive(Debug, PartialEq)]
enum Got {
    Key(Result<Vec<u8>, Code>),
    Proof(Result<Vec<u8>, Code>),
    Credentials(Result<(String, String), Code>),
}

/// Closed loopback ports: any STS or ECR call fails at once, and nothing leaves the host.
const CLOSED: [(&str, &str); 3] = [
    ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9"),
    ("AWS_ENDPOINT_URL_ECR", "http://127.0.0.1:9"),
    ("AWS_ENDPOINT_URL_ECR_PUBLIC", "http://127.0.0.1:9"),
];

/// Starts `proxy` in front of `daemon` with an IRSA identity, `extra` flags and the endpoint
/// settings `endpoints`.
fn start_helper(
    dir: &Path,
    daemon: &Path,
    r: &Radioactive,
    extra: &[&str],
    endpoints: &[(&str, &str)],
) -> Helper {
    let t = token(3600, -10);
    r.watch(t.as_bytes());
    let token_file = dir.join("token");
    std::fs::write(&token_file, &t).unwrap();
    let socket = dir.join("helper.sock");
    let mut cmd = command();
    cmd.arg("proxy")
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()))
        .arg("--upstream")
        .arg(format!("unix://{}", daemon.display()))
        .args(extra);
    let tf = token_file.display().to_string();
    let mut env = vec![
        ("AWS_WEB_IDENTITY_TOKEN_FILE", tf.as_str()),
        ("AWS_ROLE_ARN", ARN),
    ];
    env.extend_from_slice(endpoints);
    Helper::spawn(cmd, socket, dir, &env, r)
}

/// Runs one session whose daemon asks, in order, `calls` (path, host); returns the answers.
/// STS and ECR are closed ports.
async fn session(extra: &[&str], calls: Vec<(&'static str, &'static str)>) -> (Vec<Got>, String) {
    session_with(extra, &CLOSED, calls).await
}

/// [`session`] with the endpoint settings `endpoints`.
async fn session_with(
    extra: &[&str],
    endpoints: &[(&str, &str)],
    calls: Vec<(&'static str, &'static str)>,
) -> (Vec<Got>, String) {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let daemon_sock = dir.path().join("buildkitd.sock");
    let (report, mut reported) = mpsc::unbounded_channel();
    let script: common::fake_daemon::Script = Arc::new(move |peer, _| {
        let (report, calls) = (report.clone(), calls.clone());
        Box::pin(async move {
            let mut got = Vec::new();
            for (path, host) in calls {
                got.push(if path == TOKEN_AUTHORITY_PATH {
                    let req = GetTokenAuthorityRequest {
                        host: host.into(),
                        salt: vec![1; 32],
                    };
                    Got::Key(
                        tunnel_io::unary::<GetTokenAuthorityResponse>(&peer, path, &req)
                            .await
                            .map(|r| r.public_key),
                    )
                } else if path == VERIFY_TOKEN_AUTHORITY_PATH {
                    let req = VerifyTokenAuthorityRequest {
                        host: host.into(),
                        payload: vec![2; 32],
                        salt: vec![1; 32],
                    };
                    Got::Proof(
                        tunnel_io::unary::<VerifyTokenAuthorityResponse>(&peer, path, &req)
                            .await
                            .map(|r| r.signed),
                    )
                } else {
                    let req = CredentialsRequest { host: host.into() };
                    Got::Credentials(
                        tunnel_io::unary::<CredentialsResponse>(&peer, path, &req)
                            .await
                            .map(|r| (r.username.clone(), r.secret.clone())),
                    )
                });
            }
            report.send(got).unwrap();
        })
    });
    let _daemon = FakeBuildkitd::start(&daemon_sock, script);
    let helper = start_helper(dir.path(), &daemon_sock, &r, extra, endpoints);
    let control = connect(&helper.socket).await;
    let client = tokio::spawn(client_session(
        control,
        "reg-1".into(),
        None,
        Arc::new(AtomicUsize::new(0)),
    ));
    let got = tokio::time::timeout(Duration::from_secs(30), reported.recv())
        .await
        .expect("the daemon reports its calls")
        .unwrap();
    client.abort();
    (got, helper.log_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_registries_are_declined_only_where_the_helper_answers() {
    let (own_host, user, secret) = CLIENT_LOGINS[0];
    let (got, log) = session(
        &[],
        vec![
            // ECR Public, no login of the client's: the helper declines, so BuildKit asks
            // Credentials and fetches the token itself; and declines to prove the client's
            // (anonymous) key, so no anonymous build's token fetcher is linked instead.
            (TOKEN_AUTHORITY_PATH, "public.ecr.aws"),
            (VERIFY_TOKEN_AUTHORITY_PATH, "public.ecr.aws"),
            // Not ECR: the client's key and proof.
            (TOKEN_AUTHORITY_PATH, OTHER),
            (VERIFY_TOKEN_AUTHORITY_PATH, OTHER),
            // ECR, and the client has a login: the client's key and proof, and its credentials.
            (TOKEN_AUTHORITY_PATH, own_host),
            (VERIFY_TOKEN_AUTHORITY_PATH, own_host),
            (CREDENTIALS_PATH, own_host),
            // Not ECR: the client's (empty) answer, untouched.
            (CREDENTIALS_PATH, OTHER),
        ],
    )
    .await;
    let key = Ok(CLIENT_TOKEN_KEY.to_vec());
    let proof = Ok(CLIENT_TOKEN_PROOF.to_vec());
    assert_eq!(
        got,
        [
            Got::Key(Err(Code::Unimplemented)),
            Got::Proof(Err(Code::Unimplemented)),
            Got::Key(key.clone()),
            Got::Proof(proof.clone()),
            Got::Key(key),
            Got::Proof(proof),
            Got::Credentials(Ok((user.into(), secret.into()))),
            Got::Credentials(Ok((String::new(), String::new()))),
        ],
        "{log}"
    );
    assert!(!log.contains("asking ECR"), "ECR was asked:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_listener_leaves_bearer_registries_to_the_client() {
    let (got, log) = session(
        &["--allow-id", "aws-role-arn"],
        vec![
            (TOKEN_AUTHORITY_PATH, "public.ecr.aws"),
            (VERIFY_TOKEN_AUTHORITY_PATH, "public.ecr.aws"),
            (
                CREDENTIALS_PATH,
                "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            ),
        ],
    )
    .await;
    assert_eq!(
        got,
        [
            Got::Key(Ok(CLIENT_TOKEN_KEY.to_vec())),
            Got::Proof(Ok(CLIENT_TOKEN_PROOF.to_vec())),
            Got::Credentials(Ok((String::new(), String::new()))),
        ],
        "{log}"
    );
    assert!(log.contains("allow_registry does not name"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecr_unreachable_is_an_error_for_the_pull_and_public_pulls_go_on_anonymously() {
    let (got, log) = session(
        &[],
        vec![
            (
                CREDENTIALS_PATH,
                "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            ),
            (CREDENTIALS_PATH, "public.ecr.aws"),
        ],
    )
    .await;
    assert!(
        matches!(&got[0], Got::Credentials(Err(c)) if *c != Code::Unimplemented),
        "{got:?}\n{log}"
    );
    assert_eq!(
        got[1],
        Got::Credentials(Ok((String::new(), String::new()))),
        "{log}"
    );
    assert!(log.contains("goes on anonymously"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_registry_host_goes_to_the_client_and_leaves_bounded_records() {
    let trail = tempfile::tempdir().unwrap();
    let audit = trail.path().join("audit.jsonl");
    // Shaped like an ECR host, with a megabyte-long region.
    let region = format!("{}-1", "a".repeat(1 << 20));
    let host = format!("123456789012.dkr.ecr.{region}.amazonaws.com");
    let host: &'static str = Box::leak(host.into_boxed_str());
    let audit_flag = audit.display().to_string();
    let (got, log) = session(
        &["--audit-log", &audit_flag],
        vec![
            (TOKEN_AUTHORITY_PATH, host),
            (CREDENTIALS_PATH, host),
            (CREDENTIALS_PATH, "public.ecr.aws"),
        ],
    )
    .await;
    // No ECR registry has such a name: the client's answers, untouched.
    assert_eq!(
        got,
        [
            Got::Key(Ok(CLIENT_TOKEN_KEY.to_vec())),
            Got::Credentials(Ok((String::new(), String::new()))),
            Got::Credentials(Ok((String::new(), String::new()))),
        ],
    );
    let trail = std::fs::read_to_string(&audit).unwrap_or_default();
    assert!(
        trail.len() < 8 * 1024,
        "the audit trail is {} bytes",
        trail.len()
    );
    // Forwarding a megabyte leaves the HTTP/2 stack's lines by the frame; no line holds the
    // host, and the helper's own lines stay few.
    let long: Vec<_> = log
        .lines()
        .filter(|l| l.len() > 4096)
        .map(|l| &l[..300])
        .collect();
    assert!(long.is_empty(), "{long:#?}");
    let own: usize = log
        .lines()
        .filter(|l| l.contains("irsa_secrets"))
        .map(str::len)
        .sum();
    assert!(own < 32 * 1024, "the helper logged {own} bytes");
    assert!(!log.contains(&region[..4096]) && !trail.contains(&region[..4096]));
}

/// ECR's and ECR Public's endpoints resolve as every SDK's do (the rest are in
/// tests/it/endpoints.rs): the service's own variable, else `AWS_ENDPOINT_URL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecr_and_ecr_public_take_their_own_variable_then_the_global_one() {
    let sts = FakeSts::start(fake_sts::Reply::ok());
    for (host, var, target) in [
        (
            "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "AWS_ENDPOINT_URL_ECR",
            "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken",
        ),
        (
            "public.ecr.aws",
            "AWS_ENDPOINT_URL_ECR_PUBLIC",
            ECR_PUBLIC_TOKEN_TARGET,
        ),
    ] {
        let asked = |fake: &FakeEndpoint| {
            fake.requests()
                .iter()
                .any(|r| r.header("x-amz-target") == Some(target))
        };
        let calls = vec![(CREDENTIALS_PATH, host)];

        let global = FakeEndpoint::refusing();
        let env = [
            ("AWS_ENDPOINT_URL_STS", sts.url.as_str()),
            ("AWS_ENDPOINT_URL", &global.base()),
        ];
        session_with(&[], &env, calls.clone()).await;
        assert!(asked(&global), "{target} was not asked at AWS_ENDPOINT_URL");

        let (global, own) = (FakeEndpoint::refusing(), FakeEndpoint::refusing());
        let env = [
            ("AWS_ENDPOINT_URL_STS", sts.url.as_str()),
            ("AWS_ENDPOINT_URL", &global.base()),
            (var, &own.base()),
        ];
        session_with(&[], &env, calls).await;
        assert!(asked(&own), "{target} was not asked at {var}");
        assert!(!asked(&global), "AWS_ENDPOINT_URL won over {var}");
    }
}
