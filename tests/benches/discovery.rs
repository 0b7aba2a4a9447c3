//! How soon a new filter replica gets calls, by discovery source, side by side in one run:
//! for each replica, the time from the change that announces it to the first call the
//! gateway sends it (the gateway's `ListFilters` polled every millisecond), while 4
//! callers keep a one-filter chain busy.
//!
//! - **etcd** (Debian's `etcd-server`): `sekisho bench join`, from the replica's key
//!   appearing in its own etcd watch (`sekisho filter noop --etcd`, registering itself);
//! - **kubernetes** (the fake API server of `sekisho_tests::kube_fake`, real HTTP and the
//!   list/watch protocol; no Kubernetes API server runs on these machines): from the
//!   replica's pod turning Ready;
//! - **dns** (Debian's `dnsmasq`, one A record per replica): from the hosts file naming
//!   the replica and dnsmasq re-reading it (SIGHUP), at each `interval` asked for. A change
//!   lands at a random moment of the gateway's re-resolution cycle; the rounds here place
//!   it at evenly spread moments of it (round k of n at (k + ½)/n of an interval after the
//!   last resolution), so their spread is the cycle's.
//!
//! `scripts/bench-discovery.sh` runs it on a release build; `REPLICAS` (default 20) and
//! `DNS_INTERVALS` (default `1s,5s`; DNS rounds take two intervals each) change it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sekisho_proto::gateway::v1::{self as gproto, gateway_client::GatewayClient};
use sekisho_tests::kube_fake::{FakeApiServer, filter_pod};
use sekisho_tests::{
    FilterProcess, TestDns, TestEtcd, TestGateway, free_port, noop_chain, sekisho_bin,
};
use serde_json::json;
use tonic::transport::Channel;

const CHAIN: &str = "bench";
const NS: &str = "moderation";
const NAME: &str = "noop.sekisho.test";
/// Longest a replica may take to get a call before the run fails.
const LIMIT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let replicas: usize = std::env::var("REPLICAS")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("REPLICAS")?
        .unwrap_or(20);
    // Replicas take the loopback addresses 127.0.0.3 onwards.
    if !(1..=250).contains(&replicas) {
        bail!("REPLICAS: 1 to 250, not {replicas}");
    }
    let intervals: Vec<Duration> = std::env::var("DNS_INTERVALS")
        .unwrap_or_else(|_| "1s,5s".into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| humantime::parse_duration(s.trim()).with_context(|| format!("DNS_INTERVALS: {s}")))
        .collect::<anyhow::Result<_>>()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async {
            let mut rows = vec![("etcd watch".to_owned(), etcd(replicas).await?)];
            rows.push(("kubernetes watch".into(), kubernetes(replicas).await?));
            for i in intervals {
                let name = format!("dns, interval {}", humantime::format_duration(i));
                rows.push((name, dns(replicas, i).await?));
            }
            for (name, times) in &rows {
                let each: Vec<String> = times
                    .iter()
                    .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
                    .collect();
                println!("{name}, ms, in the order run: {}", each.join(" "));
            }
            println!("| source | replicas | p50 ms | max ms | min ms |");
            println!("| --- | ---: | ---: | ---: | ---: |");
            for (name, mut times) in rows {
                times.sort();
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                println!(
                    "| {name} | {} | {:.1} | {:.1} | {:.1} |",
                    times.len(),
                    ms(times[times.len() / 2]),
                    ms(times[times.len() - 1]),
                    ms(times[0]),
                );
            }
            Ok(())
        })
}

