//! The Python test tools, from the project's virtualenv (scripts/deps-python installs them,
//! scripts/test puts target/pyenv/bin first on PATH).

use std::process::{Command, Output};

/// Runs `python3 ARGS...`: its output and both streams as text. Panics, saying how to install
/// the tools, when python3 cannot start or a module is missing.
pub fn run(args: &mut Command) -> (Output, String) {
    let fix = "run scripts/deps-python and put target/pyenv/bin first on PATH";
    let out = args
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}: {fix}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named"),
        "a Python module is missing: {fix}\n{text}"
    );
    (out, text)
}

/// A `python3` command, to give to [`run`].
pub fn python3() -> Command {
    Command::new("python3")
}
