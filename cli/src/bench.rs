//! `sekisho bench`: the load generator. `moderate` measures a chain's throughput and
//! latency through a gateway; `overhead` puts the gateway next to a direct call of the
//! same filter in one run, alternating rounds so that machine noise hits both alike;
//! `body` writes a length-prefixed request for h2load, the independent cross-check.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{BufMut, BytesMut};
use hdrhistogram::Histogram;
use sekisho_proto::filter::v1::{self as fproto, filter_client::FilterClient};
use sekisho_proto::gateway::v1::{self as gproto, gateway_client::GatewayClient};
use tonic::transport::{Channel, Endpoint};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Subcommand)]
enum Mode {
    /// Throughput and latency of one chain through a gateway.
    Moderate {
        #[command(flatten)]
        load: Load,
        #[arg(long)]
        chain: String,
    },
    /// Gateway (1 stage, 1 filter) next to a direct call of that filter.
    Overhead {
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value = "bench-1x1")]
        chain: String,
        /// The filter to call directly; its endpoint is asked of the gateway.
        #[arg(long, default_value = "noop")]
        filter: String,
        /// Alternating rounds of each.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// One chain through several gateways (differently configured, same filters), side by
    /// side in alternating rounds: e.g. p2c next to round robin.
    Compare {
        #[command(flatten)]
        load: Load,
        #[arg(long)]
        chain: String,
        /// The other gateways, compared with `--gateway`.
        #[arg(long = "against", required = true)]
        against: Vec<String>,
        /// Names for the gateways in the report, `--gateway` first (comma-separated).
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// Time from a filter replica's etcd registration to the first call it serves.
    Join {
        #[arg(long)]
        etcd: String,
        #[arg(long, default_value = sekisho_proto::registration::DEFAULT_ETCD_PREFIX)]
        etcd_prefix: String,
        /// A gateway with `discovery.etcd` on the same etcd.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        gateway: String,
        /// A chain that calls `--filter`.
        #[arg(long)]
        chain: String,
        /// The built-in filter to start replicas of.
        #[arg(long, default_value = "noop")]
        filter: String,
        #[arg(long, default_value_t = 20)]
        replicas: u32,
    },
    /// Time from a chain update in the chainstore to the first gateway response using it.
    Reload {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        gateway: String,
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        chainstore: String,
        /// A chain that accepts text/plain.
        #[arg(long, default_value = "comment-text")]
        chain: String,
        #[arg(long, default_value_t = 50)]
        updates: u32,
    },
    /// Images/s of one image filter called directly over gRPC (`Apply`), cycling
    /// through the given images (each request carries the encoded file); or, with
    /// `--chain`, of a chain through a gateway (`Moderate`).
    Images {
        /// The filter's address, e.g. http://127.0.0.1:50051 (with `--chain`: the
        /// gateway's).
        #[arg(long)]
        filter: String,
        /// Send each image to the gateway at `--filter` as a `Moderate` call of this
        /// chain; the report counts each decision and reason.
        #[arg(long)]
        chain: Option<String>,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long)]
        json: bool,
        /// Send exactly this many requests (no warm-up) instead of running for
        /// `--duration`: e.g. a filter's first calls after it starts.
        #[arg(long)]
        requests: Option<u64>,
        /// Each call's deadline (sent as `grpc-timeout`); calls past it count as errors,
        /// so the rate is what was answered in time.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Open loop: start this many calls a second, whatever the answers (as callers
        /// arriving on their own do), instead of `--concurrency` calls each sent when the
        /// last ended; needs `--timeout`, which bounds the calls in flight.
        #[arg(long, requires = "timeout", conflicts_with = "requests")]
        rate: Option<f64>,
        /// With `--rate`: start the calls at random, as independent callers do (a
        /// Poisson process, the same sequence every run), rather than evenly spaced.
        #[arg(long, requires = "rate")]
        poisson: bool,
        /// Send each image once, one at a time, and print each answer (the image's path,
        /// score and labels) as a line of JSON instead of measuring: e.g. a filter's
        /// scores on the CPU and on CUDA, to compare.
        #[arg(long, conflicts_with_all = ["chain", "rate", "requests"])]
        scores: bool,
        #[arg(required = true)]
        images: Vec<std::path::PathBuf>,
    },
    /// Writes a gRPC length-prefixed request for `h2load --data`: a ModerateRequest for
    /// `--chain`, or with `--image` a filter's ApplyRequest carrying that image file (as
    /// `images` sends it).
    Body {
        #[arg(long, required_unless_present = "image", conflicts_with = "image")]
        chain: Option<String>,
        #[arg(long)]
        image: Option<std::path::PathBuf>,
        #[arg(long, default_value = "hello world")]
        text: String,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

#[derive(clap::Args, Clone)]
struct Load {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// HTTP/2 connections the requests are spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "hello world")]
    text: String,
    /// A bearer token sent with every Moderate call (for a gateway behind the edge,
    /// `sekisho ui`).
    #[arg(long, env = "SEKISHO_TOKEN")]
    token: Option<String>,
    /// Spread the Moderate calls over this many callers, in turn: `caller-0`,
    /// `caller-1`, ... in `x-sekisho-principal` (the gateway's per-caller limits). 0:
    /// name none.
    #[arg(long, default_value_t = 0)]
    callers: u64,
    /// Send exactly this many requests (no warm-up) instead of running for `--duration`.
    #[arg(long)]
    requests: Option<u64>,
    /// Print the report as one JSON line (with each chain version, decision and reason
    /// seen, and how often), for tests and scripts.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.mode {
        Mode::Moderate { load, chain } => {
            let channels = channels(&load.gateway, load.connections).await?;
            let req = moderate_request(&chain, &load.text);
            let target = Target::Gateway(channels, req);
            if load.requests.is_none() {
                target.run(&load, load.warmup).await?;
            }
            // Tests start changing things once they read this line.
            println!("load started");
            let r = target.run(&load, load.duration).await?;
            if load.json {
                println!("{}", r.json());
            } else {
                println!(
                    "chain {chain}, concurrency {}, {} connection(s)",
                    load.concurrency, load.connections
                );
                r.print("gateway");
            }
        }
        Mode::Overhead {
            load,
            chain,
            filter,
            rounds,
        } => {
            let gw = channels(&load.gateway, load.connections).await?;
            let endpoint = filter_endpoint(gw[0].clone(), &filter).await?;
            let direct = channels(&endpoint, load.connections).await?;
            let via_gateway = Target::Gateway(gw, moderate_request(&chain, &load.text));
            let direct = Target::Direct(direct, apply_request(&load.text));
            via_gateway.run(&load, load.warmup).await?;
            direct.run(&load, load.warmup).await?;
            let (mut g, mut d) = (Report::default(), Report::default());
            for _ in 0..rounds {
                d.merge(direct.run(&load, load.duration).await?);
                g.merge(via_gateway.run(&load, load.duration).await?);
            }
            println!(
                "chain {chain} vs filter {filter} at {endpoint}, concurrency {}, {rounds} alternating rounds of {:?}",
                load.concurrency, load.duration
            );
            d.print("direct filter");
            g.print("through gateway");
            let p = |r: &Report, q: f64| r.hist.value_at_quantile(q) as f64;
            println!(
                "overhead: p50 +{:.0} µs ({:.2}×), p99 +{:.0} µs ({:.2}×), throughput {:.2}× of direct",
                p(&g, 0.5) - p(&d, 0.5),
                p(&g, 0.5) / p(&d, 0.5),
                p(&g, 0.99) - p(&d, 0.99),
                p(&g, 0.99) / p(&d, 0.99),
                g.rate() / d.rate()
            );
        }
        Mode::Compare {
            load,
            chain,
            against,
            labels,
            rounds,
        } => {
            let urls: Vec<String> = std::iter::once(load.gateway.clone())
                .chain(against)
                .collect();
            let mut targets = Vec::new();
            for u in &urls {
                let ch = channels(u, load.connections).await?;
                let t = Target::Gateway(ch, moderate_request(&chain, &load.text));
                t.run(&load, load.warmup).await?;
                targets.push(t);
            }
            let mut reports: Vec<Report> = urls.iter().map(|_| Report::default()).collect();
            for _ in 0..rounds {
                for (t, r) in targets.iter().zip(reports.iter_mut()) {
                    r.merge(t.run(&load, load.duration).await?);
                }
            }
            println!(
                "chain {chain}, concurrency {}, {rounds} alternating rounds of {:?}",
                load.concurrency, load.duration
            );
            for (i, (u, r)) in urls.iter().zip(&reports).enumerate() {
                r.print(labels.get(i).map(String::as_str).unwrap_or(u));
            }
            let p = |r: &Report, q: f64| r.hist.value_at_quantile(q) as f64;
            let first = &reports[0];
            for (i, r) in reports.iter().enumerate().skip(1) {
                let name = labels.get(i).cloned().unwrap_or_else(|| urls[i].clone());
                let base = labels.first().cloned().unwrap_or_else(|| urls[0].clone());
                println!(
                    "{name} / {base}: p50 {:.2}×, p99 {:.2}×, throughput {:.2}×",
                    p(r, 0.5) / p(first, 0.5),
                    p(r, 0.99) / p(first, 0.99),
                    r.rate() / first.rate()
                );
            }
        }
        Mode::Join {
            etcd,
            etcd_prefix,
            gateway,
            chain,
            filter,
            replicas,
        } => {
            crate::join::run(crate::join::JoinArgs {
                etcd,
                prefix: etcd_prefix,
                gateway,
                chain,
                filter,
                replicas,
            })
            .await?
        }
        Mode::Reload {
            gateway,
            chainstore,
            chain,
            updates,
        } => reload(&gateway, &chainstore, &chain, updates).await?,
        Mode::Images {
            filter,
            chain,
            concurrency,
            duration,
            warmup,
            json,
            requests,
            timeout,
            rate,
            poisson,
            scores,
            images,
        } => {
            let reqs = images
                .iter()
                .map(|p| image_request(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let ch = channels(&filter, 1).await?.remove(0);
            if scores {
                let mut client = FilterClient::new(ch)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20);
                for (path, req) in images.iter().zip(reqs) {
                    let got = client
                        .apply(with_timeout(req, timeout))
                        .await
                        .with_context(|| format!("{}", path.display()))?
                        .into_inner();
                    let labels: std::collections::BTreeMap<_, _> = got.labels.into_iter().collect();
                    println!(
                        "{}",
                        serde_json::json!({
                            "image": path.display().to_string(),
                            "score": got.score,
                            "labels": labels,
                        })
                    );
                }
                return Ok(());
            }
            let to = match &chain {
                Some(c) => ImageTarget::Chain(
                    GatewayClient::new(ch)
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20),
                    c.clone(),
                ),
                None => ImageTarget::Filter(
                    FilterClient::new(ch)
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20),
                ),
            };
            let run = |d: Duration, n: Option<u64>| {
                let how = match rate {
                    Some(r) => Pace::Rate(r, poisson),
                    None => Pace::Closed(concurrency, n),
                };
                images_run(to.clone(), reqs.clone(), how, d, timeout)
            };
            if requests.is_none() {
                run(warmup, None).await?;
            }
            let r = run(duration, requests).await?;
            if json {
                println!("{}", r.json());
            } else {
                println!(
                    "{} images through {filter}, concurrency {concurrency}",
                    images.len()
                );
                r.print("filter");
            }
        }
        Mode::Body {
            chain,
            image,
            text,
            out,
        } => {
            use prost::Message;
            let msg = match (chain, image) {
                (_, Some(p)) => image_request(&p)?.encode_to_vec(),
                (Some(chain), None) => moderate_request(&chain, &text).encode_to_vec(),
                (None, None) => unreachable!("clap requires --chain or --image"),
            };
            let mut buf = BytesMut::with_capacity(msg.len() + 5);
            buf.put_u8(0);
            buf.put_u32(msg.len() as u32);
            buf.put_slice(&msg);
            std::fs::write(&out, &buf)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("wrote {} bytes to {}", buf.len(), out.display());
        }
    }
    Ok(())
}

