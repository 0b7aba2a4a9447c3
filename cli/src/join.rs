//! `sekisho bench join`: how long a new filter replica takes to get traffic. Starts
//! replicas of a filter one at a time (`sekisho filter <name> --etcd ...`) while load
//! runs through a gateway that discovers in etcd; for each, the time from its key
//! appearing in etcd (seen by a watch of our own) to the gateway's `ListFilters` showing
//! a call served by it (polled every millisecond). Each replica is stopped (SIGTERM)
//! before the next.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use etcd_client::{Client, EventType, WatchOptions};
use sekisho_proto::gateway::v1::{self as gproto, gateway_client::GatewayClient};
use sekisho_proto::registration::Registration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

pub struct JoinArgs {
    pub etcd: String,
    pub prefix: String,
    pub gateway: String,
    pub chain: String,
    pub filter: String,
    pub replicas: u32,
}

/// Starts `sekisho filter <name>` registered in etcd; returns it and its URL.
async fn start_replica(a: &JoinArgs) -> anyhow::Result<(Child, String)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args([
            "filter",
            &a.filter,
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            &a.etcd,
        ])
        .args(["--etcd-prefix", &a.prefix, "--drain-delay", "200ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(i) = line.find("listening on ") {
            let url = line[i + "listening on ".len()..].trim().to_owned();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((child, url));
        }
    }
    bail!("the replica exited before listening")
}

async fn calls_served(gw: &mut GatewayClient<Channel>, filter: &str, address: &str) -> u64 {
    let Ok(list) = gw.list_filters(gproto::ListFiltersRequest {}).await else {
        return 0;
    };
    list.into_inner()
        .filters
        .iter()
        .filter(|f| f.name == filter)
        .flat_map(|f| &f.endpoints)
        .filter(|e| e.address == address)
        .map(|e| e.calls)
        .sum()
}

pub async fn run(a: JoinArgs) -> anyhow::Result<()> {
    // Our own watch records when each registration appears.
    let put_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut etcd = Client::connect([&a.etcd], None).await?;
    let mut watch = etcd
        .watch(
            format!("{}/", a.prefix.trim_end_matches('/')),
            Some(WatchOptions::new().with_prefix()),
        )
        .await?;
    {
        let (put_at, prefix) = (put_at.clone(), a.prefix.clone());
        tokio::spawn(async move {
            while let Ok(Some(msg)) = watch.message().await {
                let now = Instant::now();
                for ev in msg.events() {
                    if ev.event_type() != EventType::Put {
                        continue;
                    }
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    if let Ok(r) = Registration::parse(&prefix, &key, kv.value())
                        && let Ok(mut m) = put_at.lock()
                    {
                        m.entry(r.address).or_insert(now);
                    }
                }
            }
        });
    }
    // One replica that stays, so the chain is served throughout, and a steady load.
    let (_base, _) = start_replica(&a).await?;
    let channel = Channel::from_shared(a.gateway.clone())?.connect().await?;
    let mut gw = GatewayClient::new(channel.clone());
    let req = gproto::ModerateRequest {
        chain: a.chain.clone(),
        content: Some(sekisho_proto::filter::v1::Content {
            content_type: "text/plain".into(),
            payload: Some(sekisho_proto::filter::v1::content::Payload::Text(
                "hello".into(),
            )),
        }),
        ..Default::default()
    };
    for _ in 0..4 {
        let (ch, req) = (channel.clone(), req.clone());
        tokio::spawn(async move {
            let mut c = GatewayClient::new(ch);
            loop {
                if c.moderate(req.clone()).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
    }
    let mut times = Vec::new();
    for _ in 0..a.replicas {
        let (child, url) = start_replica(&a).await?;
        let limit = Instant::now() + Duration::from_secs(10);
        let took = loop {
            let registered = put_at.lock().ok().and_then(|m| m.get(&url).copied());
            if let Some(t) = registered
                && calls_served(&mut gw, &a.filter, &url).await > 0
            {
                break t.elapsed();
            }
            if Instant::now() > limit {
                bail!("replica {url} took no traffic within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        times.push(took);
        if let Some(pid) = child.id() {
            let _ = Command::new("kill").arg(pid.to_string()).status().await;
        }
        let mut child = child;
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let each: Vec<String> = times.iter().map(|&d| format!("{:.1}", ms(d))).collect();
    println!("ms, in the order run: {}", each.join(" "));
    times.sort();
    println!(
        "{} replicas: etcd registration -> first call served: p50 {:.1} ms, max {:.1} ms, min {:.1} ms (ListFilters polled every 1 ms)",
        times.len(),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        ms(times[0])
    );
    Ok(())
}
