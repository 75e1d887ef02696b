//! The provider's rules, against a source whose answers the test chooses.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tonic::Code;

use super::*;
use crate::observe::audit::Audit;
use crate::source::SourceError;

/// Serves `value` (or fails with `kind`) for every id it is given.
#[derive(Debug)]
struct Fixed {
    ids: Vec<&'static str>,
    answer: Result<Vec<u8>, ErrorKind>,
}

impl Source for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }
    fn ids(&self) -> Vec<String> {
        self.ids.iter().map(|s| s.to_string()).collect()
    }
    fn fetch<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<SecretValue>, SourceError>> {
        let answer = match &self.answer {
            Ok(v) => Ok(Some(SecretValue::new(v.clone()))),
            Err(kind) => Err(SourceError::new(
                *kind,
                "the fixed source failed; check nothing",
            )),
        };
        Box::pin(async move { answer })
    }
}

fn serving(answer: Result<Vec<u8>, ErrorKind>) -> Provider {
    Provider::new(vec![Arc::new(Fixed {
        ids: vec!["a", "b"],
        answer,
    })])
}

async fn code_of(provider: &Provider, id: &str) -> Code {
    provider
        .get(id, &Caller::default())
        .await
        .unwrap_err()
        .code()
}

#[tokio::test]
async fn served_ids_answer_and_others_are_not_found() {
    let p = serving(Ok(b"value".to_vec()));
    assert_eq!(
        p.get("a", &Caller::default()).await.unwrap().expose(),
        b"value"
    );
    assert_eq!(code_of(&p, "c").await, Code::NotFound);
    assert_eq!(p.ids(), ["a", "b"]);
    assert!(p.owns("b") && !p.owns("c"));
}

#[tokio::test]
async fn a_listener_policy_hides_the_ids_it_does_not_allow() {
    let allowed = BTreeSet::from(["a".to_string()]);
    let p = serving(Ok(b"value".to_vec())).with_policy("untrusted", Some(allowed));
    assert_eq!(p.listener(), "untrusted");
    assert!(p.get("a", &Caller::default()).await.is_ok());
    assert_eq!(
        code_of(&p, "b").await,
        Code::NotFound,
        "refused as if absent"
    );
    assert_eq!(p.ids(), ["a"]);
    assert!(!p.owns("b"));
}

#[tokio::test]
async fn empty_and_oversized_values_are_refused() {
    assert_eq!(
        code_of(&serving(Ok(Vec::new())), "a").await,
        Code::FailedPrecondition
    );
    let big = vec![b'x'; MAX_SECRET_SIZE + 1];
    let e = serving(Ok(big))
        .get("a", &Caller::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("over BuildKit's limit"),
        "{}",
        e.message()
    );
    let fits = vec![b'x'; MAX_SECRET_SIZE];
    assert!(serving(Ok(fits)).get("a", &Caller::default()).await.is_ok());
}

#[tokio::test]
async fn source_failures_become_codes_buildkit_reports() {
    for (kind, code) in [
        (ErrorKind::Missing, Code::FailedPrecondition),
        (ErrorKind::Invalid, Code::FailedPrecondition),
        (ErrorKind::Denied, Code::PermissionDenied),
        (ErrorKind::Io, Code::Unavailable),
    ] {
        let e = serving(Err(kind))
            .get("a", &Caller::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{kind:?}");
        assert!(e
            .message()
            .starts_with("irsa-secrets: the fixed source failed"));
    }
}

#[tokio::test]
async fn no_value_leaves_without_its_audit_record() {
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("audit.log");
    let audit = Audit::open(trail.to_str().unwrap(), None).unwrap();
    let p = serving(Ok(b"s3cr3t-bytes".to_vec())).with_observers(audit, Metrics::default());
    p.get("a", &Caller::default()).await.unwrap();
    let text = std::fs::read_to_string(&trail).unwrap();
    assert!(
        text.contains(r#""id":"a""#) && text.contains(r#""outcome":"served""#),
        "{text}"
    );
    assert!(
        !text.contains("s3cr3t"),
        "the value is never written: {text}"
    );
}

#[test]
fn buildkits_own_optional_lookups_are_recognised() {
    assert!(is_buildkit_probe("GIT_AUTH_TOKEN.github.com"));
    assert!(is_buildkit_probe("HTTP_AUTH_HEADER_example.com"));
    assert!(!is_buildkit_probe("aws-role-arn"));
}
