//! Assembling the gateway: one port serves gRPC (the Gateway service, health,
//! reflection), the JSON proxy, `/openapi.json`, `/metrics` and `/healthz`. Every part
//! is built here, in one visible place.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::routing::get;
use http::Request;
use sekisho_jsonproxy::{JsonProxy, openapi, routes, upstream};
use sekisho_proto::gateway::v1::gateway_server::GatewayServer as GatewayApi;
use tokio::net::TcpListener;
use tonic::transport::Endpoint;

use crate::aggregate::{AggregatorFactory, AggregatorRegistry};
use crate::chain::{ChainSet, Chains};
use crate::config::GatewayConfig;
use crate::discovery::StaticDiscovery;
use crate::error::GatewayError;
use crate::layers::GrpcFrameLimit;
use crate::registry::FilterRegistry;
use crate::runner::Runner;
use crate::service::GatewayService;

/// A gateway to be started, with any custom aggregators registered in code.
pub struct GatewayServer {
    config: GatewayConfig,
    aggregators: AggregatorRegistry,
}

/// A started gateway.
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub chains: Arc<Chains>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningGateway {
    /// Waits until the server has shut down and drained.
    pub async fn wait(self) -> Result<(), GatewayError> {
        match self.task.await {
            Ok(r) => r.map_err(|e| GatewayError::Internal(format!("server: {e}"))),
            Err(e) => Err(GatewayError::Internal(format!("server task: {e}"))),
        }
    }
}

impl GatewayServer {
    pub fn new(config: GatewayConfig) -> Self {
        GatewayServer {
            config,
            aggregators: AggregatorRegistry::default(),
        }
    }

    /// Registers an aggregator written in Rust, for `aggregate: {custom: name}`.
    pub fn custom_aggregator(mut self, name: &str, factory: AggregatorFactory) -> Self {
        self.aggregators.register_custom(name, factory);
        self
    }

    /// Binds, loads chains, and serves until `shutdown` resolves; then drains.
    pub async fn start(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RunningGateway, GatewayError> {
        let cfg = self.config;
        cfg.validate()?;
        let metrics = crate::metrics::install();

        let registry = FilterRegistry::from_discovery(
            &[&StaticDiscovery::new(cfg.filters.clone())],
            cfg.connections_per_endpoint,
        )
        .map_err(GatewayError::Config)?;
        registry.spawn_describer(cfg.describe_interval);

        let mut aggregators = self.aggregators;
        for (name, a) in &cfg.aggregators {
            let channel = Endpoint::from_shared(a.endpoint.clone())
                .map_err(|e| GatewayError::Config(format!("aggregators.{name}.endpoint: {e}")))?
                .connect_lazy();
            aggregators.register_remote(name.clone(), channel, a.timeout);
        }
        let set = match &cfg.chains_dir {
            Some(dir) => ChainSet::load_dir(dir, &aggregators)?,
            None => ChainSet::default(),
        };
        let chains = Arc::new(Chains::new(set));
        if let Some(url) = &cfg.chainstore {
            crate::follow::spawn_follower(url.clone(), chains.clone(), aggregators.clone())
                .map_err(GatewayError::Config)?;
        }
        let service = GatewayService::new(chains.clone(), Runner { registry }, cfg.max_in_flight);

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<GatewayApi<GatewayService>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sekisho_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| GatewayError::Internal(format!("reflection: {e}")))?;
        let grpc = tonic::service::Routes::new(
            GatewayApi::new(service)
                .max_decoding_message_size(cfg.max_request_bytes)
                .max_encoding_message_size(64 * 1024 * 1024),
        )
        .add_service(health_service)
        .add_service(reflection);

        let http_routes = routes(
            sekisho_proto::descriptor_pool(),
            &["sekisho.gateway.v1.Gateway"],
        )
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
        let doc = Arc::new(openapi(
            &http_routes,
            "Sekisho gateway",
            env!("CARGO_PKG_VERSION"),
        ));
        let proxy = JsonProxy::new(http_routes, upstream(grpc.clone()), cfg.max_json_bytes());
        let limit = cfg.max_request_bytes;

        let app = grpc
            .into_axum_router()
            .route("/metrics", get(move || async move { metrics.render() }))
            .route(
                "/openapi.json",
                get(move || async move { axum::Json((*doc).clone()) }),
            )
            .route("/healthz", get(|| async { "ok" }))
            .fallback(move |req: Request<Body>| fallback(proxy.clone(), req))
            .layer(axum::middleware::map_request(move |req: Request<Body>| {
                std::future::ready(limit_grpc_frames(req, limit))
            }));

        let listener =
            TcpListener::bind(&cfg.listen)
                .await
                .map_err(|source| GatewayError::Bind {
                    addr: cfg.listen.clone(),
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        tracing::info!(%addr, "gateway serving");
        let task = tokio::spawn(async move {
            use axum::serve::ListenerExt;
            // gRPC writes headers, data and trailers separately: without NODELAY, Nagle
            // and delayed ACKs hold the tail of a response for ~40ms.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    shutdown.await;
                    health.set_not_serving::<GatewayApi<GatewayService>>().await;
                    tracing::info!("gateway draining");
                })
                .await
        });
        Ok(RunningGateway { addr, chains, task })
    }
}

/// Paths no route claims: JSON goes to the proxy; gRPC gets UNIMPLEMENTED, in gRPC.
async fn fallback(proxy: JsonProxy, req: Request<Body>) -> axum::response::Response {
    if is_grpc(&req) {
        let status = tonic::Status::unimplemented(format!("no gRPC method {}", req.uri().path()));
        status.into_http::<Body>()
    } else {
        proxy.handle(req).await
    }
}

fn limit_grpc_frames(req: Request<Body>, limit: usize) -> Request<Body> {
    if is_grpc(&req) {
        req.map(|b| Body::new(GrpcFrameLimit::new(b, limit)))
    } else {
        req
    }
}

fn is_grpc(req: &Request<Body>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}
