//! Serving the chainstore: gRPC (ChainStore, health, reflection), the JSON proxy and
//! `/openapi.json` on one port.

use std::future::Future;
use std::net::SocketAddr;

use sekisho_proto::chainstore::v1::chain_store_server::ChainStoreServer;
use tokio::net::TcpListener;

use crate::service::ChainStoreService;

/// Largest request the chainstore accepts (a chain document is at most 256 KiB).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Binds `listen` and serves until `shutdown`; returns the bound address and the task.
pub async fn serve(
    service: ChainStoreService,
    listen: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    serve_on(service, TcpListener::bind(listen).await?, shutdown).await
}

/// Serves on a listener already bound until `shutdown`; returns its address and the task.
pub async fn serve_on(
    service: ChainStoreService,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ChainStoreServer<ChainStoreService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sekisho_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(std::io::Error::other)?;
    // Watches end first, then the server stops accepting and drains: a gateway's Watch
    // is a stream that would keep the drain waiting for ever.
    let (close, closing) = tokio::sync::watch::channel(false);
    let service = service.closing_on(closing);
    let shutdown = async move {
        shutdown.await;
        let _ = close.send(true);
    };
    let grpc = tonic::service::Routes::new(
        ChainStoreServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(health_service)
    .add_service(reflection);
    let app = sekisho_jsonproxy::app(
        grpc,
        &["sekisho.chainstore.v1.ChainStore"],
        "Sekisho chainstore",
        MAX_REQUEST_BYTES,
    )
    .map_err(std::io::Error::other)?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(sekisho_jsonproxy::serve(listener, app, shutdown));
    Ok((addr, task))
}