/// Updates the chain `updates` times; after each update is committed, moderates back to
/// back until a response names the new version.
async fn reload(gateway: &str, chainstore: &str, chain: &str, updates: u32) -> anyhow::Result<()> {
    use sekisho_proto::chainstore::v1::{
        GetChainRequest, UpdateChainRequest, chain_store_client::ChainStoreClient,
    };
    let mut store = ChainStoreClient::new(channels(chainstore, 1).await?.remove(0));
    let mut gw = GatewayClient::new(channels(gateway, 1).await?.remove(0));
    let current = store
        .get_chain(GetChainRequest {
            name: chain.to_owned(),
            version: 0,
        })
        .await?
        .into_inner();
    let (mut version, base) = (current.version, current.document);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let req = moderate_request(chain, "hello");
    for i in 0..updates {
        let updated = store
            .update_chain(UpdateChainRequest {
                name: chain.to_owned(),
                document: format!("{base}\n# sekisho bench reload {i}\n"),
                expected_version: version,
                author: "sekisho bench".into(),
                comment: "reload benchmark".into(),
            })
            .await?
            .into_inner();
        version = updated.version;
        let t = Instant::now();
        loop {
            let r = gw.moderate(req.clone()).await?.into_inner();
            if r.chain_version >= version {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("the gateway did not serve version {version} within 30s");
            }
        }
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    // Put the original document back.
    store
        .update_chain(UpdateChainRequest {
            name: chain.to_owned(),
            document: base,
            expected_version: version,
            author: "sekisho bench".into(),
            comment: "reload benchmark: restored".into(),
        })
        .await?;
    println!(
        "chain {chain}: {updates} updates; update committed -> first gateway response using it: p50 {} µs  p99 {} µs  max {} µs",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max()
    );
    Ok(())
}

fn moderate_request(chain: &str, text: &str) -> gproto::ModerateRequest {
    gproto::ModerateRequest {
        chain: chain.to_owned(),
        content: Some(fproto::Content {
            content_type: "text/plain".into(),
            payload: Some(fproto::content::Payload::Text(text.to_owned())),
        }),
        ..Default::default()
    }
}

/// An `Apply` request carrying the encoded image file, its type from the extension.
fn image_request(p: &std::path::Path) -> anyhow::Result<fproto::ApplyRequest> {
    let data = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    let ct = match p.extension().and_then(|e| e.to_str()) {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        _ => "image/png",
    };
    Ok(fproto::ApplyRequest {
        content: Some(fproto::Content {
            content_type: ct.into(),
            payload: Some(fproto::content::Payload::Data(data.into())),
        }),
        ..Default::default()
    })
}

fn apply_request(text: &str) -> fproto::ApplyRequest {
    fproto::ApplyRequest {
        content: Some(fproto::Content {
            content_type: "text/plain".into(),
            payload: Some(fproto::content::Payload::Text(text.to_owned())),
        }),
        ..Default::default()
    }
}

async fn channels(url: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut v = Vec::new();
    for _ in 0..n.max(1) {
        v.push(
            Endpoint::from_shared(url.to_owned())?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("cannot connect to {url}"))?,
        );
    }
    Ok(v)
}

