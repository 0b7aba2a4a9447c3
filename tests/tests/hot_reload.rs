//! The gateway follows the chainstore: changes arrive without a restart or a failed
//! request, each response names a version that existed, and the gateway keeps serving
//! while the chainstore is away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sekisho_filters_samples::Noop;
use sekisho_proto::chainstore::v1 as cproto;
use sekisho_proto::gateway::v1::Decision;
use sekisho_tests::{TestChainstore, TestFilter, TestGateway};

fn doc(decision: &str) -> String {
    format!(
        "name: live\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{{use: noop}}]\ndefault_decision: {decision}\n"
    )
}

async fn wait_for_version(
    gw: &TestGateway,
    version: u64,
) -> sekisho_proto::gateway::v1::ModerateResponse {
    let start = Instant::now();
    loop {
        if let Ok(r) = gw.moderate_text("live", "hi").await
            && r.chain_version >= version
        {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "version {version} never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_change_under_load_and_survive_a_chainstore_outage() {
    let dir = tempfile::tempdir().unwrap();
    let cs = TestChainstore::start(&dir.path().join("chains.db"))
        .await
        .unwrap();
    let f = TestFilter::start(Noop::default()).await;
    let gw = Arc::new(
        TestGateway::setup()
            .filter("noop", &f.url)
            .chainstore(&cs.url)
            .start()
            .await
            .unwrap(),
    );
    let mut store = cs.client().await;
    store
        .create_chain(cproto::CreateChainRequest {
            document: doc("APPROVE"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(wait_for_version(&gw, 1).await.decision(), Decision::Approve);

    // Moderations run while the chain changes 20 times.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (gw, stop) = (gw.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed, mut versions) = (0u32, Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match gw.moderate_text("live", "hi").await {
                    Ok(r) => {
                        ok += 1;
                        // Odd versions approve, even ones review: the decision matches the version.
                        let want = if r.chain_version % 2 == 1 {
                            Decision::Approve
                        } else {
                            Decision::Review
                        };
                        assert_eq!(r.decision(), want, "version {}", r.chain_version);
                        versions.push(r.chain_version);
                    }
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed, versions)
        })
    };
    for v in 1..=20u64 {
        let decision = if v % 2 == 1 { "REVIEW" } else { "APPROVE" };
        store
            .update_chain(cproto::UpdateChainRequest {
                name: "live".into(),
                document: doc(decision),
                expected_version: v,
                ..Default::default()
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    wait_for_version(&gw, 21).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, versions) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(ok > 20, "only {ok} moderations ran");
    assert!(
        versions.iter().all(|v| (1..=21).contains(v)),
        "{versions:?}"
    );
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "a request went back to an older version"
    );

    // The chainstore dies: the gateway keeps serving the last version it has.
    let mut cs = cs;
    drop(store);
    cs.stop().await;
    for _ in 0..20 {
        let r = gw.moderate_text("live", "hi").await.unwrap();
        assert_eq!(r.chain_version, 21);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // It comes back on its address: the gateway reconnects and resumes after the last
    // revision it applied.
    cs.start_again().await.unwrap();
    cs.client()
        .await
        .update_chain(cproto::UpdateChainRequest {
            name: "live".into(),
            document: doc("REVIEW"),
            expected_version: 21,
            ..Default::default()
        })
        .await
        .unwrap();
    let r = wait_for_version(&gw, 22).await;
    assert_eq!((r.chain_version, r.decision()), (22, Decision::Review));
}
