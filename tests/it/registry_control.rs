//! The control for the registry-credential tests: the seeded registry refuses a `FROM` of its
//! image without credentials and serves it with the client's own login, straight to the daemon,
//! with no helper involved. If this fails, a failure through the helper proves nothing.

use crate::common;

use common::dockerd::{build_on, Dockerd};
use common::registry::{client_login, Registry};

const USER: &str = "AWS";
const PASSWORD: &str = "123456789012-auth-token";

#[test]
fn the_registry_refuses_an_anonymous_pull_and_serves_a_logged_in_one() {
    if common::dockerd::skip() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("regctl").tempdir().unwrap();
    let daemon = Dockerd::start(&dir.path().join("d"));
    let registry = Registry::start(&dir.path().join("r"), USER, PASSWORD);
    let image = registry.seed(&daemon, "base", USER, PASSWORD);
    assert_eq!(registry.status("/v2/base/manifests/latest"), Some(401));

    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {image}\nRUN true\n")).unwrap();
    let build = || build_on(&daemon.socket, &ctx, &common::Radioactive::default());
    // build_on's DOCKER_CONFIG (beside the daemon's socket) is empty: no credentials.
    let (ok, text) = build();
    assert!(!ok, "an anonymous pull was served:\n{text}");
    assert!(
        text.contains("401") || text.to_lowercase().contains("unauthorized"),
        "{text}"
    );
    client_login(&daemon.socket, &registry.host, USER, PASSWORD);
    let (ok, text) = build();
    assert!(ok, "{text}\n{}", registry.log_text());
}
