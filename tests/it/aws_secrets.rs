//! `--secret type=aws-sm` and `type=aws-ssm` end to end: the real binary with an IRSA identity
//! whose token moto's STS exchanges, reading moto's Secrets Manager and Parameter Store (and a
//! scripted fake for what moto cannot do: refusals). Every value created is watched as
//! radioactive: none may reach a log, an error or an audit record.

use crate::common;

use std::path::Path;
use std::time::Duration;

use aws_sdk_secretsmanager::primitives::Blob;
use aws_sdk_ssm::types::ParameterType;
use common::engine::Engine;
use common::fake_endpoints::{FakeEndpoint, Reply};
use common::moto::Moto;
use common::{command, run, tail, token, Helper, Radioactive, ARN};
use tonic::Code;

/// moto, a token for its STS, and the values the tests create there.
struct Aws {
    dir: tempfile::TempDir,
    moto: Moto,
    r: Radioactive,
    token_file: std::path::PathBuf,
}

impl Aws {
    fn start() -> Aws {
        let dir = tempfile::tempdir().unwrap();
        let r = Radioactive::default();
        let moto = Moto::start(dir.path());
        let t = token(3600, -10);
        r.watch(t.as_bytes());
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, &t).unwrap();
        Aws {
            dir,
            moto,
            r,
            token_file,
        }
    }

    /// Creates secret `name` in `region` holding `text` (watched); returns its ARN.
    async fn secret(&self, region: &str, name: &str, text: &str) -> String {
        self.r.watch(text.as_bytes());
        let out = self
            .moto
            .secrets_manager(region)
            .create_secret()
            .name(name)
            .secret_string(text)
            .send()
            .await
            .unwrap();
        out.arn.unwrap()
    }

    /// Gives secret `name` a new current value (the old one becomes AWSPREVIOUS).
    async fn rotate(&self, name: &str, text: &str) {
        self.r.watch(text.as_bytes());
        self.moto
            .secrets_manager("us-east-1")
            .put_secret_value()
            .secret_id(name)
            .secret_string(text)
            .send()
            .await
            .unwrap();
    }

    /// Creates parameter `name` of `kind` holding `text` (watched).
    async fn parameter(&self, name: &str, kind: ParameterType, text: &str) {
        self.r.watch(text.as_bytes());
        self.moto
            .ssm("us-east-1")
            .put_parameter()
            .name(name)
            .r#type(kind)
            .value(text)
            .send()
            .await
            .unwrap();
    }

    /// `serve` with the IRSA identity (moto's STS) and these `--secret` declarations; the AWS
    /// calls go to moto unless `env` points a service elsewhere.
    fn serve(&self, secrets: &[&str], env: &[(&str, &str)]) -> Helper {
        self.launch("serve", &[], secrets, env)
    }

    /// `proxy` like [`Aws::serve`], with its audit trail in DIR/audit.jsonl (secrets are
    /// answered on its socket without a daemon behind it).
    fn proxy(&self, secrets: &[&str]) -> Helper {
        let upstream = format!(
            "unix://{}",
            self.dir.path().join("no-daemon.sock").display()
        );
        let audit = self.audit_path().display().to_string();
        self.launch(
            "proxy",
            &["--upstream", &upstream, "--audit-log", &audit],
            secrets,
            &[],
        )
    }

    /// `irsa-secrets COMMAND ARGS...` with the IRSA identity and moto as every AWS endpoint:
    /// whether it succeeded, and its stdout.
    fn oneshot(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = command();
        cmd.args(args)
            .arg("--token-file")
            .arg(&self.token_file)
            .args(["--role-arn", ARN, "--region", "us-east-1"])
            .env("AWS_ENDPOINT_URL", &self.moto.url)
            .env("AWS_ENDPOINT_URL_STS", &self.moto.url);
        let out = run(&mut cmd, &self.r);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), stdout)
    }

    fn audit_path(&self) -> std::path::PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    fn launch(
        &self,
        subcommand: &str,
        args: &[&str],
        secrets: &[&str],
        env: &[(&str, &str)],
    ) -> Helper {
        let socket = self.dir.path().join(format!("{subcommand}.sock"));
        let mut cmd = command();
        cmd.arg(subcommand)
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .args(args)
            .arg("--token-file")
            .arg(&self.token_file)
            .args(["--role-arn", ARN, "--region", "us-east-1"]);
        for s in secrets {
            cmd.args(["--secret", s]);
        }
        for var in [
            "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            "AWS_ENDPOINT_URL_SSM",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("AWS_ENDPOINT_URL", &self.moto.url)
            .env("AWS_ENDPOINT_URL_STS", &self.moto.url);
        Helper::spawn(cmd, socket, self.dir.path(), env, &self.r)
    }
}

