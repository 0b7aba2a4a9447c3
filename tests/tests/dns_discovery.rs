//! DNS discovery against a real DNS server (Debian's `dnsmasq`): `sekisho gateway` with
//! `discovery.dns` finds `sekisho filter` replicas by A records (one name, one port, an
//! address per replica, as a Kubernetes headless Service answers) and by SRV records (a
//! port per record), follows changes, drops a name that is gone, and keeps the last
//! endpoints while the server is away.

use std::time::Duration;

use sekisho_tests::{FilterProcess, TestDns, TestGateway, free_port, noop_chain, ready_addresses};
use serde_json::json;

const NOOP: &str = "noop.sekisho.test";
const KW: &str = "kw.sekisho.test";
const KW_SRV: &str = "_grpc._tcp.keywords.sekisho.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_named_in_dns_are_found_followed_and_kept_while_dns_is_away() {
    let within = Duration::from_secs(10);
    // Replicas of noop share one port on two loopback addresses; keywords replicas share
    // one address on two ports, which only SRV can say.
    let noop_port = free_port();
    let (kw1, kw2) = (free_port(), free_port());
    let a = FilterProcess::start_on("noop", &format!("127.0.0.2:{noop_port}"), &[])
        .await
        .unwrap();
    let _k1 = FilterProcess::start_on("keywords", &format!("127.0.0.1:{kw1}"), &[])
        .await
        .unwrap();
    let _k2 = FilterProcess::start_on("keywords", &format!("127.0.0.1:{kw2}"), &[])
        .await
        .unwrap();
    let mut dns = TestDns::start(
        &[("127.0.0.2", NOOP), ("127.0.0.1", KW)],
        &[(KW_SRV, KW, kw1), (KW_SRV, KW, kw2)],
    )
    .await
    .unwrap();
    let gw = TestGateway::setup()
        .chain(&noop_chain("dns"))
        .config(
            "discovery",
            json!({"dns": {
                "interval": "200ms",
                "timeout": "300ms",
                "nameservers": [dns.server],
                "names": [
                    {"filter": "noop", "host": NOOP, "port": noop_port},
                    {"filter": "keywords", "srv": KW_SRV},
                ],
            }}),
        )
        .start()
        .await
        .unwrap();

    // A record: one replica. SRV: both ports.
    let eps = gw
        .wait_endpoints("noop", within, |e| ready_addresses(e).len() == 1)
        .await
        .unwrap();
    assert_eq!(eps[0].address, a.url);
    assert_eq!(eps[0].source, "dns");
    let eps = gw
        .wait_endpoints("keywords", within, |e| ready_addresses(e).len() == 2)
        .await
        .unwrap();
    let mut want = vec![
        format!("http://127.0.0.1:{kw1}"),
        format!("http://127.0.0.1:{kw2}"),
    ];
    want.sort();
    assert_eq!(ready_addresses(&eps), want);
    assert_eq!(gw.decision("dns", "hello").await.unwrap(), "APPROVE");

    // A second address on the name: a second replica.
    let b = FilterProcess::start_on("noop", &format!("127.0.0.3:{noop_port}"), &[])
        .await
        .unwrap();
    dns.set_hosts(&[("127.0.0.2", NOOP), ("127.0.0.3", NOOP), ("127.0.0.1", KW)])
        .await
        .unwrap();
    let eps = gw
        .wait_endpoints("noop", within, |e| ready_addresses(e).len() == 2)
        .await
        .unwrap();
    assert_eq!(ready_addresses(&eps), [a.url.clone(), b.url.clone()]);

    // The name gone (NXDOMAIN): no endpoints, and the item goes to REVIEW, not APPROVE.
    dns.set_hosts(&[("127.0.0.1", KW)]).await.unwrap();
    gw.wait_endpoints("noop", within, |e| e.is_empty())
        .await
        .unwrap();
    assert_eq!(gw.decision("dns", "hello").await.unwrap(), "REVIEW");

    // Back, then the DNS server away: the last endpoints keep serving.
    dns.set_hosts(&[("127.0.0.3", NOOP), ("127.0.0.1", KW)])
        .await
        .unwrap();
    gw.wait_endpoints("noop", within, |e| ready_addresses(e) == [b.url.clone()])
        .await
        .unwrap();
    dns.stop().await;
    // Several rounds, each timing out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        ready_addresses(&gw.endpoints("noop").await.unwrap()),
        [b.url.as_str()]
    );
    assert_eq!(
        ready_addresses(&gw.endpoints("keywords").await.unwrap()).len(),
        2
    );
    assert_eq!(gw.decision("dns", "hello").await.unwrap(), "APPROVE");
}
