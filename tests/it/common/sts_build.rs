//! `--sts` through a real build, for the Docker front door test: a `RUN` step that mounts
//! `aws-credentials`, checks it is a `[default]` profile and prints a SHA-256 of each key (never
//! a key), and the check that those are the keys moto issued.

use sha2::{Digest, Sha256};

use super::moto::{Issued, Moto};

/// The keys a `[default]` profile must hold, in the order the step prints them.
const KEYS: [&str; 3] = [
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
];

/// Flags that make the helper exchange the token with `moto`'s STS.
pub fn helper_args(moto: &Moto) -> Vec<String> {
    [
        "--sts",
        "--sts-endpoint",
        &moto.url,
        "--region",
        "us-east-1",
    ]
    .map(String::from)
    .to_vec()
}

/// Shell that parses the credentials file at `path` and prints `KEY SHA256` per key; fails if
/// the file has no `[default]` header or lacks a key.
pub fn script(path: &str) -> String {
    format!(
        "f={path}; test \"$(head -n1 $f)\" = '[default]'; for k in {}; do \
         v=$(sed -n \"s/^$k = //p\" $f); test -n \"$v\"; \
         echo \"$k $(printf %s \"$v\" | sha256sum | cut -d' ' -f1)\"; done",
        KEYS.join(" ")
    )
}

/// The Dockerfile line (after `FROM`) of the build step.
pub fn dockerfile_step() -> String {
    format!(
        "RUN --mount=type=secret,id=aws-credentials,required {}",
        script("/run/secrets/aws-credentials")
    )
}

/// Asserts the step's `output` shows the fingerprints of exactly the keys in `issued`.
pub fn check_credentials_file(output: &str, issued: &Issued) {
    let values = [
        &issued.access_key_id,
        &issued.secret_access_key,
        &issued.session_token,
    ];
    for (key, value) in KEYS.iter().zip(values) {
        let line = format!("{key} {}", hex::encode(Sha256::digest(value.as_bytes())));
        assert!(
            output.contains(&line),
            "the build's credentials file does not hold the {key} moto issued:\n{output}"
        );
    }
}

/// What moto issued, for synchronous tests (the Docker test is one): runs its own runtime.
pub fn issued_blocking(moto: &Moto) -> Vec<Issued> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(moto.issued())
}
