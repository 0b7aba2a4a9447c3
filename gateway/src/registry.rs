//! Every filter the gateway can call: one [`FilterPool`] per filter name, kept in step
//! with what the discovery sources say. A filter's pool stays once seen (with no
//! endpoints its calls fail UNAVAILABLE, saying so), so its metrics and errors stay
//! readable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use sekisho_proto::gateway::v1 as gproto;

use crate::discovery::{Discovery, FoundEndpoint, SourceEvent};
use crate::pool::{FilterPool, PoolSettings};

/// Filter name → address → the kinds of source that list it.
type Wanted = BTreeMap<String, BTreeMap<String, BTreeSet<&'static str>>>;
/// Source index → its kind and what it said last.
type Said = BTreeMap<usize, (&'static str, Vec<FoundEndpoint>)>;

#[derive(Clone)]
pub struct FilterRegistry {
    pools: Arc<RwLock<HashMap<String, Arc<FilterPool>>>>,
    settings: Arc<PoolSettings>,
    /// What each source said last, by source index.
    said: Arc<tokio::sync::Mutex<Said>>,
}

impl FilterRegistry {
    pub fn new(settings: PoolSettings) -> Self {
        FilterRegistry {
            pools: Arc::default(),
            settings: Arc::new(settings),
            said: Arc::default(),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<FilterPool>> {
        self.pools.read().ok()?.get(name).cloned()
    }

    /// Filter names, sorted, for error messages.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .pools
            .read()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    pub fn list(&self) -> Vec<gproto::DiscoveredFilter> {
        let pools: Vec<Arc<FilterPool>> = self
            .pools
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        let mut v: Vec<_> = pools.iter().map(|p| p.to_proto()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Records what source `index` says and brings every pool in step.
    pub async fn apply(&self, index: usize, kind: &'static str, found: Vec<FoundEndpoint>) {
        let mut said = self.said.lock().await;
        said.insert(index, (kind, found));
        let mut wanted = Wanted::new();
        for (kind, found) in said.values() {
            for e in found {
                wanted
                    .entry(e.filter.clone())
                    .or_default()
                    .entry(e.address.clone())
                    .or_default()
                    .insert(kind);
            }
        }
        let pools: Vec<Arc<FilterPool>> = {
            let mut pools = self.pools.write().unwrap_or_else(|p| p.into_inner());
            for name in wanted.keys() {
                pools
                    .entry(name.clone())
                    .or_insert_with(|| FilterPool::new(name.clone(), self.settings.clone()));
            }
            pools.values().cloned().collect()
        };
        let none = BTreeMap::new();
        for pool in pools {
            pool.sync(wanted.get(&pool.name).unwrap_or(&none));
        }
    }

    /// Follows each source for as long as the gateway runs. Source `i` is index
    /// `first_index + i`; a source's trouble keeps what it said last.
    pub fn follow(&self, sources: Vec<Box<dyn Discovery>>, first_index: usize) {
        for (i, source) in sources.into_iter().enumerate() {
            let registry = self.clone();
            let kind = source.kind();
            let mut stream = source.watch();
            tokio::spawn(async move {
                while let Some(event) = stream.next().await {
                    match event {
                        SourceEvent::Endpoints(found) => {
                            registry.apply(first_index + i, kind, found).await
                        }
                        SourceEvent::Trouble(why) => {
                            tracing::debug!(source = kind, %why, "discovery trouble; keeping its last list")
                        }
                    }
                }
            });
        }
    }
}
