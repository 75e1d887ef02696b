//! `proxy --config`: a `[[listener]]` serves only the identity it names, a config that leaves
//! it unclear is refused at start, and the image's `IRSA_SECRETS_LISTEN` does not conflict with
//! `--config`.

use crate::common;

use std::path::Path;

use common::{command, probe, probed, token, Helper, Projected, Radioactive, ARN};
use irsa_secrets::source::mock::MOCK_ROLE_ARN;

/// The runner's IRSA identity in the environment, as the EKS webhook sets it.
struct Env {
    _projected: Projected,
    token_file: String,
    r: Radioactive,
}

impl Env {
    fn new(dir: &Path) -> Env {
        let r = Radioactive::default();
        let t = token(3600, -10);
        r.watch(t.as_bytes());
        let projected = Projected::new(&dir.join("sa"), &t);
        Env {
            token_file: projected.token_path().display().to_string(),
            _projected: projected,
            r,
        }
    }

    fn vars(&self) -> Vec<(&str, &str)> {
        vec![
            ("AWS_WEB_IDENTITY_TOKEN_FILE", self.token_file.as_str()),
            ("AWS_ROLE_ARN", ARN),
        ]
    }
}

/// A `[[listener]]` table named NAME on DIR/NAME.sock, with no daemon behind it (probes are
/// answered regardless), and the extra keys in `body`.
fn listener(dir: &Path, name: &str, body: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\nlisten = \"unix://{}/{name}.sock\"\nupstream = \"unix://{}/no-daemon.sock\"\n{body}\n",
        dir.display(),
        dir.display()
    )
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("irsa-secrets.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `proxy --config` on `text`, expecting it to refuse at start; returns its stderr.
fn refused(dir: &Path, text: &str, env: &Env) -> String {
    let path = write_config(dir, text);
    let out = command()
        .args(["proxy", "--config"])
        .arg(&path)
        .envs(env.vars())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "started:\n{err}");
    env.r.assert_absent("stderr", err.as_bytes());
    err
}

#[test]
fn a_listener_serves_only_the_identity_it_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let env = Env::new(dir);
    let note = dir.join("note");
    std::fs::write(&note, "harmless").unwrap();
    let text = [
        listener(dir, "process", "identity = \"process\""),
        listener(dir, "own", "mock = true"),
        listener(
            dir,
            "secrets",
            &format!("secret = [\"id=note,src={}\"]", note.display()),
        ),
    ]
    .concat();
    let path = write_config(dir, &text);
    let mut cmd = command();
    cmd.args(["proxy", "--config"]).arg(&path);
    let helper = Helper::spawn(cmd, dir.join("secrets.sock"), dir, &env.vars(), &env.r);
    let ask = |name: &str, id: &str| probe(&dir.join(format!("{name}.sock")), &[id], &env.r);

    let (ok, out) = ask("process", "aws-role-arn");
    assert!(
        ok && out.contains(&probed("aws-role-arn", ARN.as_bytes())),
        "{out}"
    );
    let (ok, out) = ask("own", "aws-role-arn");
    assert!(
        ok && out.contains(&probed("aws-role-arn", MOCK_ROLE_ARN.as_bytes())),
        "a listener with its own identity serves that one, not the environment's: {out}"
    );
    for id in ["aws-web-identity-token", "aws-role-arn"] {
        let (ok, out) = ask("secrets", id);
        assert!(
            !ok && out.contains("NotFound"),
            "a listener that declares only secrets serves no identity: {out}\n{}",
            helper.log_text()
        );
    }
    let (ok, out) = ask("secrets", "note");
    assert!(ok && out.contains(&probed("note", b"harmless")), "{out}");
}

#[test]
fn a_listener_that_names_no_identity_is_refused_with_how_to_write_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let env = Env::new(dir);
    let err = refused(
        dir,
        &[
            listener(dir, "trusted", "identity = \"process\""),
            listener(dir, "untrusted", "allow_id = [\"aws-region\"]"),
        ]
        .concat(),
        &env,
    );
    assert!(
        err.contains("[[listener]] 2: this listener names no identity")
            && err.contains("write identity = \"process\" to serve the helper's")
            && err.contains("token_file and role_arn (or mock = true)"),
        "{err}"
    );
    let err = refused(
        dir,
        &listener(dir, "both", "identity = \"process\"\nmock = true"),
        &env,
    );
    assert!(
        err.contains("identity = \"process\" and mock each name an identity"),
        "{err}"
    );
    let err = refused(dir, &listener(dir, "typo", "identity = \"mine\""), &env);
    assert!(err.contains("`identity` takes \"process\""), "{err}");
    // Unknown keys still list what a listener takes, the file-only key included.
    let err = refused(dir, &listener(dir, "x", "zzz = 1"), &env);
    assert!(err.contains("a [[listener]] takes identity, "), "{err}");
}

