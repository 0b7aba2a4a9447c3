//! Kubernetes: ready pods that carry a `sekisho.io/filter` annotation, watched in the
//! configured namespaces through the API server (kube-rs's watcher: list, then watch from
//! the list's resourceVersion, following bookmarks, and listing again after `410 Gone`).
//!
//! ```yaml
//! discovery:
//!   kubernetes:
//!     namespaces: [moderation]
//!     label_selector: sekisho.io/role=filter   # optional
//! ```
//!
//! A pod is an endpoint `http://<pod IP>:<port>` of the filter its annotation names
//! (`sekisho.io/port`, default 50051) while it is Running, Ready and not being deleted.
//! A pod whose annotations are malformed is reported once and left out. While the API
//! server is away the last endpoints stay in use; the watcher reconnects with backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::stream::BoxStream;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Discovery, FoundEndpoint, ReportOnce, SourceEvent};
use crate::config::KubernetesSource;

/// The annotation naming the filter a pod serves.
pub const FILTER_ANNOTATION: &str = "sekisho.io/filter";
/// The annotation naming its gRPC port.
pub const PORT_ANNOTATION: &str = "sekisho.io/port";
pub const DEFAULT_PORT: u16 = 50051;

#[derive(Debug, Clone)]
pub struct KubernetesDiscovery {
    pub source: KubernetesSource,
}

/// What one pod says: not a filter pod, not ready yet, an endpoint, or malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodEndpoint {
    NotAFilter,
    NotReady,
    Ready(FoundEndpoint),
    Malformed(String),
}

/// Reads one pod.
pub fn pod_endpoint(pod: &Pod) -> PodEndpoint {
    let meta = &pod.metadata;
    let name = format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    );
    let annotations = meta.annotations.as_ref();
    let Some(filter) = annotations.and_then(|a| a.get(FILTER_ANNOTATION)) else {
        return PodEndpoint::NotAFilter;
    };
    let filter = filter.trim();
    if filter.is_empty()
        || filter.len() > 63
        || !filter
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return PodEndpoint::Malformed(format!(
            "pod {name}: {FILTER_ANNOTATION} `{filter}` is not a filter name"
        ));
    }
    let port = match annotations.and_then(|a| a.get(PORT_ANNOTATION)) {
        None => DEFAULT_PORT,
        Some(p) => match p.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return PodEndpoint::Malformed(format!(
                    "pod {name}: {PORT_ANNOTATION} `{p}` is not a port"
                ));
            }
        },
    };
    if meta.deletion_timestamp.is_some() {
        return PodEndpoint::NotReady;
    }
    let Some(status) = &pod.status else {
        return PodEndpoint::NotReady;
    };
    let ready = status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return PodEndpoint::NotReady;
    }
    let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) else {
        return PodEndpoint::NotReady;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return PodEndpoint::Malformed(format!("pod {name}: podIP `{ip}` is not an address"));
    };
    PodEndpoint::Ready(FoundEndpoint {
        filter: filter.to_owned(),
        address: format!("http://{}", std::net::SocketAddr::new(ip, port)),
    })
}