/// Fetches `id` from `h`, panicking with the helper's log on failure.
async fn value(h: &Helper, id: &str) -> Vec<u8> {
    let mut c = h.client().await;
    match h.get(&mut c, id).await {
        Ok(v) => v.expose().to_vec(),
        Err(e) => panic!("{id}: {e:?}\n{}", tail(&h.log_text())),
    }
}

/// The refusal of `id`, its message checked for watched values.
async fn refusal(h: &Helper, id: &str) -> tonic::Status {
    let mut c = h.client().await;
    let status = h.get(&mut c, id).await.expect_err(id);
    h.radioactive
        .assert_absent("an error message", status.message().as_bytes());
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_is_served_and_recorded_with_its_name_never_its_value() {
    let aws = Aws::start();
    aws.secret("us-east-1", "ci/npm", "npm-token-0123456789abcdef")
        .await;
    aws.secret(
        "us-east-1",
        "ci/db",
        r#"{"username":"ci-database-user","password":"db-password-9876543210","port":5432}"#,
    )
    .await;
    let binary: Vec<u8> = (0..=255u8).chain(*b"binary-secret-tail").collect();
    aws.r.watch(&binary);
    aws.moto
        .secrets_manager("us-east-1")
        .create_secret()
        .name("ci/ssh-key")
        .secret_binary(Blob::new(binary.clone()))
        .send()
        .await
        .unwrap();
    aws.secret("us-east-1", "ci/rotating", "rotating-value-one-1111")
        .await;
    aws.rotate("ci/rotating", "rotating-value-two-2222").await;
    let eu_arn = aws
        .secret("eu-west-1", "ci/eu-only", "european-secret-value-333")
        .await;
    aws.parameter(
        "/ci/pypi",
        ParameterType::SecureString,
        "pypi-token-abcdefghijkl",
    )
    .await;
    aws.parameter(
        "/ci/registry-url",
        ParameterType::String,
        "https://registry.example.internal/ci",
    )
    .await;
    let eu = format!("id=eu,type=aws-sm,name={eu_arn}");
    let h = aws.proxy(&[
        "id=npm,type=aws-sm,name=ci/npm",
        "id=db-password,type=aws-sm,name=ci/db,key=password",
        "id=db-port,type=aws-sm,name=ci/db,key=port",
        "id=ssh,type=aws-sm,name=ci/ssh-key",
        "id=previous,type=aws-sm,name=ci/rotating,version-stage=AWSPREVIOUS",
        "id=current,type=aws-sm,name=ci/rotating",
        &eu,
        "id=pypi,type=aws-ssm,name=/ci/pypi",
        "id=registry,type=aws-ssm,name=/ci/registry-url",
    ]);
    assert_eq!(value(&h, "npm").await, b"npm-token-0123456789abcdef");
    assert_eq!(value(&h, "db-password").await, b"db-password-9876543210");
    assert_eq!(
        value(&h, "db-port").await,
        b"5432",
        "a number as its JSON text"
    );
    assert_eq!(value(&h, "ssh").await, binary);
    assert_eq!(value(&h, "previous").await, b"rotating-value-one-1111");
    assert_eq!(value(&h, "current").await, b"rotating-value-two-2222");
    assert_eq!(
        value(&h, "eu").await,
        b"european-secret-value-333",
        "the ARN's region"
    );
    assert_eq!(
        value(&h, "pypi").await,
        b"pypi-token-abcdefghijkl",
        "decrypted"
    );
    assert_eq!(
        value(&h, "registry").await,
        b"https://registry.example.internal/ci"
    );

    // Each answer is recorded with its source and the secret's name; no value is anywhere.
    let audit = std::fs::read(aws.audit_path()).unwrap();
    aws.r.assert_absent("the audit trail", &audit);
    let records: Vec<serde_json::Value> = String::from_utf8(audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["event"] == "secret")
        .collect();
    let record = |id: &str| {
        records
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no record of {id} in {records:?}"))
    };
    assert_eq!(record("npm")["source"], "aws-sm");
    assert_eq!(record("npm")["name"], "ci/npm");
    assert_eq!(record("npm")["outcome"], "served");
    assert_eq!(record("eu")["name"], eu_arn.as_str());
    assert_eq!(record("pypi")["source"], "aws-ssm");
    assert_eq!(record("pypi")["name"], "/ci/pypi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_field_or_parameter_and_an_oversized_value_fail_with_the_fix() {
    let aws = Aws::start();
    aws.secret(
        "us-east-1",
        "ci/db",
        r#"{"password":"db-password-9876543210"}"#,
    )
    .await;
    let big = "b".repeat(600 * 1024);
    aws.secret("us-east-1", "ci/big", &big).await;
    let h = aws.serve(
        &[
            "id=gone,type=aws-sm,name=ci/nope",
            "id=stage,type=aws-sm,name=ci/db,version-stage=NOSUCHSTAGE",
            "id=field,type=aws-sm,name=ci/db,key=token",
            "id=param,type=aws-ssm,name=/ci/nope",
            "id=big,type=aws-sm,name=ci/big",
        ],
        &[],
    );
    let s = refusal(&h, "gone").await;
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message()
            .contains("Secrets Manager has no secret ci/nope in us-east-1: correct name="),
        "{s:?}"
    );
    let s = refusal(&h, "stage").await;
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("version-stage=NOSUCHSTAGE"), "{s:?}");
    let s = refusal(&h, "field").await;
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message()
            .contains("ci/db has no field \"token\" (its fields: password)"),
        "{s:?}"
    );
    let s = refusal(&h, "param").await;
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message()
            .contains("Parameter Store has no parameter /ci/nope in us-east-1"),
        "{s:?}"
    );
    let s = refusal(&h, "big").await;
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message()
            .contains("ci/big is 614400 bytes, over BuildKit's limit of 500 KiB"),
        "{s:?}"
    );
}