/// Every listener is checked and built before any socket is bound: a config whose second
/// listener cannot be served touches nothing on the first one's path. A stale socket left
/// there by a helper that crashed stays as it is (a helper that bound the path first would
/// have replaced it, then removed its own on the way out), and a free path stays free.
#[test]
fn an_invalid_second_listener_leaves_the_first_ones_path_untouched() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let env = Env::new(dir);
    let first = dir.join("first.sock");
    // A socket file with no process behind it, as a killed helper leaves it.
    drop(std::os::unix::net::UnixListener::bind(&first).unwrap());
    let stale = std::fs::symlink_metadata(&first).unwrap().ino();
    let seconds = [
        // Refused by the plan: --sts has no token to exchange with the mock identity.
        (
            "mock = true\nsts = true\nregion = \"us-east-1\"",
            "listener second: --sts exchanges the real IRSA token and --mock has none",
        ),
        // Refused while building: the CA file is not there.
        (
            "mock = true\ntlscacert = \"/nonexistent/ca.pem\"",
            "listener second: ",
        ),
    ];
    for (body, want) in seconds {
        let text = [
            listener(dir, "first", "mock = true"),
            listener(dir, "free", "mock = true"),
            listener(dir, "second", body),
        ]
        .concat();
        let err = refused(dir, &text, &env);
        assert!(err.contains(want), "{err}");
        let now = std::fs::symlink_metadata(&first).map(|m| m.ino());
        assert_eq!(
            now.ok(),
            Some(stale),
            "the first listener's path was bound before the second was checked"
        );
        assert!(!dir.join("free.sock").exists());
    }
}

#[test]
fn listen_from_the_environment_does_not_conflict_with_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let env = Env::new(dir);
    let path = write_config(dir, &listener(dir, "only", "mock = true"));
    let image_default = format!("unix://{}/image-default.sock", dir.display());
    // As the image sets it, and as an operator might blank it.
    for value in [image_default.as_str(), ""] {
        let mut cmd = command();
        cmd.args(["proxy", "--config"]).arg(&path);
        let mut vars = env.vars();
        vars.push(("IRSA_SECRETS_LISTEN", value));
        let mut helper = Helper::spawn(cmd, dir.join("only.sock"), dir, &vars, &env.r);
        let (ok, out) = probe(&helper.socket, &["aws-role-arn"], &env.r);
        assert!(ok, "{out}");
        assert!(!dir.join("image-default.sock").exists());
        assert!(helper.terminate().success());
    }
    // On the command line, --listen and --config still conflict.
    let out = command()
        .args(["proxy", "--listen"])
        .arg(&image_default)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("give listeners either in --config or with --listen, not both"),
        "{err}"
    );
}

/// examples/fleet/irsa-secrets.toml starts as written, its paths moved into a scratch directory
/// and its uid allow list to this test's uid: the trusted listener serves the identity, the
/// untrusted one only the region.
#[test]
fn the_fleet_example_starts_and_keeps_the_untrusted_listener_to_the_region() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let env = Env::new(dir);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet/irsa-secrets.toml");
    let mut text = std::fs::read_to_string(example).unwrap();
    let uid = nix::unistd::Uid::effective().as_raw();
    for (from, to) in [
        ("/run/irsa/", format!("{}/", dir.display())),
        ("unix:///var/run/", format!("unix://{}/", dir.display())),
        (
            "/var/log/irsa-secrets/audit.jsonl",
            dir.join("audit.jsonl").display().to_string(),
        ),
        ("127.0.0.1:9464", "127.0.0.1:0".into()),
        ("allow_uid = [1000]", format!("allow_uid = [{uid}]")),
    ] {
        assert!(text.contains(from), "the example no longer has {from}");
        text = text.replace(from, &to);
    }
    let path = write_config(dir, &text);
    let mut cmd = command();
    cmd.args(["proxy", "--config"]).arg(&path);
    let helper = Helper::spawn(cmd, dir.join("untrusted.sock"), dir, &env.vars(), &env.r);
    let ask = |name: &str, id: &str| probe(&dir.join(format!("{name}.sock")), &[id], &env.r);
    let (ok, out) = ask("trusted", "aws-role-arn");
    assert!(
        ok && out.contains(&probed("aws-role-arn", ARN.as_bytes())),
        "{out}\n{}",
        helper.log_text()
    );
    let (ok, out) = ask("untrusted", "aws-region");
    assert!(
        ok && out.contains(&probed("aws-region", b"eu-west-1")),
        "{out}"
    );
    for id in ["aws-role-arn", "pypi-token", "npmrc"] {
        let (ok, out) = ask("untrusted", id);
        assert!(!ok && out.contains("NotFound"), "{id}: {out}");
    }
    // Registry passwords: the trusted listener answers every ECR host, the untrusted one only
    // the mirror.
    let log = helper.log_text();
    let registries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("registry credentials: answered"))
        .collect();
    assert!(
        registries.len() == 2
            && registries[0].contains("trusted")
            && registries[0].contains("allowed=None")
            && registries[1].contains("untrusted")
            && registries[1].contains(r#"allowed=Some({"registry-mirror.ci.internal"})"#),
        "{registries:#?}"
    );
}
