//! Following the chainstore: the gateway watches the change feed and swaps chains as
//! they change, with no restart and no failed request. A request keeps the
//! `Arc<CompiledChain>` it started with. When the chainstore is away the gateway keeps
//! serving its last known chains and reconnects with backoff, resuming after the last
//! revision it applied, so no change is missed or applied twice.

use std::sync::Arc;
use std::time::Duration;

use sekisho_proto::chainstore::v1::{
    WatchRequest, chain_store_client::ChainStoreClient, watch_event::Kind,
};
use sekisho_proto::gateway::v1 as gproto;
use tonic::transport::Endpoint;

use crate::aggregate::AggregatorRegistry;
use crate::chain::{ChainSet, Chains, CompiledChain};

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Watches `url` forever, applying every change to `chains`.
pub fn spawn_follower(
    url: String,
    chains: Arc<Chains>,
    aggregators: AggregatorRegistry,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("chainstore: `{url}` is not a URL: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    Ok(tokio::spawn(async move {
        let mut last = 0u64;
        let mut backoff = Duration::from_millis(100);
        loop {
            let channel = endpoint.connect_lazy();
            let stream = ChainStoreClient::new(channel)
                .watch(WatchRequest {
                    from_revision: last,
                })
                .await;
            match stream {
                Ok(s) => {
                    let mut s = s.into_inner();
                    tracing::info!(%url, from_revision = last, "following the chainstore");
                    loop {
                        match s.message().await {
                            Ok(Some(event)) => {
                                backoff = Duration::from_millis(100);
                                last = event.revision;
                                apply(&chains, &aggregators, event.kind(), event.chain);
                            }
                            Ok(None) => {
                                tracing::warn!(%url, "the chainstore closed the watch");
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(%url, error = %e, "the chainstore watch broke");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, "cannot watch the chainstore; serving the last known chains")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }))
}

/// Applies one change: compiles a new version and swaps it in, removes a deleted chain.
/// A version this gateway cannot compile is reported and the previous one kept.
fn apply(
    chains: &Chains,
    aggregators: &AggregatorRegistry,
    kind: Kind,
    chain: Option<sekisho_proto::chainstore::v1::Chain>,
) {
    let Some(stored) = chain else { return };
    let current = chains.snapshot();
    let mut next = ChainSet {
        chains: current.chains.clone(),
        problems: current
            .problems
            .iter()
            .filter(|p| p.source != source(&stored.name))
            .cloned()
            .collect(),
    };
    match kind {
        Kind::Delete => {
            next.chains.remove(&stored.name);
            tracing::info!(chain = %stored.name, version = stored.version, "chain deleted");
        }
        _ => match compile(&stored, aggregators) {
            Ok(c) => {
                tracing::info!(chain = %c.name, version = c.version, "chain loaded");
                next.chains.insert(c.name.clone(), Arc::new(c));
            }
            Err(message) => {
                tracing::error!(chain = %stored.name, version = stored.version, "chain refused: {message}");
                next.problems.push(gproto::ChainProblem {
                    source: source(&stored.name),
                    path: String::new(),
                    message: format!("version {}: {message}", stored.version),
                });
            }
        },
    }
    chains.replace(next);
}

fn source(name: &str) -> String {
    format!("chainstore:{name}")
}

fn compile(
    stored: &sekisho_proto::chainstore::v1::Chain,
    aggregators: &AggregatorRegistry,
) -> Result<CompiledChain, String> {
    let spec = sekisho_chainstore::parse_chain(&stored.document).map_err(|e| e.message)?;
    let problems = sekisho_chainstore::validate(&spec, &sekisho_chainstore::Limits::default());
    if let Some(p) = problems.first() {
        return Err(p.to_string());
    }
    CompiledChain::compile(&spec, stored.version, source(&stored.name), aggregators)
}
