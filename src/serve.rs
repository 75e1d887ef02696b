//! `serve`: the Secrets service (and gRPC health) alone on a unix socket, for tests, embedding
//! and debugging, with graceful shutdown.

use std::future::Future;

use tokio_stream::wrappers::UnixListenerStream;

use crate::proto::secrets::secrets_server::SecretsServer;
use crate::provider::Provider;
use crate::socket::BoundSocket;

/// Serves `provider` on `socket` until `shutdown` resolves, then lets in-flight calls finish.
pub async fn run(
    provider: Provider,
    socket: BoundSocket,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (mut reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<SecretsServer<Provider>>().await;
    let BoundSocket { listener, file } = socket;
    tracing::info!(socket = %file.path().display(), ids = ?provider.ids(), "serving secrets");
    let incoming = UnixListenerStream::new(listener);
    let result = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(SecretsServer::new(provider))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    drop(file);
    tracing::info!("stopped");
    result
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