/// An `AccessDeniedException` as both services answer it.
fn denied(_: &common::fake_endpoints::Request) -> Reply {
    Reply::Status(
        400,
        r#"{"__type":"AccessDeniedException","message":"User: arn:aws:sts::123456789012:assumed-role/ci-builder/x is not authorized to perform this operation"}"#
            .into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_call_names_the_permissions_the_role_needs() {
    let aws = Aws::start();
    let fake = FakeEndpoint::start(denied);
    let h = aws.serve(
        &[
            "id=npm,type=aws-sm,name=ci/npm",
            "id=pypi,type=aws-ssm,name=/ci/pypi",
        ],
        &[
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", &fake.base()),
            ("AWS_ENDPOINT_URL_SSM", &fake.base()),
        ],
    );
    let s = refusal(&h, "npm").await;
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(
        s.message().contains(
            "it needs secretsmanager:GetSecretValue on \
             arn:aws:secretsmanager:us-east-1:ACCOUNT:secret:ci/npm-*"
        ),
        "{s:?}"
    );
    let s = refusal(&h, "pypi").await;
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(
        s.message().contains(
            "ssm:GetParameter on arn:aws:ssm:us-east-1:ACCOUNT:parameter/ci/pypi and \
             kms:Decrypt"
        ),
        "{s:?}"
    );
    let targets: Vec<String> = fake
        .requests()
        .iter()
        .filter_map(|r| r.header("x-amz-target").map(String::from))
        .collect();
    assert!(
        targets.contains(&"secretsmanager.GetSecretValue".to_string())
            && targets.contains(&"AmazonSSM.GetParameter".to_string()),
        "{targets:?}"
    );
}

/// Fetching a value again once its ttl has passed (a call per ttl, not per request) is
/// unit-tested under paused time in `source::aws_secret`; end to end, without waiting for the
/// ttl: fifty concurrent requests make one call, and a rotated value is not fetched within the
/// ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_is_cached_for_its_ttl_and_fetched_once_for_fifty_concurrent_requests() {
    let aws = Aws::start();
    aws.secret("us-east-1", "ci/npm", "npm-token-first-0000000")
        .await;
    aws.secret("us-east-1", "ci/pip", "pip-token-shared-5555555")
        .await;
    let h = aws.serve(
        &[
            "id=npm,type=aws-sm,name=ci/npm,ttl=1h",
            "id=pip,type=aws-sm,name=ci/pip",
        ],
        &[],
    );
    // The STS exchange and the first fetch, so the count below is of one cold value alone.
    assert_eq!(value(&h, "npm").await, b"npm-token-first-0000000");

    aws.moto.start_recording().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let mut c = h.client().await;
        tasks.spawn(async move { common::get_secret(&mut c, "pip").await });
    }
    while let Some(got) = tasks.join_next().await {
        assert_eq!(got.unwrap().unwrap().expose(), b"pip-token-shared-5555555");
    }
    let calls = aws.moto.recorded("secretsmanager.GetSecretValue").await;
    println!(
        "GetSecretValue calls for 50 concurrent requests: {}",
        calls.len()
    );
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["SecretId"], "ci/pip");

    // Rotated within the ttl: the cached value, no call.
    aws.rotate("ci/npm", "npm-token-second-1111111").await;
    assert_eq!(value(&h, "npm").await, b"npm-token-first-0000000");
    let calls = aws.moto.recorded("secretsmanager.GetSecretValue").await;
    assert_eq!(calls.len(), 1, "{calls:?}");
}