async fn client(source: &KubernetesSource) -> Result<Client, String> {
    let config = match &source.api_server {
        Some(url) => {
            let uri = url
                .parse()
                .map_err(|e| format!("discovery.kubernetes.api_server `{url}`: {e}"))?;
            kube::Config::new(uri)
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration (in-cluster or kubeconfig): {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
}

/// The pods of one namespace as the watcher last told them, by pod name.
#[derive(Default)]
struct Namespace {
    pods: BTreeMap<String, PodEndpoint>,
    /// Pods of a relist in progress, swapped in at `InitDone`.
    relist: Option<BTreeMap<String, PodEndpoint>>,
    listed: bool,
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

impl Discovery for KubernetesDiscovery {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn watch(self: Box<Self>) -> BoxStream<'static, SourceEvent> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let source = self.source;
            let client = loop {
                match client(&source).await {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::error!(error = %e, "Kubernetes discovery cannot start; trying again in 10s");
                        if tx.send(SourceEvent::Trouble(e)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                    }
                }
            };
            let mut config = watcher::Config::default();
            if let Some(sel) = &source.label_selector {
                config = config.labels(sel);
            }
            let streams = source.namespaces.iter().enumerate().map(|(i, ns)| {
                let api: Api<Pod> = Api::namespaced(client.clone(), ns);
                watcher::watcher(api, config.clone())
                    .default_backoff()
                    .map(move |ev| (i, ev))
                    .boxed()
            });
            let mut events = stream::select_all(streams);
            let mut spaces: Vec<Namespace> = source
                .namespaces
                .iter()
                .map(|_| Namespace::default())
                .collect();
            let mut said: Option<Vec<FoundEndpoint>> = None;
            let mut reports = ReportOnce::default();
            // Per namespace: one that keeps failing is reported once.
            let mut trouble: Vec<ReportOnce> = source
                .namespaces
                .iter()
                .map(|_| ReportOnce::default())
                .collect();
            while let Some((i, ev)) = events.next().await {
                let ns = &mut spaces[i];
                match ev {
                    Ok(Event::Init) => ns.relist = Some(BTreeMap::new()),
                    Ok(Event::InitApply(pod)) => {
                        let e = pod_endpoint(&pod);
                        ns.relist
                            .get_or_insert_with(BTreeMap::new)
                            .insert(pod_name(&pod), e);
                    }
                    Ok(Event::InitDone) => {
                        ns.pods = ns.relist.take().unwrap_or_default();
                        ns.listed = true;
                    }
                    Ok(Event::Apply(pod)) => {
                        ns.pods.insert(pod_name(&pod), pod_endpoint(&pod));
                    }
                    Ok(Event::Delete(pod)) => {
                        ns.pods.remove(&pod_name(&pod));
                    }
                    // History compacted past where the watch was: the watcher lists
                    // again. Routine, not trouble.
                    Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                        tracing::debug!(namespace = %source.namespaces[i], "watch expired (410 Gone); listing again");
                        continue;
                    }
                    Err(e) => {
                        let why =
                            format!("Kubernetes API, namespace {}: {e}", source.namespaces[i]);
                        if trouble[i].first(&why) {
                            tracing::warn!(problem = %why, "Kubernetes discovery: keeping the last endpoints");
                            if tx.send(SourceEvent::Trouble(why)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                }
                trouble[i].keep_only(&[]);
                // Nothing is said before a first list; a namespace that cannot be
                // listed (forbidden, say) does not hold back the others.
                if !spaces.iter().any(|s| s.listed) {
                    continue;
                }
                let mut now = BTreeSet::new();
                let mut problems = Vec::new();
                for e in spaces.iter().flat_map(|s| s.pods.values()) {
                    match e {
                        PodEndpoint::Ready(f) => {
                            now.insert(f.clone());
                        }
                        PodEndpoint::Malformed(p) => problems.push(p.clone()),
                        PodEndpoint::NotAFilter | PodEndpoint::NotReady => {}
                    }
                }
                for p in &problems {
                    if reports.first(p) {
                        tracing::warn!(problem = %p, "Kubernetes discovery: pod left out");
                    }
                }
                reports.keep_only(&problems);
                let now: Vec<FoundEndpoint> = now.into_iter().collect();
                if said.as_ref() != Some(&now) {
                    if tx.send(SourceEvent::Endpoints(now.clone())).await.is_err() {
                        return;
                    }
                    said = Some(now);
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: &[(&str, &str)], phase: &str, ready: bool, ip: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "p", "namespace": "ns",
                "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            },
            "status": {
                "phase": phase, "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_configuration_names_what_is_wrong() {
        let check = |v: serde_json::Value| {
            serde_json::from_value::<KubernetesSource>(v)
                .unwrap()
                .check()
                .err()
        };
        assert_eq!(
            check(serde_json::json!({"namespaces": ["moderation"]})),
            None
        );
        assert_eq!(
            check(serde_json::json!({"namespaces": ["a"], "api_server": "https://10.0.0.1:6443"})),
            None
        );
        assert!(
            check(serde_json::json!({"namespaces": []}))
                .unwrap()
                .contains("at least one")
        );
        assert!(
            check(serde_json::json!({"namespaces": ["ok", "Not_OK"]}))
                .unwrap()
                .contains("namespaces[1]")
        );
        assert!(
            check(serde_json::json!({"namespaces": ["a"], "api_server": "10.0.0.1"}))
                .unwrap()
                .contains("not a URL")
        );
    }

    #[test]
    fn a_ready_annotated_pod_is_an_endpoint_at_its_port() {
        let p = pod(
            &[
                (FILTER_ANNOTATION, "face-detect"),
                (PORT_ANNOTATION, "7000"),
            ],
            "Running",
            true,
            "10.1.2.3",
        );
        assert_eq!(
            pod_endpoint(&p),
            PodEndpoint::Ready(FoundEndpoint {
                filter: "face-detect".into(),
                address: "http://10.1.2.3:7000".into()
            })
        );
        let p = pod(&[(FILTER_ANNOTATION, "noop")], "Running", true, "fd00::7");
        assert!(
            matches!(pod_endpoint(&p), PodEndpoint::Ready(f) if f.address == "http://[fd00::7]:50051")
        );
    }

    #[test]
    fn pods_not_ready_or_not_filters_are_left_out_and_malformed_ones_named() {
        let f = [(FILTER_ANNOTATION, "noop")];
        assert_eq!(
            pod_endpoint(&pod(&[], "Running", true, "10.0.0.1")),
            PodEndpoint::NotAFilter
        );
        assert_eq!(
            pod_endpoint(&pod(&f, "Running", false, "10.0.0.1")),
            PodEndpoint::NotReady
        );
        assert_eq!(
            pod_endpoint(&pod(&f, "Pending", true, "10.0.0.1")),
            PodEndpoint::NotReady
        );
        assert_eq!(
            pod_endpoint(&pod(&f, "Running", true, "")),
            PodEndpoint::NotReady
        );
        let mut deleting = pod(&f, "Running", true, "10.0.0.1");
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(pod_endpoint(&deleting), PodEndpoint::NotReady);
        let bad_port = pod(
            &[(FILTER_ANNOTATION, "noop"), (PORT_ANNOTATION, "grpc")],
            "Running",
            true,
            "10.0.0.1",
        );
        assert!(
            matches!(pod_endpoint(&bad_port), PodEndpoint::Malformed(m) if m.contains("ns/p") && m.contains("`grpc` is not a port"))
        );
        let bad_name = pod(&[(FILTER_ANNOTATION, "a b")], "Running", true, "10.0.0.1");
        assert!(
            matches!(pod_endpoint(&bad_name), PodEndpoint::Malformed(m) if m.contains("not a filter name"))
        );
    }
}
