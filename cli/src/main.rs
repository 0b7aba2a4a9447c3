//! `sekisho`: one binary for every part. `sekisho dev` runs the whole product on
//! localhost; `sekisho gateway` and `sekisho filter <name>` run the parts alone;
//! `sekisho bench` is the load generator.

mod bench;
mod chains;
mod dev;
mod filter;
mod join;
mod ui;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sekisho_chainstore::catalog::GatewayCatalog;
use sekisho_chainstore::service::ChainStoreService;
use sekisho_gateway::{GatewayConfig, GatewayServer};

#[derive(Parser)]
#[command(
    name = "sekisho",
    version,
    about = "Sekisho, a content-moderation gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole product on localhost: the gateway, the sample filters and sample chains.
    Dev(dev::DevArgs),
    /// The gateway alone, configured by a file and SEKISHO_* variables.
    Gateway {
        /// YAML or TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Check the configuration (file and environment) and exit: 0 when it is usable.
        #[arg(long)]
        check: bool,
    },
    /// The chainstore: validated, versioned chains over gRPC and JSON, followed by gateways.
    Chainstore {
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: String,
        /// A gateway whose discovery checks each written chain's filters (known, content
        /// types, config schema), e.g. `http://gateway:8080`. Without it only the chain's
        /// own structure is checked.
        #[arg(long, env = "SEKISHO_FILTERS_FROM")]
        filters_from: Option<String>,
        /// `sqlite://path?mode=rwc` (embedded) or `postgres://user@host/db`.
        #[arg(
            long,
            env = "SEKISHO_DATABASE",
            default_value = "sqlite://.sekisho/chainstore.db?mode=rwc"
        )]
        database: String,
    },
    /// Edit chains in a chainstore: apply, get, list, history, diff, rollback, delete.
    Chains(chains::ChainsArgs),
    /// The edge: serves the web UI and is the one public entry point to the APIs.
    Ui(ui::UiArgs),
    /// One built-in filter as a gRPC service.
    Filter(filter::FilterArgs),
    /// The load generator.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEKISHO_LOG")
                .unwrap_or_else(|_| "info,ort=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Gateway { config, check } => gateway(config, check).await,
            Command::Chainstore {
                listen,
                filters_from,
                database,
            } => chainstore(&listen, filters_from.as_deref(), &database).await,
            Command::Filter(args) => filter::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Chains(args) => chains::run(args).await,
            Command::Ui(args) => ui::run(args).await,
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn gateway(config: Option<PathBuf>, check: bool) -> anyhow::Result<()> {
    let cfg = GatewayConfig::load(config.as_deref())?;
    if check {
        println!("gateway configuration ok");
        return Ok(());
    }
    let running = GatewayServer::new(cfg).start(shutdown_signal()).await?;
    // Tests and scripts read this line to learn the port.
    println!("sekisho gateway listening on http://{}", running.addr);
    running.wait().await?;
    Ok(())
}

async fn chainstore(
    listen: &str,
    filters_from: Option<&str>,
    database: &str,
) -> anyhow::Result<()> {
    if let Some(path) = database.strip_prefix("sqlite://") {
        let file = std::path::Path::new(path.split('?').next().unwrap_or(path));
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    let store = sekisho_chainstore::store::SqlStore::connect(database)
        .await
        .with_context(|| format!("cannot open the chainstore database {database}"))?;
    let mut service = ChainStoreService::new(Arc::new(store));
    if let Some(url) = filters_from {
        let catalog = GatewayCatalog::new(url).map_err(anyhow::Error::msg)?;
        service = service.with_catalog(Arc::new(catalog));
    }
    let (addr, task) = sekisho_chainstore::server::serve(service, listen, shutdown_signal())
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("sekisho chainstore listening on http://{addr}");
    task.await??;
    Ok(())
}