/// The cached value served while the service is down until it is twice its ttl old, then a
/// clear error: unit-tested under paused time in `source::aws_secret`. End to end, without
/// waiting for the ttl: a service that cannot be reached is an outage (Unavailable, the kind
/// the cached value covers), not a refusal, and the cached value is served within the ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_service_is_down_the_cached_value_is_served_and_others_are_unavailable() {
    let mut aws = Aws::start();
    aws.secret("us-east-1", "ci/npm", "npm-token-cached-7777777")
        .await;
    aws.secret("us-east-1", "ci/pip", "pip-token-not-cached-3333333")
        .await;
    let h = aws.serve(
        &[
            "id=npm,type=aws-sm,name=ci/npm",
            "id=pip,type=aws-sm,name=ci/pip",
        ],
        &[],
    );
    assert_eq!(value(&h, "npm").await, b"npm-token-cached-7777777");
    // The service goes away (the STS credentials are cached: moto is not needed for them).
    aws.moto.stop();
    assert_eq!(value(&h, "npm").await, b"npm-token-cached-7777777");
    let mut c = h.client().await;
    let s = h.get(&mut c, "pip").await.unwrap_err();
    h.radioactive
        .assert_absent("an error message", s.message().as_bytes());
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
}

#[test]
fn an_aws_secret_without_aws_credentials_is_refused_at_start_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let socket = dir.path().join("s.sock");
    let out = run(
        command()
            .args(["serve", "--mock", "--listen"])
            .arg(format!("unix://{}", socket.display()))
            .args(["--secret", "id=npm,type=aws-sm,name=ci/npm"]),
        &r,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--secret id=npm,type=aws-sm: the helper fetches it with its own AWS credentials, and it has none"),
        "{err}"
    );
    assert!(!Path::new(&socket).exists());
}

/// `proxy --config` in front of `upstream` with two listeners that both declare `npm` (the
/// aws-sm secret ci/npm): `trusted` serves it, `untrusted` allows only the role ARN. The helper
/// is on the trusted socket; the untrusted one is there too when this returns.
fn two_listeners(aws: &Aws, upstream: &str) -> Helper {
    let dir = aws.dir.path();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[listener]]
name = "trusted"
listen = "unix://{dir}/trusted.sock"
upstream = "{upstream}"
identity = "process"
secret = ["id=npm,type=aws-sm,name=ci/npm"]

[[listener]]
name = "untrusted"
listen = "unix://{dir}/untrusted.sock"
upstream = "{upstream}"
identity = "process"
allow_id = ["aws-role-arn"]
secret = ["id=npm,type=aws-sm,name=ci/npm"]
"#,
            dir = dir.display(),
        ),
    )
    .unwrap();
    let mut cmd = command();
    cmd.arg("proxy")
        .arg("--config")
        .arg(&config)
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &aws.token_file)
        .env("AWS_ROLE_ARN", ARN)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &aws.moto.url)
        .env("AWS_ENDPOINT_URL_STS", &aws.moto.url);
    let h = Helper::spawn(cmd, dir.join("trusted.sock"), dir, &[], &aws.r);
    let untrusted = dir.join("untrusted.sock");
    common::eventually(
        Duration::from_secs(10),
        "the untrusted socket is there",
        || untrusted.exists().then_some(()),
    );
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_config_file_the_trusted_listener_gets_the_value_and_the_untrusted_one_not() {
    let aws = Aws::start();
    aws.secret("us-east-1", "ci/npm", "npm-token-trusted-4444444")
        .await;
    let up = format!("unix://{}", aws.dir.path().join("no-daemon.sock").display());
    let h = two_listeners(&aws, &up);
    assert_eq!(value(&h, "npm").await, b"npm-token-trusted-4444444");
    let untrusted = aws.dir.path().join("untrusted.sock");
    let mut c = common::secrets(&untrusted).await;
    let s = h
        .get(&mut c, "npm")
        .await
        .expect_err("untrusted gets no npm");
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
}

engines!(async trusted_builds_read_the_aws_secret_with_one_call_and_an_untrusted_build_fails_on_required);

