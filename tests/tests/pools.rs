//! Filter replicas found by discovery and balanced by the gateway, all real processes:
//! `sekisho filter noop` replicas registering in a real etcd (Debian's `etcd-server`),
//! `sekisho gateway` watching it, and the load from `sekisho bench moderate`.

use std::time::{Duration, Instant};

use sekisho_tests::{FilterProcess, LoadRun, TestEtcd, TestGateway};
use serde_json::json;

const PREFIX: &str = "/sekisho/filters";

/// One stage of noop: its score is 0, so every item is approved unless the filter
/// fails, which sends it to REVIEW (`filter_error`), never to APPROVE.
const CHAIN: &str = "name: replicas\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{use: noop, retries: 2, timeout: 2s}]\n    branches:\n      - when: \"score >= 0.5\"\n        decide: {decision: REJECT, reason: flagged}\ndefault_decision: APPROVE\n";

/// A noop replica registered in `etcd` with a short lease (a killed one is gone in 3 s).
async fn replica(etcd: &TestEtcd) -> FilterProcess {
    replica_with_ttl(etcd, "3s").await
}

async fn replica_with_ttl(etcd: &TestEtcd, ttl: &str) -> FilterProcess {
    let args = [
        "--etcd",
        &etcd.url,
        "--etcd-ttl",
        ttl,
        "--drain-delay",
        "300ms",
    ];
    FilterProcess::start("noop", &args).await.unwrap()
}

async fn gateway_on(etcd: &TestEtcd) -> TestGateway {
    TestGateway::setup()
        .chain(CHAIN)
        .config("discovery", json!({"etcd": {"endpoints": [etcd.url]}}))
        .start()
        .await
        .unwrap()
}

/// 6,000 moderations of the chain, 8 at a time, from the load generator's own process.
async fn start_load(gw: &TestGateway) -> LoadRun {
    let args = ["--requests", "6000", "--concurrency", "8"];
    LoadRun::start(&gw.url, "replicas", &args).await.unwrap()
}

fn ready(eps: &[sekisho_proto::gateway::v1::Endpoint]) -> usize {
    eps.iter().filter(|e| e.state == "ready").count()
}

