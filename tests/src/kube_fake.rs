//! A fake Kubernetes API server for the pods of a namespace: a real HTTP server that
//! speaks the list/watch protocol kube-rs and client-go use, and nothing else. It is a
//! fake (no Kubernetes API server can run on the build machines), faithful where
//! discovery depends on it:
//!
//! - `GET /api/v1/namespaces/{ns}/pods` lists the pods (a `PodList` whose
//!   `metadata.resourceVersion` is the store's), honouring `labelSelector` (`k=v,...`);
//! - `...?watch=true&resourceVersion=N` streams, as newline-separated JSON, every change
//!   after N (`ADDED`, `MODIFIED`, `DELETED`), then the changes as they happen;
//! - with `allowWatchBookmarks=true`, a `BOOKMARK` every `bookmark_every`, whose
//!   resourceVersion has moved on (as the cluster-wide version does when other objects
//!   change), so a client that follows bookmarks resumes from a version no pod event has;
//! - a watch from a version older than the last compaction gets an `ERROR` event with a
//!   `410 Gone` Status (reason `Expired`), and the client must list again.
//!
//! The test drives it: [`FakeApiServer::apply`] and [`FakeApiServer::delete`] change pods
//! (with events), [`FakeApiServer::rewrite_unseen`] changes them with no event (as if
//! the events were compacted away), [`FakeApiServer::compact`] and
//! [`FakeApiServer::drop_watches`] force a client to resume, [`FakeApiServer::forbid`]
//! answers 403 for a namespace, and
//! [`FakeApiServer::stop`] takes the server away.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;

#[derive(Default)]
struct Store {
    rv: u64,
    /// (namespace, name) -> pod.
    pods: BTreeMap<(String, String), Value>,
    /// Changes after the last compaction: (resourceVersion, namespace, event).
    history: Vec<(u64, String, Value)>,
    compacted_at: u64,
    /// The resourceVersion of every watch request, in order.
    watch_versions: Vec<String>,
    bookmark_versions: Vec<u64>,
    lists: usize,
    /// Namespaces whose pods the caller may not read (403 Forbidden).
    forbidden: Vec<String>,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<(u64, String, Value)>,
    /// Ends every open watch.
    drop_all: broadcast::Sender<()>,
    bookmark_every: Duration,
}

pub struct FakeApiServer {
    pub url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

/// A pod of `filter` at `ip:port`, Running, ready or not.
pub fn filter_pod(name: &str, filter: &str, ip: &str, port: u16, ready: bool) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "uid": format!("uid-{name}"),
            "labels": {"sekisho.io/role": "filter"},
            "annotations": {"sekisho.io/filter": filter, "sekisho.io/port": port.to_string()},
        },
        "spec": {"containers": [{"name": "filter", "image": "sekisho"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        },
    })
}

