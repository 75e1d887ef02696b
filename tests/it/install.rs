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
/// `scripts/deps-engine --archive` with `etc` as /etc/apt: what it prints, or its error.
fn engine_archive(etc: &Path) -> (bool, String) {
    let out = Command::new(repo().join("scripts/deps-engine"))
        .arg("--archive")
        .env("IRSA_SECRETS_APT_ETC", etc)
        .env_remove("IRSA_SECRETS_DEBIAN_ARCHIVE")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    (out.status.success(), format!("{stdout}{stderr}"))
}

/// The current engine comes from Debian's own archive, whichever way the machine's sources are
/// written: a vendor's repository (Docker's, with its own key and no `main`) or a security suite
/// listed first is passed over, and no Debian source at all is an error that says what to set.
#[test]
fn deps_engine_takes_debians_archive_from_the_machines_sources() {
    let etc = tempfile::tempdir().unwrap();
    let parts = etc.path().join("sources.list.d");
    std::fs::create_dir_all(&parts).unwrap();
    let (ok, text) = engine_archive(etc.path());
    assert!(
        !ok && text.contains("IRSA_SECRETS_DEBIAN_ARCHIVE="),
        "{text}"
    );

    // One-line sources.
    std::fs::write(
        etc.path().join("sources.list"),
        "# a comment\n\
         deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.gpg] https://download.docker.com/linux/debian bookworm stable\n\
         deb [signed-by=/etc/apt/keyrings/vendor.gpg] https://vendor.example/debian bookworm main\n\
         deb http://security.debian.org/debian-security bookworm-security main\n\
         deb http://mirror.example/debian/ bookworm main contrib\n",
    )
    .unwrap();
    assert_eq!(
        engine_archive(etc.path()),
        (true, "http://mirror.example/debian\n".to_string())
    );

    // deb822 sources come first, in name order: Docker's sorts before Debian's.
    std::fs::write(
        parts.join("docker.sources"),
        "Types: deb\nURIs: https://download.docker.com/linux/debian\nSuites: bookworm\n\
         Components: stable\nSigned-By: /etc/apt/keyrings/docker.asc\n",
    )
    .unwrap();
    std::fs::write(
        parts.join("debian.sources"),
        "Types: deb\n# a snapshot address\nURIs: http://deb.debian.org/debian-security\n\
         Suites: bookworm-security\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
         Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
         Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )
    .unwrap();
    assert_eq!(
        engine_archive(etc.path()),
        (true, "http://deb.debian.org/debian\n".to_string())
    );
}

/// A download that fails (the archive on a closed loopback port) ends `scripts/deps-engine`
/// with the step named: the tests never fall back to the system's engine in silence.
#[test]
fn deps_engine_names_a_failed_download() {
    let engine = tempfile::tempdir().unwrap();
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let archive = format!("http://127.0.0.1:{closed}/debian");
    let out = Command::new(repo().join("scripts/deps-engine"))
        .env("IRSA_SECRETS_ENGINE_DIR", engine.path())
        .env("IRSA_SECRETS_DEBIAN_ARCHIVE", &archive)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "scripts/deps-engine: failed (100): reading sid's package lists from {archive}\n"
        )),
        "{stderr}"
    );
    assert!(!engine.path().join("versions.txt").exists());
}

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
