//! The scripts a new user runs first: the install scripts say what they install and name the
//! step that failed, and `scripts/demo` runs end to end and shows its progress.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `step` announces each step, and a failing one is named with its exit code: an install never
/// ends in silence.
#[test]
fn a_failing_step_is_named_with_its_exit_code() {
    let out = Command::new("bash")
        .arg("-c")
        .arg(". scripts/lib/step.sh; script=x; step 'doing a' true; step 'doing b' sh -c 'exit 7'; echo unreachable")
        .current_dir(repo())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert_eq!(stderr, "x: doing a\nx: doing b\nx: failed (7): doing b\n");
    assert!(!stdout.contains("unreachable"), "{stdout}");
}

/// From a state where none of the pinned tools are installed (a new virtualenv) and PyPI cannot
/// be reached (an index on a closed loopback port), `scripts/deps-python` says what it was
/// installing and that it failed, instead of exiting without a word.
#[test]
fn deps_python_names_what_it_could_not_install() {
    let venv = tempfile::tempdir().unwrap();
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let out = Command::new(repo().join("scripts/deps-python"))
        .env("IRSA_SECRETS_PYENV", venv.path().join("pyenv"))
        .env("PIP_INDEX_URL", format!("http://127.0.0.1:{closed}/simple"))
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_RETRIES", "0")
        .env("PIP_TIMEOUT", "2")
        .env("PIP_NO_CACHE_DIR", "1")
        .env_remove("PIP_EXTRA_INDEX_URL")
        .env_remove("PIP_FIND_LINKS")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    let pyenv = venv.path().join("pyenv");
    assert!(
        stderr.contains(&format!(
            "scripts/deps-python: creating the virtualenv {}\n",
            pyenv.display()
        )),
        "{stderr}"
    );
    let failed = stderr
        .lines()
        .find(|l| l.starts_with("scripts/deps-python: failed ("))
        .unwrap_or_else(|| panic!("no line names the failed step:\n{stderr}"));
    for pin in [
        "moto[server]==5.2.1",
        "kubernetes-validate==1.37.0",
        "check-jsonschema==0.39.0",
        "grpcio==1.85.1",
    ] {
        assert!(failed.contains(pin), "{failed}");
    }
    assert!(failed.contains("(pip, from PyPI)"), "{failed}");
    assert!(
        Path::new(&pyenv).join("bin/python").exists(),
        "the virtualenv is kept for the next run"
    );
}

/// The README's first command: a real docker build through the helper on the mock identity. It
/// says that it is building before cargo starts, shows cargo's own progress, and checks that the
/// step saw what the helper serves.
#[test]
fn demo_runs_and_shows_its_progress() {
    let out = Command::new(repo().join("scripts/demo"))
        .env_remove("DOCKER_HOST")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("== building irsa-secrets"),
        "the first line says what the long first step does:\n{stdout}"
    );
    assert!(
        stderr.contains("Finished `dev` profile"),
        "cargo's progress is shown, not hidden:\n{stderr}"
    );
    assert!(
        stdout.contains("== the step saw the same token and role ARN, with no --secret flag"),
        "{stdout}"
    );
    assert!(stdout.contains("secret served"), "{stdout}");
}