/// Real builds on each listener, through a private dockerd of `engine` and its CLI: 50
/// concurrent trusted builds read the value with one Secrets Manager call among them, the
/// untrusted one fails on `required`.
async fn trusted_builds_read_the_aws_secret_with_one_call_and_an_untrusted_build_fails_on_required(
    engine: Engine,
) {
    if common::dockerd::skip() {
        return;
    }
    let aws = Aws::start();
    let value = "npm-token-for-the-build-6666666";
    aws.secret("us-east-1", "ci/npm", value).await;
    let daemon = common::dockerd::Dockerd::start_on(engine, &aws.dir.path().join("d"));
    let h = two_listeners(&aws, &format!("unix://{}", daemon.socket.display()));
    // Each build writes its own number: builds that commit identical layers at once race in
    // the classic image store's overlay2 snapshotter (moby/buildkit#5469), whatever the client.
    let contexts: Vec<_> = (0..=50)
        .map(|i| {
            common::dockerd::context(
                aws.dir.path(),
                &format!("ctx-{i}"),
                &format!(
                    "FROM {}\nRUN --mount=type=secret,id=npm,required sha256sum /run/secrets/npm \
                     && echo {i} > /build-number\n",
                    common::dockerd::BASE_IMAGE
                ),
            )
        })
        .collect();
    let build = |listener: &str, i: usize| {
        let socket = aws.dir.path().join(format!("{listener}.sock"));
        common::dockerd::build_with(engine, &socket, &contexts[i], &aws.r)
    };
    aws.moto.start_recording().await;
    let started = std::time::Instant::now();
    let builds: Vec<(bool, String)> = std::thread::scope(|scope| {
        let running: Vec<_> = (0..50)
            .map(|i| scope.spawn(move || build("trusted", i)))
            .collect();
        running.into_iter().map(|b| b.join().unwrap()).collect()
    });
    for (ok, out) in &builds {
        assert!(ok, "{out}\n{}", tail(&h.log_text()));
        assert!(out.contains(&common::sha(value.as_bytes())), "{out}");
    }
    let calls = aws.moto.recorded("secretsmanager.GetSecretValue").await;
    println!(
        "{engine:?}: GetSecretValue calls for 50 concurrent builds: {} ({:.1} s for all 50)",
        calls.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(calls.len(), 1, "{calls:?}");
    let (ok, out) = build("untrusted", 50);
    assert!(!ok, "{out}");
    assert!(out.contains("npm"), "{out}");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reads_each_aws_secret_and_shows_only_its_size_and_digest() {
    let aws = Aws::start();
    aws.secret("us-east-1", "ci/npm", "npm-token-doctor-8888888")
        .await;
    let (ok, text) = aws.oneshot(&[
        "doctor",
        "--secret",
        "id=npm,type=aws-sm,name=ci/npm",
        "--secret",
        "id=gone,type=aws-ssm,name=/ci/nope",
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "ok    secret npm: aws-sm ci/npm is readable: 24 bytes, sha256 {}",
            common::sha(b"npm-token-doctor-8888888")
        )),
        "{text}"
    );
    assert!(
        text.contains(
            "FAIL  secret gone: aws-ssm /ci/nope: secret gone: Parameter Store has no parameter"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_an_aws_secret_in_an_image_and_names_the_ones_it_cannot_fetch() {
    let aws = Aws::start();
    let value = "npm-token-in-the-image-999999";
    aws.secret("us-east-1", "ci/npm", value).await;
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    let npmrc = format!("//registry.npmjs.org/:_authToken={value}\n");
    header.set_size(npmrc.len() as u64);
    header.set_mode(0o644);
    layer
        .append_data(&mut header, "root/.npmrc", npmrc.as_bytes())
        .unwrap();
    let image = aws.dir.path().join("image.tar");
    common::image::docker_save(&image, &[layer.into_inner().unwrap()], &[], &[]);
    let image = image.display().to_string();
    let (ok, text) = aws.oneshot(&[
        "scan",
        &image,
        "--format",
        "json",
        "--secret",
        "id=npm,type=aws-sm,name=ci/npm",
        "--secret",
        "id=gone,type=aws-sm,name=ci/nope",
    ]);
    assert!(!ok, "a finding fails the scan: {text}");
    let report: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let report_text = report.to_string();
    assert!(
        report_text.contains("root/.npmrc") && report_text.contains("secret npm"),
        "{report:#}"
    );
    assert!(
        report_text.contains("secret gone (aws-sm ci/nope) was not searched for"),
        "{report:#}"
    );
}
