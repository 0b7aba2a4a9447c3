//! `sekisho dev`: the gateway and the sample filters in one process, on localhost, with
//! the sample chains. The filters still speak gRPC over loopback, as they do when each
//! runs alone.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use sekisho_filter_sdk::FilterServer;
use sekisho_filters_samples::{Keywords, Noop};
use sekisho_gateway::config::StaticFilter;
use sekisho_gateway::{GatewayConfig, GatewayServer};
use tokio::net::TcpListener;

/// Sample chains written to the data directory when `--chains` is not given.
const SAMPLE_CHAINS: &[(&str, &str)] = &[(
    "comment-text.yaml",
    include_str!("../chains/comment-text.yaml"),
)];

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the gateway listens (gRPC, JSON, /openapi.json, /metrics).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// A directory of chains to serve instead of the samples.
    #[arg(long)]
    chains: Option<PathBuf>,
    /// Where dev keeps its files (the sample chains).
    #[arg(long, default_value = ".sekisho/dev")]
    data_dir: PathBuf,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut filters = BTreeMap::new();
    let mut tasks = Vec::new();
    macro_rules! start_filter {
        ($name:expr, $filter:expr) => {{
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let mut rx = stop_rx.clone();
            tasks.push(tokio::spawn(FilterServer::new($filter).serve_on(
                listener,
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            )));
            filters.insert(
                $name.to_owned(),
                StaticFilter {
                    endpoints: vec![format!("http://{addr}")],
                },
            );
        }};
    }
    start_filter!("noop", Noop::default());
    start_filter!("keywords", Keywords);

    let chains_dir = match args.chains {
        Some(d) => d,
        None => {
            let dir = args.data_dir.join("chains");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for (name, text) in SAMPLE_CHAINS {
                std::fs::write(dir.join(name), text)?;
            }
            dir
        }
    };
    let config = GatewayConfig {
        listen: args.listen,
        chains_dir: Some(chains_dir.clone()),
        filters: filters.clone(),
        ..GatewayConfig::default()
    };
    let mut rx = stop_rx.clone();
    let running = GatewayServer::new(config)
        .start(async move {
            let _ = rx.wait_for(|s| *s).await;
        })
        .await?;
    let addr = running.addr;
    println!("sekisho dev is running (Ctrl-C stops it)");
    println!("  gateway, gRPC and JSON  http://{addr}");
    println!("  OpenAPI                 http://{addr}/openapi.json");
    println!("  metrics                 http://{addr}/metrics");
    println!("  chains from             {}", chains_dir.display());
    for (name, f) in &filters {
        println!("  filter {name:<16} {}", f.endpoints[0]);
    }
    println!("  the web UI is not built yet (issue 5)");
    println!(
        "  try: curl -s http://{addr}/v1/chains/comment-text:moderate -d '{{\"content\":{{\"contentType\":\"text/plain\",\"text\":\"click here for free money\"}}}}'"
    );
    println!("sekisho gateway listening on http://{addr}");

    crate::shutdown_signal().await;
    let _ = stop_tx.send(true);
    running.wait().await?;
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
