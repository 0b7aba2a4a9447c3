//! The HTTP side every Sekisho server shares: its gRPC routes, the JSON proxy for the
//! same services, `/openapi.json`, `/healthz`, and a listener with TCP_NODELAY.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::routing::get;
use http::Request;

use crate::{JsonProxy, RouteError, openapi, routes, upstream};

/// gRPC `routes` for `services`, with the JSON proxy (bodies up to `max_json_bytes`) and
/// `/openapi.json` built from the same descriptors. Paths no route claims get a gRPC
/// UNIMPLEMENTED when the caller speaks gRPC, and the proxy's JSON 404 otherwise.
pub fn app(
    grpc: tonic::service::Routes,
    services: &[&str],
    title: &str,
    max_json_bytes: usize,
) -> Result<axum::Router, RouteError> {
    let http_routes = routes(sekisho_proto::descriptor_pool(), services)?;
    let doc = Arc::new(openapi(&http_routes, title, env!("CARGO_PKG_VERSION")));
    let proxy = JsonProxy::new(http_routes, upstream(grpc.clone()), max_json_bytes);
    Ok(grpc
        .into_axum_router()
        .route(
            "/openapi.json",
            get(move || async move { axum::Json((*doc).clone()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .fallback(move |req: Request<Body>| fallback(proxy.clone(), req)))
}

async fn fallback(proxy: JsonProxy, req: Request<Body>) -> axum::response::Response {
    if is_grpc(&req) {
        let status = tonic::Status::unimplemented(format!("no gRPC method {}", req.uri().path()));
        status.into_http::<Body>()
    } else {
        proxy.handle(req).await
    }
}

/// Whether a request speaks gRPC (`content-type: application/grpc...`).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Serves `app` on `listener` until `shutdown`. Accepted sockets get TCP_NODELAY: gRPC
/// writes headers, data and trailers separately, and Nagle with delayed ACKs would hold
/// the tail of a response for ~40 ms.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
