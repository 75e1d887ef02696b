//! Explicit beats implicit: inside a session, a secret the build client serves itself (it was
//! given `--secret`) wins over the helper's value for the same id.

use std::time::Instant;

use tonic::{Code, Status};

use super::Provider;
use crate::bound::quote;
use crate::observe::{Answer, Caller, Outcome};
use crate::secret::SecretValue;

/// What the build client answered when asked for an id first.
pub enum ClientAnswer {
    /// It served a value.
    Value(SecretValue),
    /// It does not serve the id (`NotFound`, or no Secrets service at all).
    Absent,
    /// It failed otherwise.
    Failed(Status),
}

impl ClientAnswer {
    /// Sorts the client's gRPC answer.
    pub fn from_result(result: Result<SecretValue, Status>) -> Self {
        match result {
            Ok(value) => Self::Value(value),
            Err(s) if matches!(s.code(), Code::NotFound | Code::Unimplemented) => Self::Absent,
            Err(s) => Self::Failed(s),
        }
    }
}

/// The source the audit trail names for the client's own values.
const CLIENT: &str = "client";

impl Provider {
    /// Answers a session's `GetSecret` given what the client said (`None` when it serves no
    /// secrets): its value when it has one; its failure when the id is not ours; otherwise
    /// ours. Every answer is recorded, the client's own included.
    pub async fn get_in_session(
        &self,
        id: &str,
        caller: &Caller,
        client: Option<ClientAnswer>,
        started: Instant,
    ) -> Result<SecretValue, Status> {
        let session = quote(caller.session.as_deref().unwrap_or_default());
        let answer = |outcome, value, error| Answer {
            id,
            source: Some(CLIENT),
            origin: None,
            outcome,
            value,
            error,
            started,
        };
        self.check_id(id, caller, started).await?;
        match client {
            Some(ClientAnswer::Value(value)) => {
                if self.owns(id) {
                    tracing::info!(
                        ?session,
                        id = ?quote(id),
                        "the client's own --secret wins over the helper's value"
                    );
                }
                self.record(caller, answer(Outcome::Served, Some(&value), None));
                return Ok(value);
            }
            Some(ClientAnswer::Failed(status)) if !self.owns(id) => {
                self.record(caller, answer(Outcome::Error, None, Some(status.message())));
                return Err(status);
            }
            Some(ClientAnswer::Failed(status)) => {
                tracing::warn!(?session, id = ?quote(id), code = ?status.code(), "the client's own secret failed; serving the helper's");
            }
            Some(ClientAnswer::Absent) | None => {}
        }
        self.get(id, caller).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::source::static_secret::Static;

    fn provider() -> Provider {
        let spec = "id=ours,env=IRSA_SECRETS_PRECEDENCE_TEST".parse().unwrap();
        std::env::set_var("IRSA_SECRETS_PRECEDENCE_TEST", "helper-value");
        Provider::new(vec![Arc::new(Static::new(vec![spec]).unwrap())])
    }

    fn caller() -> Caller {
        Caller {
            session: Some("s1".into()),
            ..Caller::default()
        }
    }

    async fn ask(id: &str, client: Option<ClientAnswer>) -> Result<SecretValue, Status> {
        provider()
            .get_in_session(id, &caller(), client, Instant::now())
            .await
    }

    fn value(v: &[u8]) -> ClientAnswer {
        ClientAnswer::Value(SecretValue::new(v.to_vec()))
    }

    #[tokio::test]
    async fn the_clients_value_wins_for_an_id_the_helper_also_serves() {
        let got = ask("ours", Some(value(b"client-value"))).await.unwrap();
        assert_eq!(got.expose(), b"client-value");
    }

    #[tokio::test]
    async fn without_the_client_the_helper_answers_its_ids() {
        for client in [None, Some(ClientAnswer::Absent)] {
            assert_eq!(ask("ours", client).await.unwrap().expose(), b"helper-value");
        }
    }

    #[tokio::test]
    async fn a_client_failure_stands_for_ids_the_helper_does_not_serve() {
        let failed = ClientAnswer::Failed(Status::permission_denied("no"));
        let e = ask("theirs", Some(failed)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
    }

    #[tokio::test]
    async fn a_client_failure_falls_back_to_the_helpers_value() {
        let failed = ClientAnswer::Failed(Status::internal("broken"));
        assert_eq!(
            ask("ours", Some(failed)).await.unwrap().expose(),
            b"helper-value"
        );
    }

    #[tokio::test]
    async fn an_id_nobody_serves_is_not_found() {
        let e = ask("theirs", Some(ClientAnswer::Absent)).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    }

    #[test]
    fn the_clients_statuses_are_sorted() {
        for (code, absent) in [
            (Code::NotFound, true),
            (Code::Unimplemented, true),
            (Code::Internal, false),
        ] {
            let sorted = ClientAnswer::from_result(Err(Status::new(code, "x")));
            assert_eq!(matches!(sorted, ClientAnswer::Absent), absent, "{code:?}");
        }
    }
}
