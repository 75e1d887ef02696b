//! The front door: a client's first bytes are sniffed (HTTP/2 preface or not) and handed back
//! whole, then parsed by the front the helper would choose (HTTP/2 gRPC or the Docker API over
//! HTTP/1.1, both with a daemon that is not there). Nothing may panic or hang.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use irsa_secrets::front::daemon::{Daemon, Upstream, UpstreamKind};
use irsa_secrets::front::{docker, grpc, Context};
use irsa_secrets::wire::sniff::{sniff, Protocol};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn provider() -> irsa_secrets::provider::Provider {
    irsa_secrets::provider::Provider::new(vec![Arc::new(irsa_secrets::source::mock::Mock::new(
        irsa_secrets::source::IdentityIds::default(),
        "sts.amazonaws.com".into(),
        Duration::from_secs(300),
        None,
    ))])
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        // Sniffing hands every byte back, in order.
        if let Ok((_, mut rewound)) = sniff(data).await {
            let mut back = Vec::new();
            rewound.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, data);
        }
        let (mut client, helper) = tokio::io::duplex(1 << 16);
        let serve = async move {
            let Ok((protocol, io)) = sniff(helper).await else {
                return;
            };
            let ctx = Context::new(provider());
            let upstream = Upstream::Unix("/nonexistent/irsa-secrets-fuzz.sock".into());
            let daemon = Arc::new(Daemon::new(upstream, None, UpstreamKind::Docker));
            match protocol {
                Protocol::Http2 => grpc::serve_lazily(io, daemon, ctx).await,
                Protocol::Http1 => docker::serve_connection(io, daemon, ctx).await,
            }
        };
        let talk = async move {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        };
        // The clock is paused: a stalled exchange times out at once instead of hanging.
        let _ = tokio::time::timeout(Duration::from_secs(120), async {
            tokio::join!(serve, talk);
        })
        .await;
    });
});
