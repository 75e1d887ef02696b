//! The request counter's `id` label: ids the listener serves keep their name; ids a build
//! chooses (the client's own `--secret` ids, ids nobody serves) count under `other`, so no build
//! can grow the metrics without limit.

mod common;

use std::time::Instant;

use irsa_secrets::observe::audit::Audit;
use irsa_secrets::observe::metrics::Metrics;
use irsa_secrets::observe::Answer;
use irsa_secrets::observe::{Caller, Outcome};

fn answer<'a>(id: &'a str, source: Option<&'a str>) -> Answer<'a> {
    Answer {
        id,
        source,
        outcome: Outcome::Served,
        value: None,
        error: None,
        started: Instant::now(),
    }
}

#[test]
fn only_served_ids_are_labelled_by_name() {
    let metrics = Metrics::default();
    let provider = common::mock_provider().with_observers(Audit::default(), metrics.clone());
    let caller = Caller::default();
    for i in 0..1000 {
        let id = format!("client-chosen-{i}");
        provider.record(&caller, answer(&id, Some("client")));
        provider.record(&caller, answer(&id, None));
    }
    provider.record(&caller, answer("aws-role-arn", Some("mock")));
    provider.record(&caller, answer("aws-role-arn", Some("client")));
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