/// A gateway discovering by `discovery`, with 4 callers looping over the noop chain. The
/// rounds start once the replica that stays has served a call.
async fn loaded_gateway(discovery: serde_json::Value) -> anyhow::Result<TestGateway> {
    let gw = TestGateway::setup()
        .chain(&noop_chain(CHAIN))
        .config("discovery", discovery)
        .start()
        .await?;
    for _ in 0..4 {
        let mut c = gw.client().await;
        tokio::spawn(async move {
            loop {
                let req = sekisho_tests::request(
                    CHAIN,
                    "text/plain",
                    sekisho_proto::filter::v1::content::Payload::Text("hello".into()),
                );
                if c.moderate(req).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
    }
    Ok(gw)
}

/// The calls the gateway has sent to `address`, as its `ListFilters` says: `None` while it
/// does not list it. (`TestGateway::endpoint` answers the same but connects anew each
/// time, too slow for a poll every millisecond.)
async fn calls_to(
    gw: &mut GatewayClient<Channel>,
    address: &str,
) -> Result<Option<u64>, tonic::Status> {
    let list = gw.list_filters(gproto::ListFiltersRequest {}).await?;
    Ok(list
        .into_inner()
        .filters
        .iter()
        .flat_map(|f| &f.endpoints)
        .find(|e| e.address == address)
        .map(|e| e.calls))
}

/// From the moment `since` gives (once it gives one) to the first call served by
/// `address`.
async fn first_call(
    gw: &mut GatewayClient<Channel>,
    address: &str,
    since: impl Fn() -> Option<Instant>,
) -> anyhow::Result<Duration> {
    let limit = Instant::now() + LIMIT;
    loop {
        if let Some(t) = since()
            && matches!(calls_to(gw, address).await, Ok(Some(n)) if n > 0)
        {
            return Ok(t.elapsed());
        }
        if Instant::now() > limit {
            bail!("replica {address} took no call within {LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn until_unlisted(gw: &mut GatewayClient<Channel>, address: &str) -> anyhow::Result<()> {
    let limit = Instant::now() + LIMIT;
    // A gateway that does not answer has not said the replica went.
    while !matches!(calls_to(gw, address).await, Ok(None)) {
        if Instant::now() > limit {
            bail!("replica {address} still listed {LIMIT:?} after it went");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// etcd's row is `sekisho bench join` (BENCHMARKS.md (f)), against a gateway of ours: it
/// starts the replica that stays, the load and the replicas itself, and times each from
/// its key appearing in a watch of its own.
async fn etcd(replicas: usize) -> anyhow::Result<Vec<Duration>> {
    let etcd = TestEtcd::start().await?;
    let gw = TestGateway::setup()
        .chain(&noop_chain(CHAIN))
        .config("discovery", json!({"etcd": {"endpoints": [etcd.url]}}))
        .start()
        .await?;
    let out = tokio::process::Command::new(sekisho_bin())
        .args(["bench", "join", "--etcd", &etcd.url, "--gateway", &gw.url])
        .args(["--chain", CHAIN, "--replicas", &replicas.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("sekisho bench join: {}; {stdout}", out.status);
    }
    let each = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ms, in the order run: "))
        .with_context(|| format!("sekisho bench join printed no times: {stdout}"))?;
    each.split_whitespace()
        .map(|v| Ok(Duration::from_secs_f64(v.parse::<f64>()? / 1e3)))
        .collect()
}

async fn kubernetes(replicas: usize) -> anyhow::Result<Vec<Duration>> {
    let port = free_port();
    let api = FakeApiServer::start(Duration::from_secs(60)).await?;
    let stays = FilterProcess::start_on("noop", &format!("127.0.0.2:{port}"), &[]).await?;
    api.apply(
        NS,
        filter_pod("noop-stays", "noop", "127.0.0.2", port, true),
    );
    let gw = loaded_gateway(json!({"kubernetes": {
        "api_server": api.url,
        "namespaces": [NS],
        "label_selector": "sekisho.io/role=filter",
    }}))
    .await?;
    let mut client = gw.client().await;
    first_call(&mut client, &stays.url, || Some(Instant::now())).await?;
    let mut times = Vec::new();
    for k in 0..replicas {
        let ip = format!("127.0.0.{}", 3 + k);
        let name = format!("noop-{k}");
        // The pod's process is up, then the pod turns Ready, as after a readiness probe.
        let replica = FilterProcess::start_on("noop", &format!("{ip}:{port}"), &[]).await?;
        api.apply(NS, filter_pod(&name, "noop", &ip, port, false));
        let ready = Instant::now();
        api.apply(NS, filter_pod(&name, "noop", &ip, port, true));
        times.push(first_call(&mut client, &replica.url, || Some(ready)).await?);
        api.delete(NS, &name);
        until_unlisted(&mut client, &replica.url).await?;
        replica.terminate().await?;
    }
    Ok(times)
}

async fn dns(replicas: usize, interval: Duration) -> anyhow::Result<Vec<Duration>> {
    let port = free_port();
    let stays = ("127.0.0.2", NAME);
    let stays_replica = FilterProcess::start_on("noop", &format!("127.0.0.2:{port}"), &[]).await?;
    let dns = TestDns::start(&[stays], &[]).await?;
    let gw = loaded_gateway(json!({"dns": {
        "interval": humantime::format_duration(interval).to_string(),
        "nameservers": [dns.server],
        "names": [{"filter": "noop", "host": NAME, "port": port}],
    }}))
    .await?;
    let mut client = gw.client().await;
    // Every replica's process up front, so that starting one takes nothing from a round.
    let mut waiting = Vec::new();
    for k in 0..replicas {
        let ip = format!("127.0.0.{}", 3 + k);
        waiting.push((
            FilterProcess::start_on("noop", &format!("{ip}:{port}"), &[]).await?,
            ip,
        ));
    }
    // A resolution has just been seen: the first (the replica that stays called), then
    // each round's last (its replica gone from the list).
    first_call(&mut client, &stays_replica.url, || Some(Instant::now())).await?;
    let mut resolved = Instant::now();
    let mut times = Vec::new();
    for (k, (replica, ip)) in waiting.iter().enumerate() {
        let phase = interval.mul_f64((k as f64 + 0.5) / replicas as f64);
        tokio::time::sleep_until((resolved + phase).into()).await;
        let changed = Instant::now();
        dns.set_hosts(&[stays, (ip, NAME)]).await?;
        times.push(first_call(&mut client, &replica.url, || Some(changed)).await?);
        dns.set_hosts(&[stays]).await?;
        until_unlisted(&mut client, &replica.url).await?;
        resolved = Instant::now();
    }
    Ok(times)
}
