//! A real BuildKit client library through the helper: the `bollard` crate's `buildkitd` driver
//! opens `moby.buildkit.v1.Control/Session` and calls `Control/Solve` with the dockerfile
//! frontend, on the helper socket in front of a real dockerd on each engine (Debian's docker.io
//! 20.10 with BuildKit v0.8, the current engine with either image store), whose BuildKit API
//! the helper bridges to `/grpc`. A `RUN` step mounts the IRSA token by id
//! with no client-side secret; the image is exported into dockerd (the `moby` exporter) and the
//! step's output is read back from it.
//!
//! tonic endpoints dial TCP, so a loopback forwarder stands in front of the helper's unix socket
//! (tests/it/common/bollard.rs).

use crate::common;

use std::time::Duration;

use bollard::grpc::build::{ImageBuildFrontendOptions, ImageBuildLoadInput, ImageBuildNetworkMode};
use bollard::grpc::driver::buildkitd::{BuildkitDaemon, Endpoint};
use bollard::grpc::driver::Build as _;
use common::bollard::{context, forward_to};
use common::dockerd::{self, Dockerd, Stack, BASE_IMAGE};
use common::engine::Engine;
use common::tail;

const IMAGE: &str = "irsa-test-bollard";

/// The file `path` of `image`, copied out of a created (never started) container.
fn read_from_image(daemon: &Dockerd, image: &str, path: &str) -> Vec<u8> {
    let run = |args: &[&str]| {
        let out = daemon.docker().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let id = String::from_utf8(run(&["create", image, "true"])).unwrap();
    let id = id.trim();
    let archive = run(&["cp", &format!("{id}:{path}"), "-"]);
    run(&["rm", id]);
    let mut tar = tar::Archive::new(archive.as_slice());
    let mut entry = tar.entries().unwrap().next().unwrap().unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
    bytes
}

engines!(bollard_buildkit_client_through_the_helper);

fn bollard_buildkit_client_through_the_helper(engine: Engine) {
    if dockerd::skip() {
        return;
    }
    let s = Stack::start_on(engine, "irsa-bollard-", "debug", |_| {});
    let (helper, daemon, r) = (&s.helper, &s.daemon, &s.r);

    let dockerfile = format!(
        "FROM {BASE_IMAGE}\n\
         RUN --mount=type=secret,id=aws-web-identity-token,required \
         --mount=type=secret,id=aws-role-arn,required \
         sha256sum /run/secrets/aws-web-identity-token /run/secrets/aws-role-arn > /out\n"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        let addr = forward_to(&helper.socket).await;
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
        let driver = BuildkitDaemon::new(endpoint);
        let opts = ImageBuildFrontendOptions::builder()
            .force_network_mode(&ImageBuildNetworkMode::None)
            .nocache(true)
            .build();
        tokio::time::timeout(
            Duration::from_secs(300),
            driver.docker_build(
                IMAGE,
                opts,
                ImageBuildLoadInput::Upload(context(&dockerfile)),
                None,
                None,
            ),
        )
        .await
    });
    let log = helper.log_text();
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!(
            "bollard build failed: {e:?}\nhelper log:\n{}\ndockerd:\n{}",
            tail(&log),
            daemon.log_tail()
        ),
        Err(_) => panic!(
            "bollard build still running after 300 s\nhelper log:\n{}\ndockerd:\n{}",
            tail(&log),
            daemon.log_tail()
        ),
    }

    // The step saw exactly the token file and the role ARN, served by the helper.
    let out = String::from_utf8(read_from_image(daemon, IMAGE, "/out")).unwrap();
    r.assert_absent("the step's output", out.as_bytes());
    s.assert_step_saw_the_identity(&out);
    for id in ["aws-web-identity-token", "aws-role-arn"] {
        assert!(
            log.lines()
                .any(|l| l.contains("secret served") && l.contains(&format!("id=\"{id}\""))),
            "no `secret served` line for {id}:\n{}",
            tail(&log)
        );
    }

    // The image itself holds no secret: only the step's digests.
    let saved = daemon.docker().args(["save", IMAGE]).output().unwrap();
    assert!(saved.status.success());
    r.assert_absent("the built image (docker save)", &saved.stdout);
}