async fn filter_endpoint(gateway: Channel, filter: &str) -> anyhow::Result<String> {
    let list = GatewayClient::new(gateway)
        .list_filters(gproto::ListFiltersRequest {})
        .await?
        .into_inner();
    match list
        .filters
        .iter()
        .find(|f| f.name == filter)
        .and_then(|f| f.endpoints.first())
    {
        Some(e) => Ok(e.address.clone()),
        None => bail!("the gateway knows no filter `{filter}`"),
    }
}

#[derive(Clone)]
enum Target {
    Gateway(Vec<Channel>, gproto::ModerateRequest),
    Direct(Vec<Channel>, fproto::ApplyRequest),
}

struct Report {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<tonic::Status>,
    /// (chain version, decision, reason) of each gateway response → how many.
    outcomes: BTreeMap<(u64, String, String), u64>,
    elapsed: Duration,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds are valid"),
            ok: 0,
            errors: 0,
            first_error: None,
            outcomes: BTreeMap::new(),
            elapsed: Duration::ZERO,
        }
    }
}

/// A gateway response as the report counts it: (chain version, decision, reason).
fn outcome_key(resp: gproto::ModerateResponse) -> (u64, String, String) {
    let decision = resp.decision().as_str_name().to_owned();
    (resp.chain_version, decision, resp.reason)
}

