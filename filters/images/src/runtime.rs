//! ONNX Runtime, loaded dynamically (`libonnxruntime.so` from the `onnxruntime` or
//! `onnxruntime-gpu` wheel, fetched by `scripts/fetch-models.sh`), and sessions on the
//! execution provider the operator asked for.
//!
//! The CUDA provider is registered with `error_on_failure`: ONNX Runtime's default is to
//! fall back to CPU silently. Whether a missing CUDA then falls back (loudly) or refuses
//! to start is the operator's choice (`on_missing_cuda`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::ep;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

/// Where the project's setup puts its downloads (`SEKISHO_CACHE`, else `.sekisho/cache`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SEKISHO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".sekisho/cache"))
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH`, else the cache's copy.
pub fn default_library() -> PathBuf {
    default_library_for(Provider::Cpu)
}

/// The ONNX Runtime library for `provider`: `ORT_DYLIB_PATH`, else the cache's copy; for
/// CUDA the `onnxruntime-gpu` one (`scripts/fetch-models.sh --gpu`) when it is there (the
/// CPU one has no CUDA provider: asked for CUDA, it fails loudly, saying where to get it).
pub fn default_library_for(provider: Provider) -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let gpu = cache_dir().join("onnxruntime-gpu/libonnxruntime.so.1.31.1");
    if provider == Provider::Cuda && gpu.is_file() {
        return gpu;
    }
    cache_dir().join("onnxruntime/libonnxruntime.so.1.31.1")
}

/// A model file in the cache (`models/<name>`).
pub fn default_model(name: &str) -> PathBuf {
    cache_dir().join("models").join(name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingCuda {
    /// Log an error and run on CPU.
    Fallback,
    /// Refuse to start.
    Refuse,
}

/// How a model's sessions run.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub library: PathBuf,
    pub provider: Provider,
    /// CUDA: the GPUs the sessions run on, each session on the next in turn.
    pub devices: Vec<i32>,
    pub on_missing_cuda: OnMissingCuda,
    /// ONNX Runtime's intra-op threads per session (0: ONNX Runtime's default).
    pub intra_threads: usize,
    /// Whether idle intra-op threads spin-wait (fast hand-off, burns the cores).
    pub spin: bool,
    /// CUDA: the most memory the sessions on one GPU may take there, in bytes, shared
    /// evenly by their arenas ([`Placement`]). None: no limit.
    pub gpu_mem_limit: Option<u64>,
    /// CUDA: how cuDNN picks each convolution's algorithm.
    pub conv_search: ConvSearch,
    /// CUDA: let convolutions and matrix products round their inputs to TensorFloat-32
    /// (10-bit mantissas) on tensor cores. ONNX Runtime does unless told not to; off by
    /// default here, so that scores are float32's, as on the CPU and in the reference
    /// pipelines that thresholds are set against.
    pub tf32: bool,
}

/// How cuDNN picks a convolution's algorithm on CUDA (ONNX Runtime's
/// `cudnn_conv_algo_search`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConvSearch {
    /// Time every algorithm at the first run of each input shape and keep the fastest
    /// (ONNX Runtime's default; the warm-up `all` pays for it before serving).
    #[default]
    Exhaustive,
    /// cuDNN's own ranking, without timing: a quicker first run, rarely a slower kernel.
    Heuristic,
    /// One fixed algorithm (implicit precomputed GEMM): the least memory.
    Default,
}

impl ConvSearch {
    pub fn as_str(self) -> &'static str {
        match self {
            ConvSearch::Exhaustive => "exhaustive",
            ConvSearch::Heuristic => "heuristic",
            ConvSearch::Default => "default",
        }
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            library: default_library(),
            provider: Provider::Cpu,
            devices: vec![0],
            on_missing_cuda: OnMissingCuda::Fallback,
            intra_threads: 0,
            spin: false,
            gpu_mem_limit: None,
            conv_search: ConvSearch::default(),
            tf32: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot load ONNX Runtime from {path}: {reason} (run scripts/fetch-models.sh, or set ORT_DYLIB_PATH)"
    )]
    Library { path: PathBuf, reason: String },
    #[error("cannot read the model {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("the model {path} does not fit this filter: {reason}")]
    Unfit { path: PathBuf, reason: String },
    #[error("CUDA was asked for (device {device}) but cannot be used: {reason}")]
    CudaMissing { device: i32, reason: String },
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    /// Options that do not fit together.
    #[error("{0}")]
    Options(String),
}

static ENV: OnceLock<Result<(PathBuf, ort::environment::Environment), String>> = OnceLock::new();

/// Loads the library once per process and returns its environment.
fn init(library: &Path) -> Result<&'static ort::environment::Environment, RuntimeError> {
    let loaded = ENV.get_or_init(|| {
        if !library.is_file() {
            return Err("no such file".to_owned());
        }
        let env = ort::init_from(library)
            .map_err(|e| e.to_string())?
            .with_name("sekisho")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())?;
        Ok((library.to_owned(), env))
    });
    match loaded {
        Ok((path, env)) if path == library => Ok(env),
        Ok((path, _)) => Err(RuntimeError::Library {
            path: library.to_owned(),
            reason: format!("{} is already loaded in this process", path.display()),
        }),
        Err(reason) => Err(RuntimeError::Library {
            path: library.to_owned(),
            reason: reason.clone(),
        }),
    }
}

/// A built session and the provider it really runs on.
pub struct Built {
    pub session: Session,
    pub provider: Provider,
}

/// Where one session runs on CUDA: its GPU and its arena's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub device: i32,
    /// The most its arena may take, in bytes (ONNX Runtime's `gpu_mem_limit`; the arena
    /// then grows by what is asked, not by powers of two). None: no limit.
    pub mem_limit: Option<u64>,
}

/// Where each of `sessions` sessions runs: on `opts.devices` in turn, each GPU's limit
/// shared evenly by the sessions on it.
pub fn placements(opts: &RuntimeOptions, sessions: usize) -> Vec<Placement> {
    let devices: &[i32] = if opts.devices.is_empty() {
        &[0]
    } else {
        &opts.devices
    };
    (0..sessions)
        .map(|i| {
            let k = i % devices.len();
            // Sessions k, k + n, k + 2n, ... share device k.
            let on_it = (sessions - k).div_ceil(devices.len()) as u64;
            Placement {
                device: devices[k],
                mem_limit: opts.gpu_mem_limit.map(|l| (l / on_it).max(1)),
            }
        })
        .collect()
}

/// Builds a session for `model` (bytes, already edited if need be), placed at `place`
/// on CUDA.
pub fn session(
    model: &[u8],
    opts: &RuntimeOptions,
    place: Placement,
) -> Result<Built, RuntimeError> {
    let env = init(&opts.library)?;
    let ort_err = |e: ort::Error| RuntimeError::Ort(e.to_string());
    let base = || -> Result<_, RuntimeError> {
        let mut b = Session::builder(env)
            .map_err(ort_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| RuntimeError::Ort(e.to_string()))?
            .with_intra_op_spinning(opts.spin)
            .map_err(|e| RuntimeError::Ort(e.to_string()))?;
        if opts.intra_threads > 0 {
            b = b
                .with_intra_threads(opts.intra_threads)
                .map_err(|e| RuntimeError::Ort(e.to_string()))?;
        }
        Ok(b)
    };
    if opts.provider == Provider::Cuda {
        let cuda = cuda_provider(opts, place).build().error_on_failure();
        let attempt = base()?
            .with_execution_providers([cuda])
            .map_err(|e| e.to_string())
            .and_then(|mut b| b.commit_from_memory(model).map_err(|e| e.to_string()));
        match attempt {
            Ok(session) => {
                return Ok(Built {
                    session,
                    provider: Provider::Cuda,
                });
            }
            Err(reason) => {
                let e = RuntimeError::CudaMissing {
                    device: place.device,
                    reason: format!(
                        "{} (ONNX Runtime from {}; `scripts/fetch-models.sh --gpu` \
                         fetches onnxruntime-gpu, which needs CUDA 13 and cuDNN 9 on the \
                         library path)",
                        reason.trim_end(),
                        opts.library.display()
                    ),
                };
                if opts.on_missing_cuda == OnMissingCuda::Refuse {
                    return Err(e);
                }
                tracing::error!(error = %e, "FALLING BACK TO CPU: this filter runs on the CPU");
            }
        }
    }
    let session = base()?.commit_from_memory(model).map_err(ort_err)?;
    Ok(Built {
        session,
        provider: Provider::Cpu,
    })
}

/// The CUDA execution provider as `opts` asks for it, for a session at `place`.
fn cuda_provider(opts: &RuntimeOptions, place: Placement) -> ep::CUDA {
    use ort::ep::ArenaExtendStrategy;
    use ort::ep::cuda::ConvAlgorithmSearch;
    let mut cuda = ep::CUDA::default()
        .with_device_id(place.device)
        // Always said: ONNX Runtime's own default is on.
        .with_tf32(opts.tf32)
        .with_conv_algorithm_search(match opts.conv_search {
            ConvSearch::Exhaustive => ConvAlgorithmSearch::Exhaustive,
            ConvSearch::Heuristic => ConvAlgorithmSearch::Heuristic,
            ConvSearch::Default => ConvAlgorithmSearch::Default,
        });
    if let Some(limit) = place.mem_limit {
        // Growing by powers of two, an arena near its limit would ask for more than it
        // may have while what it needs would still fit.
        cuda = cuda
            .with_memory_limit(usize::try_from(limit).unwrap_or(usize::MAX))
            .with_arena_extend_strategy(ArenaExtendStrategy::SameAsRequested);
    }
    cuda
}

/// Reads a model file.
pub fn read_model(path: &Path) -> Result<Vec<u8>, RuntimeError> {
    std::fs::read(path).map_err(|e| RuntimeError::Model {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Placement, RuntimeOptions, placements};

    #[test]
    fn sessions_take_the_gpus_in_turn_and_share_each_ones_memory_limit() {
        let place = |devices: Vec<i32>, limit: Option<u64>, n: usize| {
            let opts = RuntimeOptions {
                devices,
                gpu_mem_limit: limit,
                ..RuntimeOptions::default()
            };
            placements(&opts, n)
                .into_iter()
                .map(|Placement { device, mem_limit }| (device, mem_limit))
                .collect::<Vec<_>>()
        };
        assert_eq!(place(vec![0], None, 2), [(0, None), (0, None)]);
        assert_eq!(place(vec![3], Some(6 << 30), 3), [(3, Some(2 << 30)); 3]);
        // Three sessions on two GPUs: two on the first, one on the second, each GPU
        // within the limit.
        assert_eq!(
            place(vec![0, 1], Some(6 << 30), 3),
            [(0, Some(3 << 30)), (1, Some(6 << 30)), (0, Some(3 << 30))]
        );
        // Fewer sessions than GPUs: the first ones only.
        assert_eq!(place(vec![0, 1, 2], None, 2), [(0, None), (1, None)]);
        assert_eq!(place(vec![], None, 1), [(0, None)]);
        assert_eq!(place(vec![0], Some(1), 4), [(0, Some(1)); 4]);
    }
}
