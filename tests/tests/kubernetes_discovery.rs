//! Kubernetes discovery: `sekisho gateway` with `discovery.kubernetes` watching pods
//! through a **fake** API server (`sekisho_tests::kube_fake`: real HTTP, the list/watch
//! protocol with resourceVersions, bookmarks and 410 Gone; no Kubernetes API server runs
//! on the build machines), and real `sekisho filter noop` processes standing in for the
//! pods at the addresses the pods name.

use std::time::Duration;

use sekisho_tests::kube_fake::{FakeApiServer, filter_pod};
use sekisho_tests::{FilterProcess, TestGateway, free_port, noop_chain, ready_addresses};
use serde_json::json;

const NS: &str = "moderation";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_annotated_pods_are_followed_through_bookmarks_and_a_410_relist() {
    let within = Duration::from_secs(10);
    let port = free_port();
    let a = FilterProcess::start_on("noop", &format!("127.0.0.2:{port}"), &[])
        .await
        .unwrap();
    let b = FilterProcess::start_on("noop", &format!("127.0.0.3:{port}"), &[])
        .await
        .unwrap();
    let api = FakeApiServer::start(Duration::from_millis(100))
        .await
        .unwrap();
    api.apply(NS, filter_pod("noop-a", "noop", "127.0.0.2", port, true));
    // Not ready yet, a malformed port, a pod of something else, and a pod without the
    // filter label: none is an endpoint.
    api.apply(NS, filter_pod("noop-b", "noop", "127.0.0.3", port, false));
    let mut bad = filter_pod("noop-bad", "noop", "127.0.0.4", port, true);
    bad["metadata"]["annotations"]["sekisho.io/port"] = json!("grpc");
    api.apply(NS, bad);
    let mut unlabelled = filter_pod("stray", "noop", "127.0.0.5", port, true);
    unlabelled["metadata"]["labels"] = json!({});
    api.apply(NS, unlabelled);
    api.apply(
        "elsewhere",
        filter_pod("noop-x", "noop", "127.0.0.6", port, true),
    );

    // A second namespace the gateway may not read: it must not hold back the first.
    api.forbid("locked");

    let gw = TestGateway::setup()
        .chain(&noop_chain("k8s"))
        .config(
            "discovery",
            json!({"kubernetes": {
                "api_server": api.url,
                "namespaces": [NS, "locked"],
                "label_selector": "sekisho.io/role=filter",
            }}),
        )
        .start()
        .await
        .unwrap();

    let eps = gw
        .wait_endpoints("noop", within, |e| ready_addresses(e).len() == 1)
        .await
        .unwrap();
    assert_eq!(eps.len(), 1, "{eps:#?}");
    assert_eq!(eps[0].address, a.url);
    assert_eq!(eps[0].source, "kubernetes");
    assert_eq!(gw.decision("k8s", "hello").await.unwrap(), "APPROVE");

    // noop-b becomes ready (MODIFIED): two endpoints.
    api.apply(NS, filter_pod("noop-b", "noop", "127.0.0.3", port, true));
    let eps = gw
        .wait_endpoints("noop", within, |e| ready_addresses(e).len() == 2)
        .await
        .unwrap();
    assert_eq!(ready_addresses(&eps), [a.url.clone(), b.url.clone()]);
    // noop-a deleted (DELETED): one.
    api.delete(NS, "noop-a");
    gw.wait_endpoints("noop", within, |e| ready_addresses(e) == [b.url.clone()])
        .await
        .unwrap();

    // Bookmarks: after the watch ends, the client resumes from a bookmark's version.
    tokio::time::sleep(Duration::from_millis(350)).await;
    api.drop_watches();
    let resumed = async {
        loop {
            let marks = api.bookmark_versions();
            if api
                .watch_versions()
                .iter()
                .any(|v| v.parse().is_ok_and(|v: u64| marks.contains(&v)))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(within, resumed)
        .await
        .expect("a watch resumed from a bookmark's resourceVersion");

    // Changes whose events were compacted away: the resumed watch gets 410 Gone, the
    // client lists again and finds noop-a back and noop-b gone.
    let lists = api.lists();
    api.rewrite_unseen(
        NS,
        vec![filter_pod("noop-a", "noop", "127.0.0.2", port, true)],
    );
    api.compact();
    api.drop_watches();
    gw.wait_endpoints("noop", within, |e| ready_addresses(e) == [a.url.clone()])
        .await
        .unwrap();
    assert!(api.lists() > lists, "the client listed again after 410");

    // The API server away: the last endpoints keep serving.
    api.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        ready_addresses(&gw.endpoints("noop").await.unwrap()),
        [a.url.as_str()]
    );
    assert_eq!(gw.decision("k8s", "hello").await.unwrap(), "APPROVE");
}
