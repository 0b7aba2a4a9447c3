//! `sekisho filter <name>`: one built-in filter as its own gRPC service.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use sekisho_filter_sdk::{EtcdRegistration, FilterServer};
use sekisho_filters_images::intake::ImageLimits;
use sekisho_filters_images::runtime::{ConvSearch, OnMissingCuda, Provider};
use sekisho_filters_images::{
    BatchSizes, ClassifierSpec, FaceDetect, Intake, ModelOptions, NgImage, QrCode, WarmUp,
};
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
    /// Serve Prometheus metrics at http://<this>/metrics (calls by code, latency, in
    /// flight, the execution provider; for the ONNX filters batch sizes, queue wait and
    /// inference time).
    #[arg(long)]
    metrics_listen: Option<String>,
    #[command(flatten)]
    registration: RegistrationArgs,
    #[command(flatten)]
    noop: NoopArgs,
    #[command(flatten)]
    onnx: OnnxArgs,
}

/// Registration for discovery, and shutdown.
#[derive(clap::Args, Clone)]
pub struct RegistrationArgs {
    /// Register in etcd while serving (comma-separated client URLs), for gateways with
    /// `discovery.etcd`.
    #[arg(long, env = "SEKISHO_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// The etcd key prefix gateways watch.
    #[arg(long, default_value = sekisho_proto::registration::DEFAULT_ETCD_PREFIX)]
    etcd_prefix: String,
    /// The etcd lease TTL: how long a replica that died without withdrawing stays listed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    etcd_ttl: Duration,
    /// The address gateways dial, `http://host:port` (default: http:// and the bound
    /// address, which is right unless it is 0.0.0.0 or behind NAT; in Kubernetes, the pod IP).
    #[arg(long, env = "SEKISHO_ADVERTISE")]
    advertise: Option<String>,
    /// On SIGTERM: say NOT_SERVING and withdraw, keep serving this long so that gateways
    /// stop sending, then drain what is in flight and exit.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    drain_delay: Duration,
}

