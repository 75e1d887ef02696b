//! Where the helper's own AWS calls go, resolved by aws-config as every SDK does: the service's
//! own setting (`AWS_ENDPOINT_URL_<SERVICE>`, the shared config file's `services` section) over
//! the global one (`AWS_ENDPOINT_URL`, the file's `endpoint_url`). Each case starts two loopback
//! fakes and sees which one is asked; every service a case calls has a loopback endpoint, so no
//! case reaches an AWS host. ECR's and ECR Public's cases run in a session, in
//! tests/it/registry_session.rs.

use crate::common;

use std::path::Path;

use common::fake_endpoints::FakeEndpoint;
use common::fake_sts::{self, FakeSts};
use common::{token, Helper, Radioactive, ARN};

/// Starts `serve` with the IRSA identity, an `aws-sm` secret `db` and an `aws-ssm` secret
/// `param`, and `env` (no other endpoint setting: `common::command` clears them; no shared
/// config file unless `env` names one) and `extra` flags; asks for `id` and lets the call fail.
async fn ask(dir: &Path, env: &[(&str, &str)], extra: &[&str], id: &str) {
    let r = Radioactive::default();
    let t = token(3600, -10);
    r.watch(t.as_bytes());
    let token_file = dir.join("token");
    std::fs::write(&token_file, &t).unwrap();
    let tf = token_file.display().to_string();
    let missing = dir.join("no-such-aws-config").display().to_string();
    let mut all = vec![
        ("AWS_CONFIG_FILE", missing.as_str()),
        ("AWS_SHARED_CREDENTIALS_FILE", missing.as_str()),
    ];
    all.retain(|(k, _)| !env.iter().any(|(e, _)| e == k));
    all.extend_from_slice(env);
    let mut args = vec![
        "--token-file",
        &tf,
        "--role-arn",
        ARN,
        "--region",
        "us-east-1",
        "--secret",
        "id=db,type=aws-sm,name=ci/db",
        "--secret",
        "id=param,type=aws-ssm,name=/ci/param",
    ];
    args.extend_from_slice(extra);
    let helper = Helper::serve(dir, &args, &all, &r);
    let mut client = helper.client().await;
    let _ = helper.get(&mut client, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_takes_its_own_variable_then_the_global_one() {
    // The global variable alone: the helper's own STS exchange follows it.
    let dir = tempfile::tempdir().unwrap();
    let global = FakeEndpoint::refusing();
    ask(
        dir.path(),
        &[("AWS_ENDPOINT_URL", &global.base())],
        &[],
        "db",
    )
    .await;
    assert!(
        !global.requests().is_empty(),
        "STS was not asked at AWS_ENDPOINT_URL"
    );

    // Both: STS's own wins.
    let dir = tempfile::tempdir().unwrap();
    let (global, own) = (FakeEndpoint::refusing(), FakeEndpoint::refusing());
    let env = [
        ("AWS_ENDPOINT_URL", global.base()),
        ("AWS_ENDPOINT_URL_STS", own.base()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ask(dir.path(), &env, &[], "db").await;
    assert!(
        !own.requests().is_empty(),
        "STS was not asked at AWS_ENDPOINT_URL_STS"
    );
    assert!(
        global.requests().is_empty(),
        "AWS_ENDPOINT_URL won over AWS_ENDPOINT_URL_STS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_follows_the_shared_config_file_under_the_variables_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (global, own) = (FakeEndpoint::refusing(), FakeEndpoint::refusing());
    let config = dir.path().join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[default]\nendpoint_url = {}\nservices = local\n\n[services local]\nsts =\n  \
             endpoint_url = {}\n",
            global.base(),
            own.base()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    ask(dir.path(), &[("AWS_CONFIG_FILE", &config)], &[], "db").await;
    assert!(
        !own.requests().is_empty(),
        "STS was not asked at the file's sts endpoint_url"
    );
    assert!(
        global.requests().is_empty(),
        "the file's global endpoint_url won"
    );

    // A variable wins over the file, and --sts-endpoint over both.
    let (variable, flag) = (FakeEndpoint::refusing(), FakeEndpoint::refusing());
    let variable_base = variable.base();
    let env = [
        ("AWS_CONFIG_FILE", config.as_str()),
        ("AWS_ENDPOINT_URL", variable_base.as_str()),
    ];
    let dir = tempfile::tempdir().unwrap();
    ask(dir.path(), &env, &[], "db").await;
    assert!(
        !variable.requests().is_empty(),
        "the file won over AWS_ENDPOINT_URL"
    );
    let seen = (own.requests().len(), variable.requests().len());
    let dir = tempfile::tempdir().unwrap();
    ask(dir.path(), &env, &["--sts-endpoint", &flag.base()], "db").await;
    assert!(
        !flag.requests().is_empty(),
        "STS was not asked at --sts-endpoint"
    );
    assert_eq!(
        (own.requests().len(), variable.requests().len()),
        seen,
        "a setting won over --sts-endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_and_parameter_store_take_their_own_variable_then_the_global_one() {
    let sts = FakeSts::start(fake_sts::Reply::ok());
    for (id, var, target) in [
        (
            "db",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            "secretsmanager.GetSecretValue",
        ),
        ("param", "AWS_ENDPOINT_URL_SSM", "AmazonSSM.GetParameter"),
    ] {
        let asked = |fake: &FakeEndpoint| {
            fake.requests()
                .iter()
                .any(|r| r.header("x-amz-target") == Some(target))
        };
        let dir = tempfile::tempdir().unwrap();
        let global = FakeEndpoint::refusing();
        let env = [
            ("AWS_ENDPOINT_URL_STS", sts.url.as_str()),
            ("AWS_ENDPOINT_URL", &global.base()),
        ];
        ask(dir.path(), &env, &[], id).await;
        assert!(asked(&global), "{target} was not asked at AWS_ENDPOINT_URL");

        let dir = tempfile::tempdir().unwrap();
        let (global, own) = (FakeEndpoint::refusing(), FakeEndpoint::refusing());
        let env = [
            ("AWS_ENDPOINT_URL_STS", sts.url.as_str()),
            ("AWS_ENDPOINT_URL", &global.base()),
            (var, &own.base()),
        ];
        ask(dir.path(), &env, &[], id).await;
        assert!(asked(&own), "{target} was not asked at {var}");
        assert!(!asked(&global), "AWS_ENDPOINT_URL won over {var}");
    }
}