impl FakeApiServer {
    pub async fn start(bookmark_every: Duration) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 100,
                ..Store::default()
            }),
            changes: broadcast::channel(1024).0,
            drop_all: broadcast::channel(4).0,
            bookmark_every,
        });
        let app = Router::new()
            .route("/api/v1/namespaces/{ns}/pods", get(pods))
            .fallback(|| async {
                (
                    http::StatusCode::NOT_FOUND,
                    axum::Json(status(404, "NotFound", "the fake serves pods only")),
                )
            })
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        // TCP_NODELAY, as a real API server has (Go sets it on every TCP connection):
        // without it, a watch event written soon after another waits for the client's
        // delayed ACK (~40 ms here), which no real cluster adds.
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeApiServer {
            url,
            shared,
            server,
        })
    }

    fn change(&self, ns: &str, kind: &str, mut pod: Value, record: bool) {
        let mut s = self.shared.store.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
        pod["metadata"]["namespace"] = ns.into();
        pod["metadata"]["resourceVersion"] = rv.to_string().into();
        let key = (ns.to_owned(), name);
        if kind == "DELETED" {
            s.pods.remove(&key);
        } else {
            s.pods.insert(key, pod.clone());
        }
        if record {
            let event = json!({"type": kind, "object": pod});
            s.history.push((rv, ns.to_owned(), event.clone()));
            let _ = self.shared.changes.send((rv, ns.to_owned(), event));
        }
    }

    /// Adds or replaces a pod; watchers see ADDED or MODIFIED.
    pub fn apply(&self, ns: &str, pod: Value) {
        let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
        let exists = self
            .shared
            .store
            .lock()
            .unwrap()
            .pods
            .contains_key(&(ns.to_owned(), name));
        self.change(ns, if exists { "MODIFIED" } else { "ADDED" }, pod, true);
    }

    /// Deletes a pod; watchers see DELETED.
    pub fn delete(&self, ns: &str, name: &str) {
        let pod = self
            .shared
            .store
            .lock()
            .unwrap()
            .pods
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
            .expect("the pod exists");
        self.change(ns, "DELETED", pod, true);
    }

    /// Replaces the namespace's pods with no event at all: only a new list shows them.
    pub fn rewrite_unseen(&self, ns: &str, pods: Vec<Value>) {
        let old: Vec<Value> = {
            let s = self.shared.store.lock().unwrap();
            s.pods
                .iter()
                .filter(|((n, _), _)| n == ns)
                .map(|(_, p)| p.clone())
                .collect()
        };
        for p in old {
            self.change(ns, "DELETED", p, false);
        }
        for p in pods {
            self.change(ns, "ADDED", p, false);
        }
    }

    /// Forgets every change so far: a watch from an earlier version gets 410 Gone.
    pub fn compact(&self) {
        let mut s = self.shared.store.lock().unwrap();
        s.compacted_at = s.rv;
        s.history.clear();
    }

    /// Ends every open watch, as an API server does at its timeout or restart.
    pub fn drop_watches(&self) {
        let _ = self.shared.drop_all.send(());
    }

    /// The resourceVersion each watch request asked for, in order.
    pub fn watch_versions(&self) -> Vec<String> {
        self.shared.store.lock().unwrap().watch_versions.clone()
    }

    /// The resourceVersions of the bookmarks sent so far.
    pub fn bookmark_versions(&self) -> Vec<u64> {
        self.shared.store.lock().unwrap().bookmark_versions.clone()
    }

    /// From now on, reading the pods of `ns` is 403 Forbidden.
    pub fn forbid(&self, ns: &str) {
        self.shared
            .store
            .lock()
            .unwrap()
            .forbidden
            .push(ns.to_owned());
    }

    /// How many list requests were served.
    pub fn lists(&self) -> usize {
        self.shared.store.lock().unwrap().lists
    }

    /// Takes the server away: the port refuses connections.
    pub fn stop(&self) {
        self.drop_watches();
        self.server.abort();
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn selected(pod: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => pod["metadata"]["labels"][k.trim()].as_str() == Some(v.trim()),
        None => false,
    })
}

async fn pods(
    State(shared): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let selector = q.get("labelSelector").cloned();
    if shared.store.lock().unwrap().forbidden.contains(&ns) {
        let msg = format!("pods is forbidden: cannot list resource \"pods\" in namespace \"{ns}\"");
        return (
            http::StatusCode::FORBIDDEN,
            axum::Json(status(403, "Forbidden", &msg)),
        )
            .into_response();
    }
    if q.get("watch").map(String::as_str) != Some("true") {
        let mut s = shared.store.lock().unwrap();
        s.lists += 1;
        let items: Vec<Value> = s
            .pods
            .iter()
            .filter(|((n, _), p)| *n == ns && selected(p, selector.as_deref()))
            .map(|(_, p)| p.clone())
            .collect();
        let list = json!({"kind": "PodList", "apiVersion": "v1",
                          "metadata": {"resourceVersion": s.rv.to_string()}, "items": items});
        return axum::Json(list).into_response();
    }
    let asked = q.get("resourceVersion").cloned().unwrap_or_default();
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    // Subscribe before reading the history, so that nothing falls between the two.
    let mut changes = shared.changes.subscribe();
    let mut drop_all = shared.drop_all.subscribe();
    let (backlog, gone, mut last) = {
        let mut s = shared.store.lock().unwrap();
        s.watch_versions.push(asked.clone());
        let from: u64 = asked.parse().unwrap_or(s.rv);
        let gone = from < s.compacted_at;
        let backlog: Vec<Value> = s
            .history
            .iter()
            .filter(|(rv, n, _)| *rv > from && *n == ns)
            .map(|(_, _, e)| e.clone())
            .collect();
        (backlog, gone, s.rv)
    };
    let line = |v: &Value| Ok::<_, Infallible>(Bytes::from(format!("{v}\n")));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        if gone {
            let err = json!({"type": "ERROR", "object": status(410, "Expired",
                &format!("too old resource version: {asked}"))});
            let _ = tx.send(line(&err)).await;
            return;
        }
        for e in backlog {
            if tx.send(line(&e)).await.is_err() {
                return;
            }
        }
        let mut tick = tokio::time::interval(shared.bookmark_every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = drop_all.recv() => return,
                c = changes.recv() => match c {
                    Ok((rv, n, e)) if n == ns && rv > last => {
                        last = rv;
                        if tx.send(line(&e)).await.is_err() { return; }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let rv = {
                        let mut s = shared.store.lock().unwrap();
                        // Other objects change too: the version moves on.
                        s.rv += 1;
                        let rv = s.rv;
                        s.bookmark_versions.push(rv);
                        rv
                    };
                    let bm = json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": rv.to_string()}}});
                    if tx.send(line(&bm)).await.is_err() { return; }
                }
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap()
}
