//! The generated command-line documents: shell completions and the man page come from the clap
//! definitions, so they name every command the binary has.

mod common;

use common::{command, run, Radioactive};

fn stdout(args: &[&str]) -> String {
    let out = run(command().args(args), &Radioactive::default());
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_name_the_commands_and_their_flags() {
    let bash = stdout(&["completions", "bash"]);
    assert!(bash.contains("complete -F"), "{bash}");
    for word in ["proxy", "serve", "scan", "health", "--upstream", "--listen"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(stdout(&["completions", shell]).contains("proxy"), "{shell}");
    }
    let out = command().args(["completions", "tcsh"]).output().unwrap();
    assert!(!out.status.success(), "an unknown shell is refused");
}

#[test]
fn man_page_is_roff_with_every_command() {
    let page = stdout(&["man"]);
    assert!(page.contains(".TH irsa-secrets 1"), "{page}");
    assert!(page.contains(".SH NAME"), "{page}");
    for command in ["proxy", "serve", "probe", "doctor", "scan", "completions"] {
        assert!(page.contains(command), "the man page lacks {command}");
    }

    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    stdout(&["man", "--out-dir", out_dir.to_str().unwrap()]);
    for page in [
        "irsa-secrets.1",
        "irsa-secrets-proxy.1",
        "irsa-secrets-mock-write.1",
    ] {
        let text = std::fs::read_to_string(out_dir.join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
    let proxy = std::fs::read_to_string(out_dir.join("irsa-secrets-proxy.1")).unwrap();
    assert!(
        proxy.contains("upstream"),
        "the proxy page documents its flags"
    );
}

#[test]
fn health_says_whether_the_socket_accepts_connections() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("helper.sock");
    let address = format!("unix://{}", socket.display());
    let out = command()
        .args(["health", "--socket", &address])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not accept connections"), "{err}");

    let r = Radioactive::default();
    let _helper = common::Helper::serve(dir.path(), &["--mock"], &[], &r);
    let out = command()
        .args(["health", "--socket", &address])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
}
