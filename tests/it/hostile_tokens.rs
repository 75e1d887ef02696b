//! Tokens whose time claims lie past what any clock (or RFC 3339) can represent: `token`,
//! `token --json`, `doctor` and a GetSecret through `serve` each refuse them with a message that
//! names the claim, instead of panicking (exit 101, or a reset stream for the build).

use crate::common;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{command, run, Helper, Radioactive, ARN};
use irsa_secrets::source::jwt::{encode_unverifiable, Audience, Claims};
use tonic::Code;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token valid for an hour from now, with `edit` applied to its claims.
fn token(edit: impl FnOnce(&mut Claims)) -> String {
    let mut claims = Claims {
        iss: Some("https://oidc.eks.eu-west-1.amazonaws.com/id/TEST".into()),
        sub: Some("system:serviceaccount:ci:runner".into()),
        aud: Audience::One("sts.amazonaws.com".into()),
        exp: now() + 3600,
        nbf: Some(now() - 10),
        iat: Some(now() - 10),
        other: Default::default(),
    };
    edit(&mut claims);
    encode_unverifiable(&claims, "test", "signature")
}

/// The hostile tokens and the claim each one's message must name.
fn hostile() -> Vec<(&'static str, String)> {
    vec![
        ("exp", token(|c| c.exp = u64::MAX)),
        ("exp", token(|c| c.exp = u64::MAX - 1)),
        ("iat", token(|c| c.iat = Some(u64::MAX))),
        ("nbf", token(|c| c.nbf = Some(u64::MAX - 1))),
        // Past year 9999: representable as a SystemTime, not as RFC 3339.
        ("nbf", token(|c| c.nbf = Some(300_000_000_000))),
    ]
}

fn write(dir: &Path, name: &str, token: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, token).unwrap();
    path.display().to_string()
}

fn message(claim: &str) -> String {
    format!("its {claim} claim is after 9999-12-31T23:59:59Z, a time no clock reaches")
}

#[test]
fn token_and_doctor_refuse_times_no_clock_reaches() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    for (i, (claim, t)) in hostile().into_iter().enumerate() {
        r.watch(t.as_bytes());
        let file = write(dir.path(), &format!("token-{i}"), &t);
        for args in [&["token"][..], &["token", "--json"], &["doctor"]] {
            let out = run(
                command()
                    .args(args)
                    .env("AWS_WEB_IDENTITY_TOKEN_FILE", &file)
                    .env("AWS_ROLE_ARN", ARN),
                &r,
            );
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(1), "{args:?} {claim}:\n{text}");
            assert!(text.contains(&message(claim)), "{args:?} {claim}:\n{text}");
            assert!(!text.contains("panicked"), "{args:?} {claim}:\n{text}");
        }
    }
}

#[tokio::test]
async fn get_secret_through_serve_names_the_claim_and_the_helper_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let r = Radioactive::default();
    let good = token(|_| {});
    r.watch(good.as_bytes());
    let file = write(dir.path(), "token", &good);
    let h = Helper::serve(
        dir.path(),
        &[],
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", &file),
            ("AWS_ROLE_ARN", ARN),
        ],
        &r,
    );
    let mut c = h.client().await;
    for (claim, t) in hostile() {
        r.watch(t.as_bytes());
        write(dir.path(), "token", &t);
        let err = h
            .get(&mut c, "aws-web-identity-token")
            .await
            .expect_err(claim);
        assert_eq!(err.code(), Code::FailedPrecondition, "{claim}: {err:?}");
        assert!(err.message().contains(&message(claim)), "{claim}: {err:?}");
    }
    // The same connection still gets answers once the token is sound again.
    write(dir.path(), "token", &good);
    let value = h.get(&mut c, "aws-web-identity-token").await.unwrap();
    assert_eq!(value.expose(), good.as_bytes());
    assert!(!h.log_text().contains("panicked"), "{}", h.log_text());
}
