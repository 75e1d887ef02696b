//! The examples people copy are valid: the Kubernetes manifests against the Kubernetes schemas
//! (kubernetes-validate, strict: unknown fields are errors), the GitHub Actions workflows and the
//! GitLab pipeline against their schemas (check-jsonschema), the ARC values files against the
//! charts' values keys and their pod specs against the Kubernetes schemas
//! (tests/python/chart_values.py: no chart can be rendered here), the GitLab Runner config
//! against the executor's keys, the EC2 unit with `systemd-analyze verify`. The validators
//! bundle their schemas and run offline; `scripts/deps-python` and `scripts/deps` install them.
//! The Dockerfiles are built in tests/it/ship.rs.

use crate::common;

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
fn the_github_hosted_workflow_runs_the_build_under_irsa_secrets_run() {
    let text = valid_workflow_with(
        "github-hosted.yml",
        &[
            "id-token: write",
            "runs-on: ubuntu-latest",
            "irsa-secrets run --identity github-oidc",
            "--\n          docker buildx build",
            ":pull_request",
            "irsa-secrets scan",
        ],
    );
    // The helper's flags, between `run` and `--`, are proxy's.
    let run = text.split("irsa-secrets run ").nth(1).unwrap();
    let flags: Vec<&str> = run
        .split(" --\n")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(flags.len(), 5, "{flags:?}");
    assert_eq!(proxy_lacks(&flags), Vec::<String>::new());
}

#[test]
fn the_workflow_check_rejects_a_bad_permission_and_flag() {
    let good =
        std::fs::read_to_string(examples().join("github-actions/github-hosted.yml")).unwrap();
    let bad = good.replacen("id-token: write", "id-token: writ", 1);
    assert_ne!(good, bad);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yml");
    std::fs::write(&file, bad).unwrap();
    let (out, text) = common::python::run(
        common::python::python3()
            .args(["-m", "check_jsonschema", "--builtin-schema"])
            .arg("vendor.github-workflows")
            .arg(&file),
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("writ"), "{text}");
    assert_eq!(proxy_lacks(&["--identity", "--stss"]), ["--stss"]);
}

/// The `--` words of `words` that `irsa-secrets proxy --help` does not define.
fn proxy_lacks(words: &[&str]) -> Vec<String> {
    lacks("proxy", words)
}