impl Report {
    /// One call started at `t`: its latency when answered (and a gateway's outcome), or
    /// its error.
    fn record(
        &mut self,
        t: Instant,
        outcome: Result<Option<(u64, String, String)>, tonic::Status>,
    ) {
        match outcome {
            Ok(o) => {
                let _ = self.hist.record(t.elapsed().as_micros().max(1) as u64);
                self.ok += 1;
                if let Some(key) = o {
                    *self.outcomes.entry(key).or_default() += 1;
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, o: Report) {
        let _ = self.hist.add(&o.hist);
        self.ok += o.ok;
        self.errors += o.errors;
        self.elapsed += o.elapsed;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        for (k, n) in o.outcomes {
            *self.outcomes.entry(k).or_default() += n;
        }
    }

    fn json(&self) -> serde_json::Value {
        let q = |q: f64| self.hist.value_at_quantile(q);
        let outcomes: Vec<_> = self
            .outcomes
            .iter()
            .map(|((version, decision, reason), n)| {
                serde_json::json!({
                    "chain_version": version, "decision": decision, "reason": reason, "count": n,
                })
            })
            .collect();
        serde_json::json!({
            "ok": self.ok,
            "errors": self.errors,
            "first_error": self.first_error.as_ref().map(|e| format!("{}: {}", e.code(), e.message())),
            "requests_per_s": self.rate(),
            "p50_us": q(0.5),
            "p99_us": q(0.99),
            "max_us": self.hist.max(),
            "outcomes": outcomes,
        })
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self, what: &str) {
        let q = |q: f64| self.hist.value_at_quantile(q);
        println!(
            "{what:<16} {:>9.0} req/s  p50 {:>6} µs  p90 {:>6} µs  p99 {:>6} µs  max {:>7} µs  ok {}  errors {}",
            self.rate(),
            q(0.5),
            q(0.9),
            q(0.99),
            self.hist.max(),
            self.ok,
            self.errors
        );
    }
}

impl Target {
    async fn run(&self, load: &Load, duration: Duration) -> anyhow::Result<Report> {
        let deadline = Instant::now() + duration;
        let start = Instant::now();
        let mut tasks = Vec::new();
        let target = Arc::new(self.clone());
        // With `--requests`, each request takes a ticket; the duration no longer ends it.
        let tickets = Arc::new(AtomicU64::new(0));
        let limit = load.requests;
        let auth: Option<tonic::metadata::AsciiMetadataValue> = match &load.token {
            Some(t) => Some(format!("Bearer {t}").parse()?),
            None => None,
        };
        let callers: Arc<Vec<tonic::metadata::AsciiMetadataValue>> = Arc::new(
            (0..load.callers)
                .map(|i| format!("caller-{i}").parse())
                .collect::<Result<_, _>>()?,
        );
        let turn = Arc::new(AtomicU64::new(0));
        for w in 0..load.concurrency.max(1) {
            let (target, tickets, auth) = (target.clone(), tickets.clone(), auth.clone());
            let (callers, turn) = (callers.clone(), turn.clone());
            tasks.push(tokio::spawn(async move {
                let mut r = Report::default();
                loop {
                    let more = match limit {
                        Some(n) => tickets.fetch_add(1, Ordering::Relaxed) < n,
                        None => Instant::now() < deadline,
                    };
                    if !more {
                        break;
                    }
                    let t = Instant::now();
                    let outcome = match &*target {
                        Target::Gateway(ch, req) => GatewayClient::new(ch[w % ch.len()].clone())
                            .moderate({
                                let mut r = tonic::Request::new(req.clone());
                                if let Some(a) = &auth {
                                    r.metadata_mut().insert("authorization", a.clone());
                                }
                                if !callers.is_empty() {
                                    let i = turn.fetch_add(1, Ordering::Relaxed);
                                    let name = callers[(i % callers.len() as u64) as usize].clone();
                                    r.metadata_mut().insert("x-sekisho-principal", name);
                                }
                                r
                            })
                            .await
                            .map(|resp| Some(outcome_key(resp.into_inner()))),
                        Target::Direct(ch, req) => FilterClient::new(ch[w % ch.len()].clone())
                            .apply(req.clone())
                            .await
                            .map(|_| None),
                    };
                    r.record(t, outcome);
                }
                r
            }));
        }
        let mut report = Report::default();
        for t in tasks {
            report.merge(t.await?);
        }
        if let Some(e) = &report.first_error {
            eprintln!("error: {}: {}", e.code(), e.message());
        }
        report.elapsed = start.elapsed();
        Ok(report)
    }
}

/// How `bench images` sends: a fixed number of calls in flight, each sent when the last
/// ended (optionally exactly N calls in all), or calls started at a rate, evenly spaced
/// or at random (Poisson).
#[derive(Clone, Copy)]
enum Pace {
    Closed(usize, Option<u64>),
    Rate(f64, bool),
}

/// The gaps between the starts of a Poisson process of `rate` a second: exponentially
/// distributed, drawn from a fixed seed, so that two runs send alike.
struct Arrivals {
    rate: f64,
    rng: rand::rngs::StdRng,
}

impl Arrivals {
    fn new(rate: f64) -> Self {
        use rand::SeedableRng;
        Arrivals {
            rate: rate.max(0.001),
            rng: rand::rngs::StdRng::seed_from_u64(0x5e41_5e40),
        }
    }

    fn next_gap(&mut self) -> Duration {
        use rand::Rng;
        // Uniform in (0, 1]: never ln(0).
        let u = 1.0 - self.rng.random::<f64>();
        Duration::from_secs_f64(-u.ln() / self.rate)
    }
}

/// A request with `timeout` as its deadline, if given.
fn with_timeout<T>(message: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    req
}

/// Where `bench images` sends its images: a filter's `Apply`, or a chain's `Moderate`.
#[derive(Clone)]
enum ImageTarget {
    Filter(FilterClient<Channel>),
    Chain(GatewayClient<Channel>, String),
}

/// One call, recorded into `r` (a gateway's decision and reason among the outcomes).
async fn apply_once(
    to: &mut ImageTarget,
    req: fproto::ApplyRequest,
    timeout: Option<Duration>,
    r: &mut Report,
) {
    let t = Instant::now();
    let outcome = match to {
        ImageTarget::Filter(client) => client.apply(with_timeout(req, timeout)).await.map(|_| None),
        ImageTarget::Chain(client, chain) => {
            let m = gproto::ModerateRequest {
                chain: chain.clone(),
                content: req.content,
                ..Default::default()
            };
            client
                .moderate(with_timeout(m, timeout))
                .await
                .map(|resp| Some(outcome_key(resp.into_inner())))
        }
    };
    r.record(t, outcome);
}

/// Calls `to` as `pace` says, cycling through `reqs`.
async fn images_run(
    client: ImageTarget,
    reqs: Vec<fproto::ApplyRequest>,
    pace: Pace,
    duration: Duration,
    timeout: Option<Duration>,
) -> anyhow::Result<Report> {
    let reqs = Arc::new(reqs);
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut tasks = Vec::new();
    match pace {
        Pace::Rate(rate, poisson) => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
            let mut arrivals = Arrivals::new(rate);
            let mut next = tokio::time::Instant::now();
            let mut k = 0;
            while Instant::now() < deadline {
                if poisson {
                    next += arrivals.next_gap();
                    tokio::time::sleep_until(next).await;
                } else {
                    tick.tick().await;
                }
                let (mut client, req) = (client.clone(), reqs[k % reqs.len()].clone());
                tasks.push(tokio::spawn(async move {
                    let mut r = Report::default();
                    apply_once(&mut client, req, timeout, &mut r).await;
                    r
                }));
                k += 1;
            }
        }
        Pace::Closed(concurrency, requests) => {
            // With `requests`, each request takes a ticket; the duration no longer ends it.
            let tickets = Arc::new(AtomicU64::new(0));
            for w in 0..concurrency.max(1) {
                let (mut client, reqs, tickets) = (client.clone(), reqs.clone(), tickets.clone());
                tasks.push(tokio::spawn(async move {
                    let mut r = Report::default();
                    let mut k = w;
                    let more = || match requests {
                        Some(n) => tickets.fetch_add(1, Ordering::Relaxed) < n,
                        None => Instant::now() < deadline,
                    };
                    while more() {
                        apply_once(&mut client, reqs[k % reqs.len()].clone(), timeout, &mut r)
                            .await;
                        k += 1;
                    }
                    r
                }));
            }
        }
    }
    let mut report = Report::default();
    for t in tasks {
        report.merge(t.await?);
    }
    if let Some(e) = &report.first_error {
        eprintln!("error: {}: {}", e.code(), e.message());
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gaps of `--poisson` average one over the rate and spread as an exponential
    /// distribution's do (its standard deviation equals its mean), the same every run.
    #[test]
    fn poisson_arrivals_have_the_rate_asked_for() {
        let mut a = Arrivals::new(200.0);
        let gaps: Vec<f64> = (0..20_000).map(|_| a.next_gap().as_secs_f64()).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!((mean - 0.005).abs() < 0.0002, "{mean}");
        assert!((var.sqrt() / mean - 1.0).abs() < 0.05, "{var} {mean}");
        let mut b = Arrivals::new(200.0);
        assert_eq!(b.next_gap().as_secs_f64(), gaps[0]);
    }
}
