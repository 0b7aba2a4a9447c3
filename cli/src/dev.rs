//! `sekisho dev`: the chainstore (SQLite under the data directory, seeded with the sample
//! chains), the gateway following it, and the sample filters, in one process on
//! localhost. The parts still speak gRPC over loopback, as they do when each runs alone.

use std::collections::BTreeMap;
use std::path::PathBuf;

use std::sync::Arc;

use anyhow::Context;
use sekisho_chainstore::catalog::GatewayCatalog;
use sekisho_chainstore::service::ChainStoreService;
use sekisho_chainstore::store::{ChainStorage, Expect, SqlStore, StoreError, Write};
use sekisho_filter_sdk::FilterServer;
use sekisho_filters_images::{FaceDetect, ModelOptions, NgImage, QrCode};
use sekisho_filters_samples::{Keywords, Noop};
use sekisho_gateway::config::StaticFilter;
use sekisho_gateway::{GatewayConfig, GatewayServer};
use tokio::net::TcpListener;

/// Sample chains written to the data directory when `--chains` is not given.
const SAMPLE_CHAINS: &[(&str, &str)] = &[
    (
        "comment-text.yaml",
        include_str!("../chains/comment-text.yaml"),
    ),
    (
        "profile-photo.yaml",
        include_str!("../chains/profile-photo.yaml"),
    ),
];

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the gateway listens (gRPC, JSON, /openapi.json, /metrics). Port 0 for each
    /// of the three: any free port, printed at start (`sekisho gateway listening on …`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// A directory of chains to serve instead of the chainstore (read at start-up).
    #[arg(long)]
    chains: Option<PathBuf>,
    /// Where the chainstore listens.
    #[arg(long, default_value = "127.0.0.1:7070")]
    chainstore_listen: String,
    /// Where the web UI (the edge) listens.
    #[arg(long, default_value = "127.0.0.1:8000")]
    ui_listen: String,
    /// Where dev keeps its files (the chainstore's SQLite database, the dev credentials).
    #[arg(long, default_value = ".sekisho/dev")]
    data_dir: PathBuf,
    /// face-detect's model file (default: the cache's centerface.onnx).
    #[arg(long)]
    face_model: Option<PathBuf>,
    /// ng-image's model file (default: the cache's open-nsfw.onnx; e.g. the int8
    /// open-nsfw-int8.onnx that scripts/setup.sh makes).
    #[arg(long)]
    ng_model: Option<PathBuf>,
    #[command(flatten)]
    onnx: crate::filter::OnnxArgs,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.onnx.options().model.is_some() {
        anyhow::bail!(
            "`sekisho dev` runs two ONNX filters, so --model would name both: use \
             --face-model and --ng-model"
        );
    }
    // One recorder for everything below, installed before the filters start so that the
    // series they set at start (`sekisho_filter_info`) reach the gateway's `/metrics`.
    sekisho_jsonproxy::metrics::install();
    // The three ports are bound first, before the filters take ports of their own: a port
    // asked for is then never lost to one of them, and port 0 (any free port) works,
    // each bound address printed below (`sekisho … listening on http://ADDR`).
    let bind = |what: &str, listen: &str| {
        let listen = listen.to_owned();
        let what = what.to_owned();
        async move {
            TcpListener::bind(&listen)
                .await
                .with_context(|| format!("{what}: cannot listen on {listen}"))
        }
    };
    let gateway_listener = bind("the gateway", &args.listen).await?;
    let store_listener = match args.chains {
        None => Some(bind("the chainstore", &args.chainstore_listen).await?),
        Some(_) => None,
    };
    let ui_listener = bind("the web UI", &args.ui_listen).await?;
    let gateway_addr = gateway_listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut store_task = None;
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
    start_filter!("keywords", Keywords::default());
    // The image filters share one decoding budget: they share the process's memory.
    let intake = args.onnx.intake();
    start_filter!("qr-code", QrCode::default().with_intake(intake.clone()));
    // The ONNX filters need ONNX Runtime and the models (scripts/fetch-models.sh).
    let onnx = args.onnx.options();
    let with_model = |model: &Option<PathBuf>| ModelOptions {
        model: model.clone(),
        ..onnx.clone()
    };
    match (
        FaceDetect::load(&with_model(&args.face_model)),
        NgImage::load(args.onnx.spec()?, &with_model(&args.ng_model)),
    ) {
        (Ok(face), Ok(ng)) => {
            start_filter!("face-detect", face.with_intake(intake.clone()));
            start_filter!(
                "ng-image",
                ng.with_intake(intake)
                    .with_jpeg_min_side(args.onnx.jpeg_min_side)
            );
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("WARNING: face-detect and ng-image are not running: {e}");
        }
    }

    let (chains_dir, chainstore, chains_from) = match args.chains {
        Some(d) => (Some(d.clone()), None, d.display().to_string()),
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
            let db = args.data_dir.join("chainstore.db");
            let store =
                Arc::new(SqlStore::connect(&format!("sqlite://{}?mode=rwc", db.display())).await?);
            seed(store.as_ref()).await?;
            let mut rx = stop_rx.clone();
            // The gateway started below reports what discovery found.
            let catalog = GatewayCatalog::new(&format!("http://{gateway_addr}"))
                .map_err(anyhow::Error::msg)?;
            let service = ChainStoreService::new(store).with_catalog(Arc::new(catalog));
            let listener = store_listener.context("the chainstore's port is bound")?;
            let (addr, task) =
                sekisho_chainstore::server::serve_on(service, listener, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await?;
            store_task = Some(task);
            let url = format!("http://{addr}");
            (
                None,
                Some(url.clone()),
                format!("{url} (SQLite {})", db.display()),
            )
        }
    };
    let config = GatewayConfig {
        listen: args.listen,
        chains_dir,
        chainstore: chainstore.clone(),
        filters: filters.clone(),
        ..GatewayConfig::default()
    };
    let mut rx = stop_rx.clone();
    let running = GatewayServer::new(config)
        .start_on(gateway_listener, async move {
            let _ = rx.wait_for(|s| *s).await;
        })
        .await?;
    let addr = running.addr;

    let creds = DevCredentials::load_or_create(&args.data_dir)?;
    let edge_cfg = sekisho_edge::EdgeConfig {
        listen: args.ui_listen,
        gateway: format!("http://{addr}"),
        chainstore: chainstore
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:1".to_owned()),
        users: vec![sekisho_edge::config::UserEntry {
            name: "operator".into(),
            password_hash: sekisho_edge::auth::hash_password(&creds.password)
                .map_err(anyhow::Error::msg)?,
            role: sekisho_edge::Role::Operator,
        }],
        tokens: vec![sekisho_edge::config::TokenEntry {
            name: "dev-service".into(),
            sha256: sekisho_edge::auth::sha256_hex(&creds.token),
            role: sekisho_edge::Role::Service,
        }],
        // Plain HTTP on localhost.
        secure_cookies: false,
        ..sekisho_edge::EdgeConfig::default()
    };
    let mut rx = stop_rx.clone();
    let edge = sekisho_edge::start_on(edge_cfg, ui_listener, async move {
        let _ = rx.wait_for(|s| *s).await;
    })
    .await?;

    println!("sekisho dev is running (Ctrl-C stops it)");
    println!(
        "  web UI                  http://{}  (sign in as `operator`, password {})",
        edge.addr, creds.password
    );
    println!(
        "  service token           {}  (Authorization: Bearer …, for moderate through the UI port)",
        creds.token
    );
    println!("  gateway, gRPC and JSON  http://{addr}");
    println!("  OpenAPI                 http://{addr}/openapi.json");
    println!("  metrics                 http://{addr}/metrics");
    println!("  chains from             {chains_from}");
    for (name, f) in &filters {
        println!("  filter {name:<16} {}", f.endpoints[0]);
    }
    if !sekisho_edge::assets::built() {
        println!(
            "  the web UI's page is not built: run scripts/build-ui.sh (the APIs work without it)"
        );
    }
    println!(
        "  try: curl -s http://{addr}/v1/chains/comment-text:moderate -d '{{\"content\":{{\"contentType\":\"text/plain\",\"text\":\"click here for free money\"}}}}'"
    );
    // What scripts and tests read, the gateway's line last: dev is ready once it is out.
    println!("sekisho ui listening on http://{}", edge.addr);
    if let Some(url) = &chainstore {
        println!("sekisho chainstore listening on {url}");
    }
    println!("sekisho gateway listening on http://{addr}");

    crate::shutdown_signal().await;
    let _ = stop_tx.send(true);
    running.wait().await?;
    edge.wait().await?;
    for t in tasks {
        let _ = t.await;
    }
    if let Some(t) = store_task {
        let _ = t.await;
    }
    Ok(())
}

