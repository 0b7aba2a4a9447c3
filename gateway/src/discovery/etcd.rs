//! etcd: filter replicas register themselves (the filter SDK's `--etcd`) under
//! `{prefix}/{filter}/{instance}`, bound to a lease they keep alive; the gateway reads the
//! prefix, then watches it from the revision it read, so nothing between is missed.
//!
//! etcd away: the last list stays in use and the source reconnects with backoff (100 ms
//! doubling to 5 s). A malformed registration is reported once, with its key, and ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use futures::stream::BoxStream;
use sekisho_proto::registration::Registration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Discovery, FoundEndpoint, ReportOnce, SourceEvent};

#[derive(Debug, Clone)]
pub struct EtcdDiscovery {
    /// etcd client URLs, `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    pub prefix: String,
}

/// The registrations under the prefix, by key.
#[derive(Default)]
struct Known {
    by_key: BTreeMap<String, FoundEndpoint>,
    reports: ReportOnce,
}

impl Known {
    fn put(&mut self, prefix: &str, key: &str, value: &[u8]) {
        match Registration::parse(prefix, key, value) {
            Ok(r) => {
                self.by_key.insert(
                    key.to_owned(),
                    FoundEndpoint {
                        filter: r.filter,
                        address: r.address,
                    },
                );
            }
            Err(e) => {
                // A key that was good and turns bad is withdrawn, not kept stale.
                self.by_key.remove(key);
                if self.reports.first(&format!("{key}: {e}")) {
                    tracing::warn!(key, problem = %e, "malformed etcd registration ignored");
                }
            }
        }
    }

    fn list(&self) -> Vec<FoundEndpoint> {
        let mut v: Vec<_> = self.by_key.values().cloned().collect();
        v.sort();
        v.dedup();
        v
    }
}

impl EtcdDiscovery {
    /// One session: read the prefix, then follow it. Returns why it ended.
    async fn session(&self, known: &mut Known, tx: &mpsc::Sender<SourceEvent>) -> String {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        let mut client = match Client::connect(&self.endpoints, Some(opts)).await {
            Ok(c) => c,
            Err(e) => return format!("cannot connect to etcd {:?}: {e}", self.endpoints),
        };
        let prefix = format!("{}/", self.prefix.trim_end_matches('/'));
        let got = match client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
        {
            Ok(g) => g,
            Err(e) => return format!("etcd get {prefix}: {e}"),
        };
        let revision = got.header().map(|h| h.revision()).unwrap_or(0);
        known.by_key.clear();
        for kv in got.kvs() {
            known.put(&self.prefix, &String::from_utf8_lossy(kv.key()), kv.value());
        }
        if tx.send(SourceEvent::Endpoints(known.list())).await.is_err() {
            return String::new();
        }
        let mut watch = match client
            .watch(
                prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
        {
            Ok(w) => w,
            Err(e) => return format!("etcd watch {prefix}: {e}"),
        };
        loop {
            let msg = match watch.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return "the etcd watch ended".into(),
                Err(e) => return format!("etcd watch: {e}"),
            };
            if msg.canceled() {
                // Compacted past our revision, for one: read the prefix afresh.
                return format!("etcd cancelled the watch: {}", msg.cancel_reason());
            }
            if msg.events().is_empty() {
                continue;
            }
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                match ev.event_type() {
                    EventType::Put => known.put(&self.prefix, &key, kv.value()),
                    EventType::Delete => {
                        known.by_key.remove(&key);
                    }
                }
            }
            if tx.send(SourceEvent::Endpoints(known.list())).await.is_err() {
                return String::new();
            }
        }
    }
}

impl Discovery for EtcdDiscovery {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn watch(self: Box<Self>) -> BoxStream<'static, SourceEvent> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut known = Known::default();
            let mut backoff = Duration::from_millis(100);
            loop {
                let started = tokio::time::Instant::now();
                let why = self.session(&mut known, &tx).await;
                if tx.is_closed() {
                    return;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(100);
                }
                tracing::warn!(etcd = ?self.endpoints, error = %why, retry_in = ?backoff, "etcd discovery interrupted; keeping the last list");
                if tx.send(SourceEvent::Trouble(why)).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}
