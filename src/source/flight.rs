//! One call at a time to a remote issuer (STS, an agent, ECR, Secrets Manager), its outcome
//! shared with everyone who waited for it: fifty builds that ask at once make one call, and
//! when that call fails they all get its error instead of each trying again in turn.
//!
//! The cache in front of a flight decides whether to call at all; the flight only makes sure
//! that callers who asked while a call was running take that call's outcome.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// The single flight of one cached value: the last call's outcome and when it finished.
#[derive(Debug)]
pub struct Flight<T> {
    last: Arc<tokio::sync::Mutex<Option<(Instant, T)>>>,
}

impl<T> Default for Flight<T> {
    fn default() -> Self {
        Self {
            last: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }
}

impl<T: Clone + Send + 'static> Flight<T> {
    /// The outcome of a call that finished after `asked` (the caller found the cache stale at
    /// that instant, so such a call answers its question), else the outcome of `call`, made
    /// now while later callers wait for it.
    pub async fn join_or_call<F>(&self, asked: Instant, call: impl FnOnce() -> F) -> T
    where
        F: Future<Output = T>,
    {
        let mut last = self.last.lock().await;
        if let Some((finished, outcome)) = &*last {
            if *finished >= asked {
                return outcome.clone();
            }
        }
        let outcome = call().await;
        *last = Some((Instant::now(), outcome.clone()));
        outcome
    }

    /// Runs `call` in the background unless a call is already running: a refresh ahead of
    /// expiry, while the cached value is still served. Callers who come meanwhile wait for it
    /// through [`Flight::join_or_call`].
    pub fn spawn_if_idle<F>(&self, call: F)
    where
        F: Future<Output = T> + Send + 'static,
    {
        if let Ok(mut last) = Arc::clone(&self.last).try_lock_owned() {
            tokio::spawn(async move {
                let outcome = call.await;
                *last = Some((Instant::now(), outcome));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Fifty callers while one call is held open: one call, and everyone gets its outcome,
    /// a success as well as a failure.
    #[tokio::test]
    async fn concurrent_callers_share_one_call_and_its_outcome() {
        for outcome in [Ok("shared"), Err("down")] {
            let flight = Arc::new(Flight::<Result<&str, &str>>::default());
            let calls = Arc::new(AtomicUsize::new(0));
            let (release, released) = tokio::sync::watch::channel(false);
            let asked = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..50 {
                let (flight, calls, mut released) =
                    (Arc::clone(&flight), Arc::clone(&calls), released.clone());
                tasks.spawn(async move {
                    flight
                        .join_or_call(asked, || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            released.wait_for(|r| *r).await.unwrap();
                            outcome
                        })
                        .await
                });
            }
            while calls.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
            release.send(true).unwrap();
            while let Some(got) = tasks.join_next().await {
                assert_eq!(got.unwrap(), outcome);
            }
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn a_caller_who_asks_after_a_call_finished_calls_again() {
        let flight = Flight::<u32>::default();
        assert_eq!(flight.join_or_call(Instant::now(), || async { 1 }).await, 1);
        assert_eq!(flight.join_or_call(Instant::now(), || async { 2 }).await, 2);
    }

    #[tokio::test]
    async fn a_background_call_is_joined_and_not_doubled() {
        let flight = Flight::<u32>::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let asked = Instant::now();
        flight.spawn_if_idle(async move {
            released.await.unwrap();
            7
        });
        // Busy: this one does not start.
        flight.spawn_if_idle(async { unreachable!("a second background call") });
        release.send(()).unwrap();
        let got = flight
            .join_or_call(asked, || async {
                unreachable!("the background call answers")
            })
            .await;
        assert_eq!(got, 7);
    }
}
