//! Serving a [`Filter`] over gRPC: `Describe` and `Apply`, plus `grpc.health.v1` and
//! server reflection, and optionally a registration in etcd. On shutdown the filter
//! reports NOT_SERVING, withdraws its registration, waits `drain_delay`, ends the health
//! watches, stops accepting and drains the calls in flight. A health `Watch` is a stream
//! that never ends on its own: before the watches were ended, a filter whose watcher did
//! not let go (a client holding it; the filters of `sekisho dev`, whose gateway was
//! stopping too) waited for it for ever and never exited on SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::{TcpListenerStream, WatchStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthService;

use crate::proto::{self, content::Payload as ProtoPayload, filter_server};
use crate::register::EtcdRegistration;
use crate::{Filter, Input, Payload, config};

/// Why a filter server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("etcd registration: {0}")]
    Registration(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// `grpc.health.v1.Health` whose `Watch` streams end once `ended` turns true.
struct EndingHealth {
    inner: HealthService,
    ended: tokio::sync::watch::Receiver<bool>,
}

type HealthStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for EndingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = HealthStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthStream>, Status> {
        let updates = self.inner.watch(request).await?.into_inner().map(Some);
        let end = WatchStream::new(self.ended.clone())
            .filter(|ended| *ended)
            .map(|_| None);
        let until_ended = updates.merge(end).map_while(|u| u);
        Ok(Response::new(Box::pin(until_ended)))
    }
}

/// The gRPC service wrapping one filter.
struct FilterService<F: Filter> {
    filter: Arc<F>,
    descriptor: proto::FilterDescriptor,
    default_config: F::Config,
    default_json: serde_json::Value,
}

#[tonic::async_trait]
impl<F: Filter> filter_server::Filter for FilterService<F> {
    async fn describe(
        &self,
        _: Request<proto::DescribeRequest>,
    ) -> Result<Response<proto::FilterDescriptor>, Status> {
        Ok(Response::new(self.descriptor.clone()))
    }

    async fn apply(
        &self,
        request: Request<proto::ApplyRequest>,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        let filter = self.descriptor.name.clone();
        let in_flight = metrics::gauge!(crate::metrics::IN_FLIGHT, "filter" => filter.clone());
        in_flight.increment(1.0);
        let started = std::time::Instant::now();
        let deadline = sekisho_proto::grpc_deadline(request.metadata());
        let result = crate::with_deadline(deadline, self.apply_one(request.into_inner())).await;
        in_flight.decrement(1.0);
        metrics::histogram!(crate::metrics::DURATION, "filter" => filter.clone())
            .record(started.elapsed().as_secs_f64());
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        metrics::counter!(crate::metrics::REQUESTS_TOTAL, "filter" => filter,
            "code" => sekisho_proto::code_label(code))
        .increment(1);
        result
    }
}

impl<F: Filter> FilterService<F> {
    async fn apply_one(
        &self,
        req: proto::ApplyRequest,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        let content = req
            .content
            .ok_or_else(|| Status::invalid_argument("content is missing"))?;
        let accepted = &self.descriptor.content_types;
        if !accepted
            .iter()
            .any(|p| sekisho_proto::content_type_matches(p, &content.content_type))
        {
            return Err(Status::invalid_argument(format!(
                "filter `{}` does not accept content type `{}`; it accepts {}",
                self.descriptor.name,
                content.content_type,
                accepted.join(", ")
            )));
        }
        let payload = match content.payload {
            Some(ProtoPayload::Data(d)) => Payload::Data(d),
            Some(ProtoPayload::Text(t)) => Payload::Text(t),
            Some(ProtoPayload::Features(f)) => Payload::Features(f.values),
            None => return Err(Status::invalid_argument("content has no payload")),
        };
        let over = req.config.as_ref().map(sekisho_proto::struct_to_json);
        let cfg = config::resolve(&self.default_config, &self.default_json, over)
            .map_err(Status::invalid_argument)?;
        let input = Input {
            content_type: content.content_type,
            payload,
            context: req.context.unwrap_or_default(),
        };
        let verdict = self
            .filter
            .apply(input, cfg)
            .await
            .map_err(|e| e.into_status())?;
        if !(0.0..=1.0).contains(&verdict.score) {
            return Err(Status::internal(format!(
                "filter `{}` produced score {} outside [0, 1]",
                self.descriptor.name, verdict.score
            )));
        }
        Ok(Response::new(proto::ApplyResponse {
            score: verdict.score,
            labels: verdict.labels.into_iter().collect(),
            regions: verdict.regions,
            details: verdict
                .details
                .as_ref()
                .and_then(sekisho_proto::json_to_struct),
        }))
    }
}

