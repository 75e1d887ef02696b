//! The examples people copy are valid: the Kubernetes manifests against the Kubernetes schemas
//! (kubernetes-validate, strict: unknown fields are errors), the GitHub Actions workflow against
//! its schema (check-jsonschema). Both validators bundle their schemas and run offline;
//! `scripts/deps-python` installs them. The Dockerfiles are built in tests/ship.rs.

mod common;

use std::path::{Path, PathBuf};

/// The Kubernetes version the manifests are checked against (EKS supports it).
const KUBERNETES: &str = "1.31.0";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Runs `python3 -m MODULE ARGS...`; panics with its output unless it succeeds.
fn validate(module: &str, args: &[&str], file: &Path) -> String {
    let (out, text) = common::python::run(
        common::python::python3()
            .arg("-m")
            .arg(module)
            .args(args)
            .arg(file),
    );
    assert!(out.status.success(), "{}:\n{text}", file.display());
    text
}

fn kubernetes_validate(file: &Path) -> String {
    validate("kubernetes_validate", &["--strict", "-k", KUBERNETES], file)
}

#[test]
fn kubernetes_manifests_match_the_schemas() {
    for name in [
        "dind-runner.yaml",
        "buildkitd-runner.yaml",
        "pod-identity-runner.yaml",
    ] {
        let text = kubernetes_validate(&examples().join("kubernetes").join(name));
        assert!(text.contains("passed for resource pod/"), "{name}: {text}");
        assert!(
            text.contains("passed for resource serviceaccount/"),
            "{name}: {text}"
        );
    }
}

#[test]
fn the_validator_rejects_a_broken_manifest() {
    // A misspelt field must fail, or the check above proves nothing.
    let good = std::fs::read_to_string(examples().join("kubernetes/dind-runner.yaml")).unwrap();
    let bad = good.replacen("readOnlyRootFilesystem", "readOnlyRootFilesytem", 1);
    assert_ne!(good, bad);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, bad).unwrap();
    let out = common::python::python3()
        .args(["-m", "kubernetes_validate", "--strict", "-k", KUBERNETES])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("readOnlyRootFilesytem"));
}

#[test]
fn the_manifests_wire_the_helper_between_runner_and_daemon() {
    for (name, upstream) in [
        (
            "dind-runner.yaml",
            "--upstream=unix:///run/docker/docker.sock",
        ),
        (
            "buildkitd-runner.yaml",
            "--upstream=unix:///run/buildkit/buildkitd.sock",
        ),
    ] {
        let text = std::fs::read_to_string(examples().join("kubernetes").join(name)).unwrap();
        for needle in [
            "eks.amazonaws.com/role-arn: arn:aws:iam::",
            "audience: sts.amazonaws.com",
            "--listen=unix:///run/irsa/helper.sock",
            upstream,
            "emptyDir: {}",
            "[\"/irsa-secrets\", \"health\"",
        ] {
            assert!(text.contains(needle), "{name} lacks {needle}");
        }
    }
    let dind = std::fs::read_to_string(examples().join("kubernetes/dind-runner.yaml")).unwrap();
    assert!(dind.contains("value: unix:///run/irsa/helper.sock"));
    let buildkit =
        std::fs::read_to_string(examples().join("kubernetes/buildkitd-runner.yaml")).unwrap();
    assert!(buildkit.contains("--driver remote"));
}

#[test]
fn the_pod_identity_runner_narrows_the_pods_role_and_mounts_the_agents_token() {
    let text =
        std::fs::read_to_string(examples().join("kubernetes/pod-identity-runner.yaml")).unwrap();
    for needle in [
        "--identity=pod-identity",
        "--assume-role=arn:aws:iam::",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "audience: pods.eks.amazonaws.com",
        "--listen=unix:///run/irsa/helper.sock",
        "--upstream=unix:///run/docker/docker.sock",
    ] {
        assert!(
            text.contains(needle),
            "pod-identity-runner.yaml lacks {needle}"
        );
    }
    assert!(
        !text.contains("eks.amazonaws.com/role-arn"),
        "no IRSA annotation"
    );
}

#[test]
fn the_github_hosted_workflow_matches_the_schema_and_asks_for_the_oidc_token() {
    valid_workflow_with(
        "github-hosted.yml",
        &[
            "id-token: write",
            "--identity github-oidc",
            "DOCKER_HOST=unix://",
            ":pull_request",
            "irsa-secrets scan",
        ],
    );
}

/// Checks examples/github-actions/NAME against GitHub's workflow schema and that it holds
/// each of `needles`.
fn valid_workflow_with(name: &str, needles: &[&str]) {
    let file = examples().join("github-actions").join(name);
    validate(
        "check_jsonschema",
        &["--builtin-schema", "vendor.github-workflows"],
        &file,
    );
    let text = std::fs::read_to_string(&file).unwrap();
    for needle in needles {
        assert!(text.contains(needle), "{name} lacks {needle}");
    }
}

#[test]
fn github_workflow_matches_the_schema() {
    valid_workflow_with(
        "build.yml",
        &[
            "self-hosted",
            "DOCKER_HOST: unix:///run/irsa/helper.sock",
            "irsa-secrets scan",
        ],
    );
}