/// Shaping one noop replica, for tests and benchmarks of balancing.
#[derive(clap::Args, Clone)]
pub struct NoopArgs {
    /// noop: add this to every call (a slow replica).
    #[arg(long, value_parser = humantime::parse_duration)]
    extra_delay: Option<Duration>,
    /// noop: fail every call with UNAVAILABLE for this long after start (a broken replica
    /// that recovers).
    #[arg(long, value_parser = humantime::parse_duration)]
    fail_for: Option<Duration>,
    /// noop: the version Describe reports.
    #[arg(long, default_value = "0.1.0")]
    describe_version: String,
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
    /// CUDA: the GPUs to run on, e.g. `0,1`: the sessions take them in turn, and
    /// --workers is one per GPU unless given.
    #[arg(long = "device-id", value_delimiter = ',', default_value = "0", value_parser = clap::value_parser!(i32).range(0..))]
    device_ids: Vec<i32>,
    /// When CUDA is asked for but cannot be used: run on CPU (logged as an error) or
    /// refuse to start.
    #[arg(long, value_enum, default_value = "fallback")]
    on_missing_cuda: OnMissingArg,
    /// CUDA: the most memory the model's arenas may take on each GPU, shared evenly by
    /// the --workers sessions on it, e.g. `6GiB` (or `6000MB`, or bytes); for pods that
    /// share a GPU. Default: no limit (an arena keeps what it grew to).
    #[arg(long, value_parser = parse_bytes)]
    gpu_mem_limit: Option<u64>,
    /// CUDA: how cuDNN picks each convolution's algorithm: `exhaustive` times them all at
    /// the first run of each input shape (the warm-up `all` pays for it before serving),
    /// `heuristic` takes cuDNN's ranking, `default` one fixed algorithm (least memory).
    #[arg(long, value_enum, default_value = "exhaustive")]
    cudnn_conv_search: ConvSearchArg,
    /// CUDA: let convolutions and matrix products run in TensorFloat-32 on tensor cores
    /// (their inputs rounded to 10-bit mantissas): faster, and scores no longer
    /// float32's. Off by default (ONNX Runtime's own default is on).
    #[arg(long)]
    cuda_tf32: bool,
    /// face-detect, ng-image: sessions, each on its own worker thread (default 1; on
    /// CUDA one per --device-id).
    /// qr-code: searches run at once, the other calls waiting their turn (default: two
    /// per core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..1025))]
    workers: Option<u64>,
    /// ONNX Runtime intra-op threads per session (0: ONNX Runtime's default).
    #[arg(long, default_value_t = 0)]
    intra_threads: usize,
    /// Let idle intra-op threads spin-wait (see BENCHMARKS.md before turning it on).
    #[arg(long)]
    spin: bool,
    /// Most items in one batch (face-detect's batches also hold at most the pixels of
    /// one `--max-side` input).
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// face-detect only: the longest side its model is given (32 to 4096); a chain
    /// asking for more is refused. Memory grows with its square: about 330 MB a
    /// megapixel of model input per worker on CPU (1024: 0.45 GB, 2048: 1.55 GB).
    #[arg(long, default_value_t = sekisho_filters_images::face::DEFAULT_MAX_SIDE)]
    max_side: u32,
    /// The batch sizes the model runs at: a batch runs at the smallest listed size that
    /// holds it, the rest of its rows copies of its last item (e.g. `1,2,4,8,16,32`;
    /// --max-batch is always one), or `every` size (no padding). `auto`: powers of two
    /// on CUDA, where cuDNN's algorithm search and the warm-up run once per batch shape,
    /// `every` on the CPU, where a row of padding costs what an item does.
    #[arg(long, default_value = "auto", value_parser = parse_batch_sizes)]
    batch_sizes: BatchSizes,
    /// How long the first item of a batch waits for more, after taking what is queued
    /// (0s: a free worker runs what is queued at once, so batches grow with the load).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    max_wait: Duration,
    /// What the model runs before the filter serves. Every model is checked (a batch of
    /// one item and one of --max-batch; a model that cannot take what the filter gives
    /// it is refused with the reason); `all` then runs every batch size from 1 to
    /// --max-batch on every worker (ng-image: so that no call pays for the first run of
    /// its batch size; on CUDA, cuDNN's algorithm search). `auto`: `all` on CUDA,
    /// `check` on the CPU.
    #[arg(long, value_enum, default_value = "auto")]
    warm_up: WarmUpArg,
    /// ng-image only: decode JPEGs at 1/2, 1/4 or 1/8 of their size (libjpeg's DCT
    /// scaling) while no side goes below this: several times faster on large photos,
    /// but scores move a little (open_nsfw: up to 0.0033 at 1024 on the phone-sized test photos;
    /// BENCHMARKS.md (d)). Default: decoded whole, as the reference pipeline does.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub jpeg_min_side: Option<u32>,
    /// The ONNX Runtime library (default: ORT_DYLIB_PATH, else the cache's copy: with
    /// --provider cuda, onnxruntime-gpu's when `scripts/fetch-models.sh --gpu` fetched it).
    #[arg(long)]
    onnxruntime: Option<PathBuf>,
    /// Image filters: pixels decoded and worked on at once across requests (a decoded
    /// pixel takes up to ~10 bytes on the way); larger images arriving together wait
    /// their turn (one larger than the budget runs alone).
    #[arg(long, default_value_t = sekisho_filters_images::intake::DEFAULT_DECODING_PIXELS)]
    decoding_pixels: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProviderArg {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum WarmUpArg {
    Auto,
    Check,
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ConvSearchArg {
    Exhaustive,
    Heuristic,
    Default,
}

/// `auto`, `every`, or batch sizes separated by commas.
fn parse_batch_sizes(s: &str) -> Result<BatchSizes, String> {
    match s.trim() {
        "auto" => Ok(BatchSizes::Auto),
        "every" => Ok(BatchSizes::Every),
        list => list
            .split(',')
            .map(|n| match n.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "`{}`: give `auto`, `every` or batch sizes above 0 separated by commas, \
                     e.g. 1,2,4,8",
                    n.trim()
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(BatchSizes::Only),
    }
}

/// A size in bytes: a whole number, optionally followed by KiB, MiB, GiB (powers of
/// 1024) or KB, MB, GB (powers of 1000).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}`: give a whole number of bytes, e.g. 6GiB or 6000MB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "`{s}`: unknown unit `{u}` (KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(scale)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("`{s}`: give a size above 0 that fits in 64 bits"))
}

#[derive(Clone, Copy, ValueEnum)]
enum OnMissingArg {
    Fallback,
    Refuse,
}

impl OnnxArgs {
    pub fn options(&self) -> ModelOptions {
        let cuda = matches!(self.provider, ProviderArg::Cuda);
        // Each GPU once, in the order given.
        let mut devices: Vec<i32> = Vec::new();
        for d in &self.device_ids {
            if !devices.contains(d) {
                devices.push(*d);
            }
        }
        let mut o = ModelOptions {
            model: self.model.clone(),
            workers: self
                .workers
                .map_or(if cuda { devices.len() } else { 1 }, |n| n as usize),
            ..ModelOptions::default()
        };
        o.runtime.provider = match self.provider {
            ProviderArg::Cpu => Provider::Cpu,
            ProviderArg::Cuda => Provider::Cuda,
        };
        o.runtime.library = self.onnxruntime.clone().unwrap_or_else(|| {
            sekisho_filters_images::runtime::default_library_for(o.runtime.provider)
        });
        o.runtime.devices = devices;
        o.runtime.on_missing_cuda = match self.on_missing_cuda {
            OnMissingArg::Fallback => OnMissingCuda::Fallback,
            OnMissingArg::Refuse => OnMissingCuda::Refuse,
        };
        o.runtime.intra_threads = self.intra_threads;
        o.runtime.spin = self.spin;
        o.runtime.gpu_mem_limit = self.gpu_mem_limit;
        o.runtime.tf32 = self.cuda_tf32;
        o.runtime.conv_search = match self.cudnn_conv_search {
            ConvSearchArg::Exhaustive => ConvSearch::Exhaustive,
            ConvSearchArg::Heuristic => ConvSearch::Heuristic,
            ConvSearchArg::Default => ConvSearch::Default,
        };
        if !cuda
            && (self.gpu_mem_limit.is_some()
                || self.cuda_tf32
                || self.cudnn_conv_search != ConvSearchArg::Exhaustive
                || self.device_ids != [0])
        {
            tracing::warn!(
                "--device-id, --gpu-mem-limit, --cudnn-conv-search and --cuda-tf32 apply to --provider cuda only; ignored on the CPU"
            );
        }
        o.batch.max_batch = self.max_batch.max(1);
        o.batch.max_wait = self.max_wait;
        o.batch.sizes = self.batch_sizes.clone();
        o.warm_up = match self.warm_up {
            WarmUpArg::Auto => WarmUp::Auto,
            WarmUpArg::Check => WarmUp::Check,
            WarmUpArg::All => WarmUp::All,
        };
        o
    }

    /// qr-code's searches at once: `--workers`, else two per core.
    pub fn qr_workers(&self) -> usize {
        self.workers
            .map_or_else(sekisho_filters_images::work::default_workers, |n| {
                n as usize
            })
    }

    /// The image filters' intake: default limits and this process's decoding budget.
    pub fn intake(&self) -> Intake {
        Intake::new(ImageLimits::default(), self.decoding_pixels)
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
    if let Some(at) = &args.metrics_listen {
        // Installed before a model loads, so that nothing is recorded into the void.
        let app = sekisho_jsonproxy::metrics::router();
        let metrics = tokio::net::TcpListener::bind(at)
            .await
            .with_context(|| format!("cannot listen on {at} for metrics"))?;
        println!(
            "sekisho filter metrics on http://{}/metrics",
            metrics.local_addr()?
        );
        tokio::spawn(sekisho_jsonproxy::serve(
            metrics,
            app,
            std::future::pending(),
        ));
    }
    let announce = |name: &str| println!("sekisho filter {name} listening on http://{addr}");
    let stop = crate::shutdown_signal();
    let reg = args.registration.clone();
    let advertise = reg
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    // Every filter is served the same way: registration and draining included.
    macro_rules! serve {
        ($filter:expr) => {{
            let mut server = FilterServer::new($filter).drain_delay(reg.drain_delay);
            if !reg.etcd.is_empty() {
                let mut r = EtcdRegistration::new(reg.etcd.clone(), advertise.clone());
                r.prefix = reg.etcd_prefix.clone();
                r.ttl = reg.etcd_ttl;
                server = server.register_in_etcd(r);
            }
            server.serve_on(listener, stop).await?
        }};
    }
    match args.name {
        BuiltinFilter::Noop => {
            let name = args.alias.unwrap_or_else(|| "noop".into());
            announce(&name);
            serve!(Noop {
                name,
                extra_delay: args.noop.extra_delay.unwrap_or_default(),
                fail_until: args.noop.fail_for.map(|d| std::time::Instant::now() + d),
                version: args.noop.describe_version,
            })
        }
        BuiltinFilter::Keywords => {
            announce("keywords");
            serve!(Keywords::default())
        }
        BuiltinFilter::FaceDetect => {
            let f = FaceDetect::load_limited(&args.onnx.options(), args.onnx.max_side)?
                .with_intake(args.onnx.intake());
            announce("face-detect");
            serve!(f)
        }
        BuiltinFilter::NgImage => {
            let f = NgImage::load(args.onnx.spec()?, &args.onnx.options())?
                .with_intake(args.onnx.intake())
                .with_jpeg_min_side(args.onnx.jpeg_min_side);
            announce("ng-image");
            serve!(f)
        }
        BuiltinFilter::QrCode => {
            announce("qr-code");
            serve!(
                QrCode::default()
                    .with_intake(args.onnx.intake())
                    .with_workers(args.onnx.qr_workers())
            )
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        onnx: OnnxArgs,
    }

    fn options(args: &[&str]) -> ModelOptions {
        Cli::try_parse_from(std::iter::once("filter").chain(args.iter().copied()))
            .unwrap()
            .onnx
            .options()
    }

    #[test]
    fn sizes_are_read_in_binary_and_decimal_units() {
        assert_eq!(parse_bytes("6GiB"), Ok(6 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("6000MB"), Ok(6_000_000_000));
        assert_eq!(parse_bytes("2 GB"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        for bad in ["", "0", "0GiB", "-1", "1.5GiB", "GiB", "99999999999GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} was read");
        }
        let e = parse_bytes("6TB").unwrap_err();
        assert!(e.contains("unknown unit `TB`"), "{e}");
    }

    #[test]
    fn batch_sizes_are_auto_every_or_a_list() {
        assert_eq!(options(&[]).batch.sizes, BatchSizes::Auto);
        assert_eq!(
            options(&["--batch-sizes", "every"]).batch.sizes,
            BatchSizes::Every
        );
        assert_eq!(
            options(&["--batch-sizes", "8, 1,4"]).batch.sizes,
            BatchSizes::Only(vec![8, 1, 4])
        );
        for bad in ["", "0", "1,,2", "-1", "all", "1.5"] {
            let e = parse_batch_sizes(bad).unwrap_err();
            assert!(e.contains("batch sizes above 0"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cuda_runs_a_session_per_gpu_listed_unless_told_how_many() {
        let o = options(&[]);
        assert_eq!(o.runtime.gpu_mem_limit, None);
        assert_eq!(o.runtime.conv_search, ConvSearch::Exhaustive);
        assert!(!o.runtime.tf32, "float32 unless asked");
        assert_eq!((o.workers, o.runtime.devices.as_slice()), (1, &[0][..]));
        let o = options(&[
            "--provider",
            "cuda",
            "--device-id",
            "0,1",
            "--gpu-mem-limit",
            "6GiB",
            "--cudnn-conv-search",
            "heuristic",
            "--cuda-tf32",
        ]);
        assert!(o.runtime.tf32);
        assert_eq!((o.workers, o.runtime.devices.as_slice()), (2, &[0, 1][..]));
        // The limit is each GPU's; the sessions there share it (runtime::placements).
        assert_eq!(o.runtime.gpu_mem_limit, Some(6 << 30));
        assert_eq!(o.runtime.conv_search, ConvSearch::Heuristic);
        let o = options(&["--provider", "cuda", "--device-id", "1", "--workers", "3"]);
        assert_eq!((o.workers, o.runtime.devices.as_slice()), (3, &[1][..]));
        let o = options(&["--provider", "cuda", "--device-id", "2,0,2"]);
        assert_eq!((o.workers, o.runtime.devices.as_slice()), (2, &[2, 0][..]));
        // On the CPU the devices do not set the sessions.
        let o = options(&["--device-id", "0,1"]);
        assert_eq!(o.workers, 1);
        for bad in [
            ["--gpu-mem-limit", "lots"],
            ["--device-id", "-1"],
            ["--device-id", "a"],
        ] {
            let mut args = vec!["filter"];
            args.extend(bad);
            assert!(Cli::try_parse_from(&args).is_err(), "{bad:?} was taken");
        }
    }
}
