//! Readiness: `/readyz` runs named checks (each listener's identity and daemon, as the CLI
//! wires them) and reports every problem they find. Knows nothing of what it checks.

use std::future::Future;

use futures_util::future::{join_all, BoxFuture};

/// Why `/readyz` says not ready: one reason per line, each led by its check's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct NotReady(pub Vec<String>);

type Probe = Box<dyn Fn() -> BoxFuture<'static, Vec<String>> + Send + Sync>;

/// What `/readyz` asks before saying ready. `/metrics` asks too, since checks may refresh
/// gauges (the identity's time to expiry) on the way.
#[derive(Default)]
pub struct Checks(Vec<(String, Probe)>);

impl Checks {
    /// Adds a check named `name`: `probe` answers with the problems it finds, none when ready.
    pub fn add<F, Fut>(&mut self, name: impl Into<String>, probe: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<String>> + Send + 'static,
    {
        self.0
            .push((name.into(), Box::new(move || Box::pin(probe()))));
    }

    /// Runs every check at once, so one slow daemon does not delay the others' verdicts.
    /// `Ok` when none finds a problem; otherwise each problem as `NAME: PROBLEM`, in the order
    /// the checks were added.
    pub async fn run(&self) -> Result<(), NotReady> {
        let found = join_all(self.0.iter().map(|(_, probe)| probe())).await;
        let problems: Vec<String> = self
            .0
            .iter()
            .zip(found)
            .flat_map(|((name, _), problems)| {
                problems.into_iter().map(move |p| format!("{name}: {p}"))
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(NotReady(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn no_checks_or_no_problems_is_ready() {
        let mut checks = Checks::default();
        assert_eq!(checks.run().await, Ok(()));
        checks.add("listener a", || async { Vec::new() });
        assert_eq!(checks.run().await, Ok(()));
    }

    #[tokio::test]
    async fn every_problem_is_named_in_the_order_checks_were_added() {
        let mut checks = Checks::default();
        checks.add("listener a", || async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            vec!["mock: expired".to_string(), "irsa: no token".to_string()]
        });
        checks.add("listener b", || async { Vec::new() });
        checks.add("listener c", || async {
            vec!["the daemon is unreachable".to_string()]
        });
        let why = checks.run().await.unwrap_err();
        assert_eq!(
            why.to_string(),
            "listener a: mock: expired\nlistener a: irsa: no token\n\
             listener c: the daemon is unreachable"
        );
    }

    /// Each run asks afresh: a check that recovers makes the next run ready.
    #[tokio::test]
    async fn each_run_asks_again() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut checks = Checks::default();
        let seen = Arc::clone(&calls);
        checks.add("listener a", move || {
            let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    vec!["down".to_string()]
                } else {
                    Vec::new()
                }
            }
        });
        assert!(checks.run().await.is_err());
        assert_eq!(checks.run().await, Ok(()));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