/// The `--` words of `words` (`--flag` or `--flag=VALUE`) that `irsa-secrets COMMAND --help`
/// does not define (on a line of its own, as `-s, --flag <VALUE>` or `--flag`; a mention in
/// prose does not count).
fn lacks(command: &str, words: &[&str]) -> Vec<String> {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_irsa-secrets"))
        .args([command, "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let defined: Vec<&str> = help
        .lines()
        .flat_map(|l| {
            l.split([' ', ','])
                .filter(|w| !w.is_empty())
                .take_while(|w| w.starts_with('-'))
        })
        .collect();
    words
        .iter()
        .map(|w| w.split('=').next().unwrap())
        .filter(|w| w.starts_with("--") && !defined.contains(w))
        .map(|w| w.to_string())
        .collect()
}

/// The helper's command lines in a pod spec, values file or pipeline: each `- proxy` list item
/// with the `- --flag` items under it, and each inline `["/irsa-secrets", "COMMAND", ...]`.
fn helper_command_lines(text: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "- proxy" {
            let indent = line.len() - line.trim_start().len();
            let flags = lines[i + 1..]
                .iter()
                .take_while(|l| l.len() - l.trim_start().len() == indent)
                .filter_map(|l| l.trim().strip_prefix("- "))
                .map(|w| w.trim_matches('"').to_string());
            found.push(std::iter::once("proxy".to_string()).chain(flags).collect());
        } else if let Some(start) = line.find("[\"/irsa-secrets\"") {
            let words: Vec<String> = serde_json::from_str(&line[start..]).unwrap();
            found.push(words[1..].to_vec());
        }
    }
    found
}

#[test]
fn the_deployment_files_give_the_helper_flags_it_has() {
    let files = [
        "arc/dind-values.yaml",
        "arc/dind-experimental-values.yaml",
        "arc/buildkitd-values.yaml",
        "kubernetes/dind-runner.yaml",
        "kubernetes/buildkitd-runner.yaml",
        "kubernetes/pod-identity-runner.yaml",
        "gitlab-runner/.gitlab-ci.yml",
    ];
    for file in files {
        let text = std::fs::read_to_string(examples().join(file)).unwrap();
        let lines = helper_command_lines(&text);
        assert!(
            lines.iter().any(|l| l[0] == "proxy" && l.len() > 2),
            "{file}: no helper command line found: {lines:?}"
        );
        for words in lines {
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            assert_eq!(lacks(words[0], &words[1..]), Vec::<String>::new(), "{file}");
        }
    }
    // The reader finds both forms, and the check names a flag proxy lacks.
    let lines = helper_command_lines(
        "  args:\n    - proxy\n    - --listn=unix:///x\n  other: 1\n  command: [\"/irsa-secrets\", \"health\", \"--socket=unix:///x\"]\n",
    );
    assert_eq!(
        lines,
        [
            vec!["proxy", "--listn=unix:///x"],
            vec!["health", "--socket=unix:///x"]
        ]
    );
    assert_eq!(lacks("proxy", &["--listn=unix:///x"]), ["--listn"]);
    assert_eq!(
        lacks("health", &["--socket=unix:///x"]),
        Vec::<String>::new()
    );
}

/// Checks examples/github-actions/NAME against GitHub's workflow schema and that it holds
/// each of `needles`; its text.
fn valid_workflow_with(name: &str, needles: &[&str]) -> String {
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
    text
}

#[test]
fn github_workflow_matches_the_schema() {
    let _ = valid_workflow_with(
        "build.yml",
        &[
            "self-hosted",
            "DOCKER_HOST: unix:///run/irsa/helper.sock",
            "irsa-secrets scan",
        ],
    );
}

/// Runs tests/python/chart_values.py: the values file's keys against the chart's values.yaml
/// keys (recorded there, with the chart version and commit), its pod spec against the
/// Kubernetes schemas. The output, and whether it passed.
fn chart_values(chart: &str, file: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/chart_values.py");
    let (out, text) = common::python::run(
        common::python::python3()
            .arg(script)
            .arg(chart)
            .arg(file)
            .arg(KUBERNETES),
    );
    (out.status.success(), text)
}

#[test]
fn the_arc_values_files_use_the_charts_keys_and_valid_pod_specs() {
    for (chart, name) in [
        ("gha-runner-scale-set", "dind-values.yaml"),
        ("gha-runner-scale-set", "buildkitd-values.yaml"),
        (
            "gha-runner-scale-set-experimental",
            "dind-experimental-values.yaml",
        ),
    ] {
        let (ok, text) = chart_values(chart, &examples().join("arc").join(name));
        assert!(ok, "{name}:\n{text}");
        assert!(
            text.contains("passed for resource pod/runner"),
            "{name}: {text}"
        );
    }
}

#[test]
fn the_chart_check_rejects_a_misspelt_key_and_a_bad_pod_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(examples().join("arc/dind-values.yaml")).unwrap();
    for (from, to, says) in [
        (
            "  type: dind",
            "  typ: dind",
            "containerMode.typ: not a key of the chart's values.yaml",
        ),
        (
            "readOnlyRootFilesystem",
            "readOnlyRootFilesytem",
            "readOnlyRootFilesytem",
        ),
    ] {
        let bad = good.replacen(from, to, 1);
        assert_ne!(good, bad);
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, bad).unwrap();
        let (ok, text) = chart_values("gha-runner-scale-set", &file);
        assert!(!ok && text.contains(says), "{text}");
    }
}

#[test]
fn the_arc_values_wire_the_helper_and_give_it_alone_the_identity() {
    let read = |name: &str| std::fs::read_to_string(examples().join("arc").join(name)).unwrap();
    for (name, needles) in [
        (
            "dind-values.yaml",
            &[
                "  type: dind",
                "eks.amazonaws.com/skip-containers: init-dind-externals,runner,dind",
                "value: unix:///var/run/irsa-secrets.sock",
                "--listen=unix:///var/run/irsa-secrets.sock",
                "--upstream=unix:///var/run/docker.sock",
                "- name: dind-sock\n            mountPath: /var/run\n",
                "runAsGroup: 123",
                "the runner can still reach the daemon's own socket",
            ][..],
        ),
        (
            "dind-experimental-values.yaml",
            &[
                "  mode: dind",
                "dockerSock: unix:///var/run/docker/docker.sock",
                "eks.amazonaws.com/skip-containers: runner,dind,init-dind-externals",
                "eks.amazonaws.com/role-arn: arn:aws:iam::",
                "restartPolicy: Always",
                "value: unix:///var/run/docker/irsa-secrets.sock",
                "--listen=unix:///var/run/docker/irsa-secrets.sock",
                "--upstream=unix:///var/run/docker/docker.sock",
                "- name: dind-sock\n              mountPath: /var/run/docker\n",
                "the runner can still reach\n# the daemon's own socket",
            ][..],
        ),
        (
            "buildkitd-values.yaml",
            &[
                "eks.amazonaws.com/skip-containers: runner,buildkitd",
                "--driver remote --use unix:///run/irsa/helper.sock",
                "--upstream=unix:///run/buildkit/buildkitd.sock",
                "--upstream-kind=buildkit",
            ][..],
        ),
    ] {
        let text = read(name);
        for needle in needles {
            assert!(text.contains(needle), "{name} lacks {needle:?}");
        }
        assert!(
            text.contains("Written against"),
            "{name} names no chart version"
        );
        assert!(
            text.contains("Pod Identity"),
            "{name} says nothing of Pod Identity"
        );
    }
}