/// Sums the load generator's outcomes by decision.
fn decisions(report: &serde_json::Value) -> (u64, u64, Vec<String>) {
    let mut approved = 0;
    let mut other = 0;
    let mut kinds = Vec::new();
    for o in report["outcomes"].as_array().unwrap() {
        let n = o["count"].as_u64().unwrap();
        let d = o["decision"].as_str().unwrap();
        if d == "APPROVE" {
            approved += n;
        } else {
            other += n;
            kinds.push(format!("{d} {} ×{n}", o["reason"]));
        }
    }
    (approved, other, kinds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_registered_in_etcd_takes_traffic_within_a_second_and_leaves_on_sigterm() {
    let etcd = TestEtcd::start().await.unwrap();
    let first = replica(&etcd).await;
    let gw = gateway_on(&etcd).await;
    gw.wait_endpoints("noop", Duration::from_secs(10), |e| ready(e) == 1)
        .await
        .unwrap();
    assert_eq!(
        gw.moderate_text("replicas", "hi").await.unwrap().decision(),
        sekisho_proto::gateway::v1::Decision::Approve
    );

    // A second replica: from the moment its key is in etcd to its first served call.
    let second = replica(&etcd).await;
    let registered = loop {
        let keys = etcd.keys(PREFIX).await.unwrap();
        if keys.iter().any(|(_, v)| v.contains(&second.url)) {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let served = loop {
        let _ = gw.moderate_text("replicas", "hi").await.unwrap();
        let eps = gw.endpoints("noop").await.unwrap();
        if eps.iter().any(|e| e.address == second.url && e.calls > 0) {
            break registered.elapsed();
        }
        assert!(
            registered.elapsed() < Duration::from_secs(10),
            "the new replica never took traffic: {eps:#?}"
        );
    };
    eprintln!("etcd registration -> first call served: {served:?}");
    assert!(
        served < Duration::from_secs(1),
        "took {served:?}, the aim is under a second"
    );
    let eps = gw.endpoints("noop").await.unwrap();
    assert!(eps.iter().all(|e| e.source == "etcd"), "{eps:#?}");

    // SIGTERM: the replica withdraws its key (no waiting for the lease) and the gateway
    // drops it; the other keeps serving.
    let gone = second.url.clone();
    let status = second.terminate().await.unwrap();
    assert!(status.success(), "{status}");
    let keys = etcd.keys(PREFIX).await.unwrap();
    assert!(!keys.iter().any(|(_, v)| v.contains(&gone)), "{keys:?}");
    gw.wait_endpoints("noop", Duration::from_secs(5), |e| {
        e.len() == 1 && e[0].address == first.url
    })
    .await
    .unwrap();
    gw.moderate_text("replicas", "hi").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_nothing_and_a_killed_replica_loses_nothing_either() {
    let etcd = TestEtcd::start().await.unwrap();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&etcd).await);
    }
    let gw = gateway_on(&etcd).await;
    gw.wait_endpoints("noop", Duration::from_secs(10), |e| ready(e) == 3)
        .await
        .unwrap();

    // Rolling restart under load: each replica in turn gets SIGTERM and a new one
    // registers. Nothing may fail or go to REVIEW.
    let load = start_load(&gw).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let old = replicas.remove(0);
        replicas.push(replica(&etcd).await);
        assert!(old.terminate().await.unwrap().success());
    }
    let report = load.finish().await.unwrap();
    let (approved, other, kinds) = decisions(&report);
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!((approved, other), (6000, 0), "{kinds:?}");

    // SIGKILL under load: calls in flight on it fail, and are retried on the others;
    // none errors and none is approved without a filter's answer.
    gw.wait_endpoints("noop", Duration::from_secs(10), |e| ready(e) == 3)
        .await
        .unwrap();
    let load = start_load(&gw).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim = replicas.remove(0);
    let victim_url = victim.url.clone();
    victim.kill().await.unwrap();
    let report = load.finish().await.unwrap();
    let (approved, other, kinds) = decisions(&report);
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(approved + other, 6000);
    assert!(
        kinds
            .iter()
            .all(|k| k.starts_with("REVIEW \"filter_error\"")),
        "{kinds:?}"
    );
    eprintln!("killed replica: {approved} approved, {other} to REVIEW ({kinds:?})");
    // The dead replica is out of rotation at once, and gone when its lease expires.
    let eps = gw.endpoints("noop").await.unwrap();
    assert!(
        eps.iter()
            .all(|e| e.address != victim_url || e.state != "ready"),
        "{eps:#?}"
    );
    gw.wait_endpoints("noop", Duration::from_secs(10), |e| {
        e.len() == 2 && e.iter().all(|e| e.address != victim_url)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_failing_every_call_is_ejected_then_readmitted_when_it_recovers() {
    let good = FilterProcess::start("noop", &[]).await.unwrap();
    let bad = FilterProcess::start("noop", &["--fail-for", "3s"])
        .await
        .unwrap();
    // Round robin keeps sending it calls; p2c would mostly avoid it by itself (a failed
    // call weighs as twice its latency estimate), so ejection is shown on its own here.
    let gw = TestGateway::setup()
        .filter_replicas("noop", &[&good.url, &bad.url])
        .chain(CHAIN)
        .config("balance", json!("round_robin"))
        .config(
            "outlier",
            json!({"consecutive_failures": 5, "base_ejection": "500ms", "max_ejection": "1s"}),
        )
        .start()
        .await
        .unwrap();
    gw.wait_endpoints("noop", Duration::from_secs(10), |e| ready(e) == 2)
        .await
        .unwrap();
    let start = Instant::now();
    let mut saw_ejected = false;
    // While it fails: every item is still approved (retried on the good replica), and
    // the bad one is ejected.
    while start.elapsed() < Duration::from_millis(2500) {
        let r = gw.moderate_text("replicas", "hi").await.unwrap();
        assert_eq!(r.reason, "default", "{r:?}");
        let eps = gw.endpoints("noop").await.unwrap();
        let b = eps.iter().find(|e| e.address == bad.url).unwrap();
        if b.state == "ejected" {
            saw_ejected = true;
            assert!(b.ejected_for_ms > 0 && b.ejections >= 1, "{b:?}");
            assert!(b.last_error.contains("set to fail"), "{b:?}");
        }
        // Never the whole pool.
        let g = eps.iter().find(|e| e.address == good.url).unwrap();
        assert_eq!(g.state, "ready", "{g:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_ejected, "the failing replica was never ejected");
    // Recovered: once its ejection ends it serves again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = gw.endpoint("noop", &bad.url).await.unwrap();
    for _ in 0..40 {
        let r = gw.moderate_text("replicas", "hi").await.unwrap();
        assert_eq!(r.reason, "default");
    }
    let after = gw.endpoint("noop", &bad.url).await.unwrap();
    assert_eq!(after.state, "ready", "{after:?}");
    assert!(after.calls > before.calls, "{before:?} {after:?}");
    assert_eq!(after.failures, before.failures, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_another_version_is_kept_out_and_named() {
    let a = FilterProcess::start("noop", &[]).await.unwrap();
    let b = FilterProcess::start("noop", &[]).await.unwrap();
    let odd = FilterProcess::start("noop", &["--describe-version", "9.9.9"])
        .await
        .unwrap();
    let gw = TestGateway::setup()
        .filter_replicas("noop", &[&a.url, &b.url, &odd.url])
        .chain(CHAIN)
        .start()
        .await
        .unwrap();
    let eps = gw
        .wait_endpoints("noop", Duration::from_secs(10), |e| {
            ready(e) == 2 && e.iter().any(|e| e.state == "refused")
        })
        .await
        .unwrap();
    let o = eps.iter().find(|e| e.address == odd.url).unwrap();
    assert_eq!(o.state, "refused");
    assert!(
        o.last_error
            .contains("version `9.9.9` where its siblings have `0.1.0`"),
        "{o:?}"
    );
    for _ in 0..30 {
        gw.moderate_text("replicas", "hi").await.unwrap();
    }
    let o = gw.endpoint("noop", &odd.url).await.unwrap();
    assert_eq!(o.calls, 0, "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_away_the_last_endpoints_serve_and_malformed_registrations_are_ignored() {
    let mut etcd = TestEtcd::start().await.unwrap();
    let r1 = replica_with_ttl(&etcd, "30s").await;
    let gw = gateway_on(&etcd).await;
    gw.wait_endpoints("noop", Duration::from_secs(10), |e| ready(e) == 1)
        .await
        .unwrap();
    // Malformed registrations: reported by the gateway and ignored.
    let mut c = etcd.client().await.unwrap();
    c.put(format!("{PREFIX}/noop/bad-json"), "{", None)
        .await
        .unwrap();
    c.put(
        format!("{PREFIX}/noop/bad-address"),
        r#"{"filter":"noop","address":"not a url"}"#,
        None,
    )
    .await
    .unwrap();
    c.put(
        format!("{PREFIX}/noop/wrong-name"),
        r#"{"filter":"keywords","address":"http://127.0.0.1:9"}"#,
        None,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let eps = gw.endpoints("noop").await.unwrap();
    assert_eq!(eps.len(), 1, "{eps:#?}");
    assert_eq!(eps[0].address, r1.url);

    // etcd away: the gateway keeps the endpoints it knew.
    etcd.stop().await;
    for _ in 0..20 {
        gw.moderate_text("replicas", "hi").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready(&gw.endpoints("noop").await.unwrap()), 1);

    // etcd back: the gateway reconnects (with backoff) and sees a new registration.
    etcd.start_again().await.unwrap();
    let r2 = replica(&etcd).await;
    gw.wait_endpoints("noop", Duration::from_secs(15), |e| {
        ready(e) == 2 && e.iter().any(|e| e.address == r2.url)
    })
    .await
    .unwrap();
}

/// SIGTERM with a call in flight from a gateway and a health watcher attached (a health
/// `Watch` never ends on its own): the replica answers the call, ends the watch and
/// exits. It used to wait for the watch for ever (`sekisho dev` never stopped: its
/// gateway, shutting down too, no longer let go of its filters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_replica_answers_its_call_in_flight_and_stops_on_sigterm() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let args = ["--drain-delay", "200ms", "--extra-delay", "1s"];
    let replica = FilterProcess::start("noop", &args).await.unwrap();
    let gw = TestGateway::setup()
        .chain(CHAIN)
        .filter("noop", &replica.url)
        .start()
        .await
        .unwrap();
    gw.wait_endpoints("noop", Duration::from_secs(10), |e| ready(e) == 1)
        .await
        .unwrap();
    let channel = tonic::transport::Channel::from_shared(replica.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "sekisho.filter.v1.Filter".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some(), "SERVING first");
    let (answer, status) = tokio::join!(gw.moderate_text("replicas", "hi"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        replica.terminate().await
    });
    let status = status.expect("it exits");
    assert!(status.success(), "{status}");
    let answer = answer.unwrap();
    assert_eq!(
        answer.decision(),
        sekisho_proto::gateway::v1::Decision::Approve
    );
    // The watcher was told NOT_SERVING, then its stream ended.
    let mut last = None;
    while let Ok(Some(m)) = watch.message().await {
        last = Some(m.status);
    }
    assert_eq!(
        last,
        Some(tonic_health::pb::health_check_response::ServingStatus::NotServing as i32)
    );
}
