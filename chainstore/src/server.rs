//! Serving the chainstore: gRPC (ChainStore, health, reflection), the JSON proxy and
//! `/openapi.json` on one port.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::routing::get;
use sekisho_jsonproxy::{JsonProxy, openapi, routes, upstream};
use sekisho_proto::chainstore::v1::chain_store_server::ChainStoreServer;
use tokio::net::TcpListener;

use crate::service::ChainStoreService;
use crate::store::ChainStorage;

/// Largest request the chainstore accepts (a chain document is at most 256 KiB).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Binds `listen` and serves until `shutdown`; returns the bound address and the task.
pub async fn serve(
    store: Arc<dyn ChainStorage>,
    listen: &str,
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
    let grpc = tonic::service::Routes::new(
        ChainStoreServer::new(ChainStoreService::new(store))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(health_service)
    .add_service(reflection);
    let http_routes = routes(
        sekisho_proto::descriptor_pool(),
        &["sekisho.chainstore.v1.ChainStore"],
    )
    .map_err(std::io::Error::other)?;
    let doc = Arc::new(openapi(
        &http_routes,
        "Sekisho chainstore",
        env!("CARGO_PKG_VERSION"),
    ));
    let proxy = JsonProxy::new(http_routes, upstream(grpc.clone()), MAX_REQUEST_BYTES);
    let app = grpc
        .into_axum_router()
        .route(
            "/openapi.json",
            get(move || async move { axum::Json((*doc).clone()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .fallback(move |req: http::Request<Body>| proxy.handle(req));
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((addr, task))
}
