//! `sekisho filter <name>`: one built-in filter as its own gRPC service.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use sekisho_filter_sdk::FilterServer;
use sekisho_filters_images::runtime::{OnMissingCuda, Provider};
use sekisho_filters_images::{ClassifierSpec, FaceDetect, ModelOptions, NgImage, QrCode};
use sekisho_filters_samples::{Keywords, Noop};

#[derive(Clone, Copy, ValueEnum)]
pub enum BuiltinFilter {
    Noop,
    Keywords,
    FaceDetect,
    NgImage,
    QrCode,
}

#[derive(clap::Args)]
pub struct FilterArgs {
    name: BuiltinFilter,
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: String,
    /// Serve under another name (noop only: several noop filters in tests).
    #[arg(long = "as")]
    alias: Option<String>,
    #[command(flatten)]
    onnx: OnnxArgs,
}

/// How the ONNX filters (face-detect, ng-image) run their model.
#[derive(clap::Args, Clone)]
pub struct OnnxArgs {
    /// The model file (default: the filter's model in the cache, .sekisho/cache/models).
    #[arg(long)]
    model: Option<PathBuf>,
    /// ng-image only: a YAML or JSON ClassifierSpec (default: open_nsfw).
    #[arg(long)]
    spec: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    provider: ProviderArg,
    #[arg(long, default_value_t = 0)]
    device_id: i32,
    /// When CUDA is asked for but cannot be used: run on CPU (logged as an error) or
    /// refuse to start.
    #[arg(long, value_enum, default_value = "fallback")]
    on_missing_cuda: OnMissingArg,
    /// Sessions, each on its own worker thread.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// ONNX Runtime intra-op threads per session (0: ONNX Runtime's default).
    #[arg(long, default_value_t = 0)]
    intra_threads: usize,
    /// Let idle intra-op threads spin-wait (see BENCHMARKS.md before turning it on).
    #[arg(long)]
    spin: bool,
    /// Most items in one batch.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// How long the first item of a batch waits for more.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    max_wait: Duration,
    /// The ONNX Runtime library (default: ORT_DYLIB_PATH, else the cache's copy).
    #[arg(long)]
    onnxruntime: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProviderArg {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnMissingArg {
    Fallback,
    Refuse,
}

impl OnnxArgs {
    pub fn options(&self) -> ModelOptions {
        let mut o = ModelOptions {
            model: self.model.clone(),
            workers: self.workers,
            ..ModelOptions::default()
        };
        if let Some(l) = &self.onnxruntime {
            o.runtime.library = l.clone();
        }
        o.runtime.provider = match self.provider {
            ProviderArg::Cpu => Provider::Cpu,
            ProviderArg::Cuda => Provider::Cuda,
        };
        o.runtime.device_id = self.device_id;
        o.runtime.on_missing_cuda = match self.on_missing_cuda {
            OnMissingArg::Fallback => OnMissingCuda::Fallback,
            OnMissingArg::Refuse => OnMissingCuda::Refuse,
        };
        o.runtime.intra_threads = self.intra_threads;
        o.runtime.spin = self.spin;
        o.batch.max_batch = self.max_batch.max(1);
        o.batch.max_wait = self.max_wait;
        o
    }

    pub fn spec(&self) -> anyhow::Result<ClassifierSpec> {
        match &self.spec {
            None => Ok(ClassifierSpec::open_nsfw()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                serde_yaml_ng::from_str(&text)
                    .with_context(|| format!("{} is not a classifier spec", p.display()))
            }
        }
    }
}

pub async fn run(args: FilterArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let announce = |name: &str| println!("sekisho filter {name} listening on http://{addr}");
    let stop = crate::shutdown_signal();
    match args.name {
        BuiltinFilter::Noop => {
            let name = args.alias.unwrap_or_else(|| "noop".into());
            announce(&name);
            FilterServer::new(Noop { name })
                .serve_on(listener, stop)
                .await?
        }
        BuiltinFilter::Keywords => {
            announce("keywords");
            FilterServer::new(Keywords).serve_on(listener, stop).await?
        }
        BuiltinFilter::FaceDetect => {
            let f = FaceDetect::load(&args.onnx.options())?;
            announce("face-detect");
            FilterServer::new(f).serve_on(listener, stop).await?
        }
        BuiltinFilter::NgImage => {
            let f = NgImage::load(args.onnx.spec()?, &args.onnx.options())?;
            announce("ng-image");
            FilterServer::new(f).serve_on(listener, stop).await?
        }
        BuiltinFilter::QrCode => {
            announce("qr-code");
            FilterServer::new(QrCode::default())
                .serve_on(listener, stop)
                .await?
        }
    }
    Ok(())
}
