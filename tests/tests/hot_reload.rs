//! The gateway follows the chainstore: changes arrive without a restart or a failed
//! request, each response names a version that existed and was decided by that version,
//! and the gateway keeps serving while the chainstore is away. The load comes from the
//! project's load generator (`sekisho bench moderate`) in its own process.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sekisho_filters_samples::Noop;
use sekisho_proto::chainstore::v1 as cproto;
use sekisho_tests::{LoadRun, TestChainstore, TestFilter, TestGateway};

/// Version `v` of the chain: every item goes to REVIEW with the reason `v<v>`, so each
/// response shows which version decided it.
fn doc(v: u64) -> String {
    format!(
        "name: live\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{{use: noop}}]\n    branches:\n      - when: \"score >= 0.0\"\n        decide: {{decision: REVIEW, reason: v{v}}}\ndefault_decision: APPROVE\n"
    )
}

async fn update(store: &mut TestStore, v: u64) {
    store
        .update_chain(cproto::UpdateChainRequest {
            name: "live".into(),
            document: doc(v + 1),
            expected_version: v,
            ..Default::default()
        })
        .await
        .unwrap();
}

type TestStore = cproto::chain_store_client::ChainStoreClient<tonic::transport::Channel>;

async fn wait_for_version(gw: &TestGateway, version: u64) {
    let start = Instant::now();
    loop {
        if let Ok(r) = gw.moderate_text("live", "hi").await
            && r.chain_version >= version
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "version {version} never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a chainstore holding version 1 of `live`, a noop filter and a gateway
/// following the chainstore, serving version 1.
async fn setup(dir: &std::path::Path) -> (TestChainstore, TestFilter, TestGateway) {
    let cs = TestChainstore::start(&dir.join("chains.db")).await.unwrap();
    let f = TestFilter::start(Noop::default()).await;
    let gw = TestGateway::setup()
        .filter("noop", &f.url)
        .chainstore(&cs.url)
        .start()
        .await
        .unwrap();
    cs.client()
        .await
        .create_chain(cproto::CreateChainRequest {
            document: doc(1),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_for_version(&gw, 1).await;
    (cs, f, gw)
}

/// Checks a load report: nothing failed, every response came from a version in
/// `existed` and carries that version's reason. Returns the versions seen.
fn check_report(
    report: &serde_json::Value,
    existed: std::ops::RangeInclusive<u64>,
) -> BTreeSet<u64> {
    assert_eq!(report["errors"], 0, "failed requests: {report}");
    let mut seen = BTreeSet::new();
    for o in report["outcomes"].as_array().unwrap() {
        let v = o["chain_version"].as_u64().unwrap();
        assert!(existed.contains(&v), "version {v} never existed: {o}");
        assert_eq!(o["decision"], "REVIEW", "{o}");
        assert_eq!(
            o["reason"],
            format!("v{v}"),
            "decided by another version: {o}"
        );
        seen.insert(v);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_changes_during_ten_thousand_moderations_fail_none() {
    let dir = tempfile::tempdir().unwrap();
    let (cs, _f, gw) = setup(dir.path()).await;
    let mut store = cs.client().await;

    let load = LoadRun::start(
        &gw.url,
        "live",
        &[
            "--requests",
            "10000",
            "--concurrency",
            "8",
            "--connections",
            "2",
        ],
    )
    .await
    .unwrap();
    for v in 1..=50 {
        update(&mut store, v).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = load.finish().await.unwrap();
    assert_eq!(report["ok"], 10_000, "{report}");
    let seen = check_report(&report, 1..=51);
    eprintln!(
        "10,000 moderations saw {} of the 51 versions: {seen:?}",
        seen.len()
    );
    // The changes landed while the load ran, not before or after it.
    assert!(seen.len() >= 2, "only versions {seen:?} answered");
    wait_for_version(&gw, 51).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chainstore_stopped_mid_load_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cs, _f, gw) = setup(dir.path()).await;
    update(&mut cs.client().await, 1).await;
    wait_for_version(&gw, 2).await;

    let load = LoadRun::start(&gw.url, "live", &["--duration", "4s", "--concurrency", "4"])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Killed, not stopped gracefully: the gateway's Watch breaks mid-stream.
    cs.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Back on its address: the gateway reconnects (with backoff) and resumes after the
    // last revision it applied, while the load goes on.
    cs.start_again().await.unwrap();
    update(&mut cs.client().await, 2).await;
    let report = load.finish().await.unwrap();
    let seen = check_report(&report, 2..=3);
    assert!(report["ok"].as_u64().unwrap() > 100, "{report}");
    assert!(seen.contains(&2), "{seen:?}");
    wait_for_version(&gw, 3).await;
}
