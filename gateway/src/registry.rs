//! The filters discovery found: per filter, its endpoints behind one balanced channel, and
//! the descriptor its endpoints answered to `Describe` (asked again periodically).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sekisho_proto::filter::v1::{self as fproto, filter_client::FilterClient};
use sekisho_proto::gateway::v1 as gproto;
use tonic::transport::{Channel, Endpoint};

use crate::discovery::{Discovery, FoundEndpoint};

/// How long `Describe` may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One filter's endpoints and what they said they are.
pub struct FilterPool {
    pub name: String,
    endpoints: Vec<FoundEndpoint>,
    /// Several HTTP/2 connections, used in turn: one connection's frames are handled by
    /// one task, so a busy filter is served by more than one core.
    clients: Vec<FilterClient<Channel>>,
    next: AtomicUsize,
    descriptor: RwLock<Option<Arc<fproto::FilterDescriptor>>>,
    last_error: Mutex<String>,
}

impl FilterPool {
    fn new(
        name: String,
        endpoints: Vec<FoundEndpoint>,
        connections: usize,
    ) -> Result<Self, String> {
        let mut eps = Vec::new();
        for e in &endpoints {
            let ep = Endpoint::from_shared(e.address.clone())
                .map_err(|err| format!("filter `{name}`: bad endpoint `{}`: {err}", e.address))?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_adaptive_window(true);
            eps.push(ep);
        }
        let clients = (0..connections.max(1))
            .map(|_| {
                let channel = if eps.len() == 1 {
                    eps[0].clone().connect_lazy()
                } else {
                    Channel::balance_list(eps.clone().into_iter())
                };
                FilterClient::new(channel)
                    .max_decoding_message_size(64 * 1024 * 1024)
                    .max_encoding_message_size(64 * 1024 * 1024)
            })
            .collect();
        Ok(FilterPool {
            name,
            endpoints,
            clients,
            next: AtomicUsize::new(0),
            descriptor: RwLock::new(None),
            last_error: Mutex::new(String::new()),
        })
    }

    /// A client for this filter's endpoints (cheap to clone).
    pub fn client(&self) -> FilterClient<Channel> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.clients[i % self.clients.len()].clone()
    }

    /// The descriptor, if an endpoint has answered `Describe`.
    pub fn descriptor(&self) -> Option<Arc<fproto::FilterDescriptor>> {
        self.descriptor.read().ok().and_then(|d| d.clone())
    }

    /// Asks `Describe` now and keeps the answer. An endpoint that claims another name is
    /// refused: it would score items with the wrong model.
    pub async fn describe(&self) -> Result<Arc<fproto::FilterDescriptor>, String> {
        let mut req = tonic::Request::new(fproto::DescribeRequest {});
        req.set_timeout(DESCRIBE_TIMEOUT);
        let result = tokio::time::timeout(DESCRIBE_TIMEOUT, self.client().describe(req)).await;
        let outcome = match result {
            Err(_) => Err(format!(
                "Describe did not answer within {DESCRIBE_TIMEOUT:?}"
            )),
            Ok(Err(s)) => Err(format!("Describe failed: {}: {}", s.code(), s.message())),
            Ok(Ok(r)) => {
                let d = r.into_inner();
                if d.name != self.name {
                    Err(format!(
                        "the endpoint says it is filter `{}`, not `{}`",
                        d.name, self.name
                    ))
                } else {
                    Ok(Arc::new(d))
                }
            }
        };
        match &outcome {
            Ok(d) => {
                let provider = d
                    .info
                    .get("execution_provider")
                    .cloned()
                    .unwrap_or_else(|| "none".into());
                metrics::gauge!(crate::metrics::FILTER_INFO, "filter" => self.name.clone(),
                    "version" => d.version.clone(), "execution_provider" => provider)
                .set(1.0);
                if let Ok(mut slot) = self.descriptor.write() {
                    *slot = Some(d.clone());
                }
                if let Ok(mut e) = self.last_error.lock() {
                    e.clear();
                }
            }
            Err(e) => {
                let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
                if *last != *e {
                    tracing::warn!(filter = %self.name, error = %e, "filter not described");
                }
                *last = e.clone();
            }
        }
        outcome
    }

    fn to_proto(&self) -> gproto::DiscoveredFilter {
        let last_error = self
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        let descriptor = self.descriptor();
        gproto::DiscoveredFilter {
            name: self.name.clone(),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| gproto::Endpoint {
                    address: e.address.clone(),
                    source: e.source.to_owned(),
                    healthy: descriptor.is_some() && last_error.is_empty(),
                    last_error: last_error.clone(),
                })
                .collect(),
            descriptor: descriptor.map(|d| (*d).clone()),
        }
    }
}

/// Every filter pool, by filter name.
#[derive(Clone, Default)]
pub struct FilterRegistry {
    pools: Arc<HashMap<String, Arc<FilterPool>>>,
}

impl FilterRegistry {
    /// Builds pools from what the discovery sources know now.
    pub fn from_discovery(sources: &[&dyn Discovery], connections: usize) -> Result<Self, String> {
        let mut by_filter: BTreeMap<String, Vec<FoundEndpoint>> = BTreeMap::new();
        for s in sources {
            for e in s.snapshot() {
                by_filter.entry(e.filter.clone()).or_default().push(e);
            }
        }
        let mut pools = HashMap::new();
        for (name, endpoints) in by_filter {
            pools.insert(
                name.clone(),
                Arc::new(FilterPool::new(name, endpoints, connections)?),
            );
        }
        Ok(FilterRegistry {
            pools: Arc::new(pools),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<FilterPool>> {
        self.pools.get(name)
    }

    /// Filter names, sorted, for error messages.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.pools.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    pub fn list(&self) -> Vec<gproto::DiscoveredFilter> {
        let mut v: Vec<_> = self.pools.values().map(|p| p.to_proto()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Describes every filter now, then keeps descriptors fresh: every `interval`, and
    /// every second for filters not described yet.
    pub fn spawn_describer(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let pools = self.pools.clone();
        tokio::spawn(async move {
            let mut since_full = Duration::ZERO;
            loop {
                let full = since_full >= interval || since_full.is_zero();
                let calls = pools
                    .values()
                    .filter(|p| full || p.descriptor().is_none())
                    .map(|p| p.describe());
                futures::future::join_all(calls).await;
                if full {
                    since_full = Duration::ZERO;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                since_full += Duration::from_secs(1);
            }
        })
    }
}
