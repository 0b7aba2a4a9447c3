//! Assembling the gateway: one port serves gRPC (the Gateway service, health,
//! reflection), the JSON proxy, `/openapi.json`, `/metrics` and `/healthz`. Every part
//! is built here, in one visible place.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::routing::get;
use http::Request;
use sekisho_proto::gateway::v1::gateway_server::GatewayServer as GatewayApi;
use tokio::net::TcpListener;
use tonic::transport::Endpoint;

use crate::aggregate::{AggregatorFactory, AggregatorRegistry};
use crate::chain::{ChainSet, Chains};
use crate::config::GatewayConfig;
use crate::discovery::Discovery;
use crate::discovery::dns::DnsDiscovery;
use crate::discovery::etcd::EtcdDiscovery;
use crate::discovery::file::FileDiscovery;
use crate::discovery::kubernetes::KubernetesDiscovery;
use crate::discovery::listed::ListedDiscovery;
use crate::error::GatewayError;
use crate::layers::GrpcFrameLimit;
use crate::pool::PoolSettings;
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
        self.config.validate()?;
        let listen = self.config.listen.clone();
        let listener = TcpListener::bind(&listen)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: listen,
                source,
            })?;
        self.start_on(listener, shutdown).await
    }

    /// As [`GatewayServer::start`], on a listener already bound (`listen` is not used).
    pub async fn start_on(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RunningGateway, GatewayError> {
        let cfg = self.config;
        cfg.validate()?;
        let metrics = crate::metrics::install();

        let registry = FilterRegistry::new(PoolSettings {
            connections: cfg.connections_per_endpoint,
            balance: cfg.balance,
            outlier: cfg.outlier.clone(),
            retry_budget: cfg.retry_budget.clone(),
            describe_interval: cfg.describe_interval,
        });
        // The configured endpoints are in place before the first request.
        let listed = ListedDiscovery::new(cfg.filters.clone());
        registry.apply(0, listed.kind(), listed.endpoints()).await;
        let mut sources: Vec<Box<dyn Discovery>> = Vec::new();
        if let Some(f) = &cfg.discovery.file {
            sources.push(Box::new(FileDiscovery {
                path: f.path.clone(),
                interval: f.interval,
            }));
        }
        if let Some(e) = &cfg.discovery.etcd {
            sources.push(Box::new(EtcdDiscovery {
                endpoints: e.endpoints.clone(),
                prefix: e.prefix.clone(),
            }));
        }
        if let Some(d) = &cfg.discovery.dns {
            sources.push(Box::new(
                DnsDiscovery::new(d.clone()).map_err(GatewayError::Config)?,
            ));
        }
        if let Some(k) = &cfg.discovery.kubernetes {
            sources.push(Box::new(KubernetesDiscovery { source: k.clone() }));
        }
        registry.follow(sources, 1);

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
        let (close, closing) = tokio::sync::watch::channel(false);
        let service = GatewayService::new(chains.clone(), Runner { registry }, cfg.max_in_flight)
            .with_callers(crate::callers::Callers::new(&cfg.callers))
            .closing_on(closing);

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

        let limit = cfg.max_request_bytes;
        let app = sekisho_jsonproxy::app(
            grpc,
            &["sekisho.gateway.v1.Gateway"],
            "Sekisho gateway",
            cfg.max_json_bytes(),
        )
        .map_err(|e| GatewayError::Internal(e.to_string()))?
        .route("/metrics", get(move || async move { metrics.render() }))
        .layer(axum::middleware::map_request(move |req: Request<Body>| {
            std::future::ready(limit_grpc_frames(req, limit))
        }));

        let addr = listener
            .local_addr()
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        tracing::info!(%addr, "gateway serving");
        let task = tokio::spawn(sekisho_jsonproxy::serve(listener, app, async move {
            shutdown.await;
            health.set_not_serving::<GatewayApi<GatewayService>>().await;
            // Streams end once their window is answered; unary calls run to the end.
            let _ = close.send(true);
            tracing::info!("gateway draining");
        }));
        Ok(RunningGateway { addr, chains, task })
    }
}

fn limit_grpc_frames(req: Request<Body>, limit: usize) -> Request<Body> {
    if sekisho_jsonproxy::is_grpc(&req) {
        req.map(|b| Body::new(GrpcFrameLimit::new(b, limit)))
    } else {
        req
    }
}