/// The `[runners.kubernetes]` keys the example may use, from GitLab Runner's documentation of
/// the Kubernetes executor (the runner is not started here: no GitLab to register with).
const GITLAB_KEYS: &[&str] = &[
    "concurrent",
    "runners",
    "runners.name",
    "runners.url",
    "runners.token",
    "runners.executor",
    "runners.environment",
    "runners.kubernetes",
    "runners.kubernetes.namespace",
    "runners.kubernetes.image",
    "runners.kubernetes.privileged",
    "runners.kubernetes.service_account",
    "runners.kubernetes.pod_annotations",
    "runners.kubernetes.volumes",
    "runners.kubernetes.volumes.empty_dir",
    "runners.kubernetes.volumes.empty_dir.name",
    "runners.kubernetes.volumes.empty_dir.mount_path",
];

/// The dotted key paths of a TOML table (arrays of tables by their own name; maps named
/// `pod_annotations` are free-form and not descended into).
fn toml_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        out.push(path.clone());
        if key == "pod_annotations" {
            continue;
        }
        match value {
            toml::Value::Table(t) => toml_keys(t, &path, out),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(t) = item {
                        toml_keys(t, &path, out);
                    }
                }
            }
            _ => {}
        }
    }
}

#[test]
fn the_gitlab_runner_example_uses_the_executors_keys_and_a_valid_pipeline() {
    let dir = examples().join("gitlab-runner");
    validate(
        "check_jsonschema",
        &["--builtin-schema", "vendor.gitlab-ci"],
        &dir.join(".gitlab-ci.yml"),
    );
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let table: toml::Table = toml::from_str(&config).unwrap();
    let mut keys = Vec::new();
    toml_keys(&table, "", &mut keys);
    let unknown: Vec<&String> = keys
        .iter()
        .filter(|k| !GITLAB_KEYS.contains(&k.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "not [runners.kubernetes] keys: {unknown:?}"
    );
    for needle in [
        "executor = \"kubernetes\"",
        "DOCKER_HOST=unix:///run/irsa/helper.sock",
        "\"eks.amazonaws.com/skip-containers\" = \"build,helper,svc-0\"",
        "mount_path = \"/var/run/docker\"",
        "mount_path = \"/run/irsa\"",
    ] {
        assert!(config.contains(needle), "config.toml lacks {needle}");
    }
    // svc-0 is the daemon and svc-1 the helper: the annotation skips all but the helper.
    let ci = std::fs::read_to_string(dir.join(".gitlab-ci.yml")).unwrap();
    let dind = ci.find("- name: docker:27-dind").unwrap();
    let helper = ci.find("- name: irsa-secrets:").unwrap();
    assert!(dind < helper, "the daemon is the first service");
    assert_eq!(ci.matches("  - name: ").count(), 2, "two services");
    for needle in [
        "--listen=unix:///run/irsa/helper.sock",
        "--upstream=unix:///var/run/docker/docker.sock",
        "--host=unix:///var/run/docker/docker.sock",
    ] {
        assert!(ci.contains(needle), ".gitlab-ci.yml lacks {needle}");
    }
}

/// `systemd-analyze verify` on `unit` (its binary path set to the one this build made), with
/// no warning allowed: its output and whether it passed.
fn verify_unit(unit: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("irsa-secrets.service");
    std::fs::write(
        &file,
        unit.replace(
            "/usr/local/bin/irsa-secrets",
            env!("CARGO_BIN_EXE_irsa-secrets"),
        ),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .expect("systemd-analyze (scripts/deps installs systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.trim().is_empty(), text)
}

#[test]
fn the_ec2_unit_verifies_and_runs_the_helper_with_real_flags() {
    let unit = std::fs::read_to_string(examples().join("ec2/irsa-secrets.service")).unwrap();
    let (ok, text) = verify_unit(&unit);
    assert!(ok, "{text}");
    // A misspelt setting is reported, or the check above proves nothing.
    let (ok, text) = verify_unit(&unit.replacen("ProtectHome=", "ProtectHomee=", 1));
    assert!(!ok && text.contains("ProtectHomee"), "{text}");

    let exec: String = unit
        .split("ExecStart=")
        .nth(1)
        .unwrap()
        .lines()
        .map(|l| l.trim().trim_end_matches('\\'))
        .take_while(|l| !l.is_empty() && !l.contains('='))
        .collect::<Vec<_>>()
        .join(" ");
    let flags: Vec<&str> = exec
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .collect();
    assert_eq!(flags.len(), 5, "{exec}");
    assert_eq!(proxy_lacks(&flags), Vec::<String>::new());
    for needle in [
        "--identity imds",
        "DynamicUser=yes",
        "SupplementaryGroups=docker",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(
            unit.contains(needle) || exec.contains(needle),
            "the unit lacks {needle}"
        );
    }
}
