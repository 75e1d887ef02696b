//! The request counter's `id` label: ids the listener serves keep their name; ids a build
//! chooses (the client's own `--secret` ids, ids nobody serves) count under `other`, so no build
//! can grow the metrics without limit.

use crate::common;

use std::time::Instant;

use irsa_secrets::observe::audit::Audit;
use irsa_secrets::observe::metrics::Metrics;
use irsa_secrets::observe::Caller;
use irsa_secrets::provider::ClientAnswer;
use irsa_secrets::secret::SecretValue;

fn from_client() -> Option<ClientAnswer> {
    Some(ClientAnswer::Value(SecretValue::new(
        b"client-value".to_vec(),
    )))
}

#[tokio::test]
async fn only_served_ids_are_labelled_by_name() {
    let metrics = Metrics::default();
    let provider = common::mock_provider().with_observers(Audit::default(), metrics.clone());
    let caller = Caller::default();
    let ask = |id: String, client| {
        let (provider, caller) = (provider.clone(), caller.clone());
        async move {
            let _ = provider
                .get_in_session(&id, &caller, client, Instant::now())
                .await;
        }
    };
    for i in 0..1000 {
        ask(format!("client-chosen-{i}"), from_client()).await;
        ask(format!("nobody-serves-{i}"), None).await;
    }
    ask("aws-role-arn".into(), None).await;
    ask("aws-role-arn".into(), from_client()).await;
    let text = metrics.encode();
    let labelled: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("irsa_secrets_secret_requests_total{"))
        .filter_map(|l| l.split("id=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        labelled.into_iter().collect::<Vec<_>>(),
        ["aws-role-arn", "other"],
        "{text}"
    );
}