/// Accepted connections with TCP_NODELAY: tonic sets it only on listeners it binds, and
/// without it Nagle and delayed ACKs stall small responses by ~40ms.
fn nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

/// Serves one filter. `FilterServer::new(f).serve("127.0.0.1:50061", shutdown)`.
pub struct FilterServer<F: Filter> {
    filter: Arc<F>,
    etcd: Option<EtcdRegistration>,
    drain_delay: Duration,
}

impl<F: Filter> FilterServer<F> {
    pub fn new(filter: F) -> Self {
        FilterServer {
            filter: Arc::new(filter),
            etcd: None,
            drain_delay: Duration::ZERO,
        }
    }

    /// Registers the filter in etcd while it serves, for gateways that discover there.
    pub fn register_in_etcd(mut self, registration: EtcdRegistration) -> Self {
        self.etcd = Some(registration);
        self
    }

    /// On shutdown, how long to keep serving after saying NOT_SERVING and withdrawing
    /// the registration, so that gateways stop sending before the listener closes.
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// Binds `addr` and serves until `shutdown` resolves. Use port 0 and
    /// [`FilterServer::serve_on`] when the caller needs the bound address first.
    pub async fn serve(
        self,
        addr: &str,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.to_owned(),
                source,
            })?;
        self.serve_on(listener, shutdown).await
    }

    /// Serves on a listener already bound (its `local_addr` is the address to announce).
    pub async fn serve_on(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let descriptor = self.filter.describe();
        let default_config = F::Config::default();
        let default_json = serde_json::to_value(&default_config).unwrap_or_default();
        let name = descriptor.name.clone();
        crate::metrics::describe();
        let provider = sekisho_proto::execution_provider(&descriptor);
        metrics::gauge!(crate::metrics::INFO, "filter" => name.clone(),
            "version" => descriptor.version.clone(), "execution_provider" => provider)
        .set(1.0);
        let service = FilterService {
            filter: self.filter,
            descriptor,
            default_config,
            default_json,
        };
        let health = tonic_health::server::HealthReporter::new();
        let (watches_end, watches_ended) = tokio::sync::watch::channel(false);
        let health_service = HealthServer::new(EndingHealth {
            inner: HealthService::from_health_reporter(health.clone()),
            ended: watches_ended,
        });
        health
            .set_serving::<filter_server::FilterServer<FilterService<F>>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sekisho_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;
        let local: Option<SocketAddr> = listener.local_addr().ok();
        // The listener is bound: a gateway that learns of us now is answered as soon as
        // the server below runs.
        let registered = match self.etcd {
            Some(reg) => Some(
                crate::register::register(reg, name.clone())
                    .await
                    .map_err(ServeError::Registration)?,
            ),
            None => None,
        };
        tracing::info!(filter = %name, addr = ?local, "filter serving");
        let drain_delay = self.drain_delay;
        let shutdown = async move {
            shutdown.await;
            // Tell health checkers and discovery first, give gateways time to stop
            // sending, then drain what is in flight.
            health
                .set_not_serving::<filter_server::FilterServer<FilterService<F>>>()
                .await;
            if let Some(r) = registered {
                r.withdraw().await;
            }
            tracing::info!(filter = %name, delay = ?drain_delay, "filter draining");
            tokio::time::sleep(drain_delay).await;
            // The watchers have been told NOT_SERVING; now their streams end, so that the
            // graceful shutdown below waits for the calls in flight and nothing else.
            let _ = watches_end.send(true);
        };
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(filter_server::FilterServer::new(service))
            .serve_with_incoming_shutdown(nodelay(listener), shutdown)
            .await?;
        Ok(())
    }
}