/// The dev operator's password and the dev service token: kept in the data directory so
/// that they survive restarts, unless `SEKISHO_DEV_PASSWORD` / `SEKISHO_DEV_TOKEN` say
/// otherwise.
struct DevCredentials {
    password: String,
    token: String,
}

impl DevCredentials {
    fn load_or_create(dir: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("credentials.json");
        let stored: Option<serde_json::Value> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let field = |k: &str| {
            stored
                .as_ref()
                .and_then(|v| v[k].as_str())
                .map(str::to_owned)
        };
        let (password, token) = match (field("password"), field("token")) {
            (Some(p), Some(t)) => (p, t),
            _ => {
                let p = sekisho_edge::auth::random_secret();
                let t = sekisho_edge::auth::random_secret();
                write_private(
                    &path,
                    &serde_json::to_vec_pretty(&serde_json::json!({"password": p, "token": t}))?,
                )?;
                (p, t)
            }
        };
        Ok(DevCredentials {
            password: std::env::var("SEKISHO_DEV_PASSWORD").unwrap_or(password),
            token: std::env::var("SEKISHO_DEV_TOKEN").unwrap_or(token),
        })
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// Creates the sample chains that are not in the store yet; edits made since are kept.
async fn seed(store: &dyn ChainStorage) -> anyhow::Result<()> {
    for (_, text) in SAMPLE_CHAINS {
        let spec = sekisho_chainstore::parse_chain(text)
            .map_err(|e| anyhow::anyhow!("sample chain: {e}"))?;
        match store
            .write(Write {
                name: spec.name,
                document: Some((*text).to_owned()),
                expect: Expect::Absent,
                author: "sekisho dev".into(),
                comment: "sample chain".into(),
            })
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
