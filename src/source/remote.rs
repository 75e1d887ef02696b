//! What the sources that call a remote endpoint (STS, GitHub's token endpoint) share: bounded
//! retries with jittered exponential backoff, so each gives up after a known number of attempts
//! and says why, and quoting the other side's words without ever echoing a secret.

use std::future::Future;
use std::time::Duration;

use super::SourceError;
use crate::bound::quote;

/// What a failed attempt means for the next one.
pub(crate) enum Failure {
    /// Worth another attempt (throttling, 5xx, timeouts, connection errors); the reason, which
    /// never holds a secret, is logged and quoted once the attempts run out.
    Transient(String),
    /// Final: retrying cannot help.
    Fatal(SourceError),
}

/// Runs `attempt` up to `attempts` times, pausing `first_pause` (doubled each time, with jitter)
/// after each transient failure. On `Err`, `Failure::Transient` carries the last reason once
/// every attempt failed; `what` names the call in the retry warnings.
pub(crate) async fn retrying<T, Fut>(
    what: &str,
    attempts: u32,
    first_pause: Duration,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, Failure>
where
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut delay = first_pause;
    let mut tried = 1;
    loop {
        match attempt().await {
            Err(Failure::Transient(why)) if tried < attempts => {
                let pause = delay.mul_f64(rand::random_range(0.5..1.0));
                tracing::warn!(attempt = tried, error = %why, retry_in = ?pause, "{what} failed; retrying");
                tokio::time::sleep(pause).await;
                delay *= 2;
                tried += 1;
            }
            done => return done,
        }
    }
}

/// Makes text from the other side safe to log: bounded and single-line as [`quote`] shows it,
/// and never `secret`, even if the server echoed it back.
pub(crate) fn scrub(text: &str, secret: &str) -> String {
    if secret.len() >= 8 {
        quote(&text.replace(secret, "[redacted]")).to_string()
    } else {
        quote(text).to_string()
    }
}

/// The error and its sources on one line: hyper's errors say little at the top level.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ErrorKind;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn scrub_bounds_flattens_and_hides_the_token() {
        assert_eq!(
            scrub("bad token eyJhbGciOi.x.y\nhere", "eyJhbGciOi.x.y"),
            "bad token [redacted]\\nhere"
        );
        let long = "x".repeat(10_000);
        assert!(scrub(&long, "eyJhbGciOi").ends_with("…[10000 bytes]"));
    }

    #[tokio::test]
    async fn transient_failures_are_retried_up_to_the_limit_and_fatal_ones_never() {
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = retrying("test call", 3, Duration::from_millis(1), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failure::Transient("down".into()))
        })
        .await;
        assert!(matches!(out, Err(Failure::Transient(why)) if why == "down"));
        assert_eq!(calls.swap(0, Ordering::SeqCst), 3);

        let out: Result<(), _> = retrying("test call", 3, Duration::from_millis(1), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failure::Fatal(SourceError::new(ErrorKind::Denied, "no")))
        })
        .await;
        assert!(matches!(out, Err(Failure::Fatal(_))));
        assert_eq!(calls.swap(0, Ordering::SeqCst), 1);

        let out = retrying("test call", 3, Duration::from_millis(1), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(Failure::Transient("once".into())),
                n => Ok(n),
            }
        })
        .await;
        assert!(matches!(out, Ok(1)));
    }
}
