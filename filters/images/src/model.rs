//! A model served by batching workers: the model file, how its sessions run, and how
//! requests are batched. Shared by the ONNX filters.

use std::path::PathBuf;

use crate::batch::{BatchOptions, Batcher};
use crate::runtime::{self, Provider, RuntimeError, RuntimeOptions};

#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// The model file; each filter has a default in the cache.
    pub model: Option<PathBuf>,
    pub runtime: RuntimeOptions,
    pub batch: BatchOptions,
    /// Sessions, each on its own worker thread.
    pub workers: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            model: None,
            runtime: RuntimeOptions::default(),
            batch: BatchOptions::default(),
            workers: 1,
        }
    }
}

/// A running model: its batcher and the provider its sessions really use.
pub struct Served {
    pub batcher: Batcher,
    pub provider: Provider,
    pub path: PathBuf,
    max_batch: usize,
    workers: usize,
}

impl Served {
    pub fn batcher_max_batch(&self) -> u32 {
        self.max_batch as u32
    }

    /// What `Describe` says about the model: the provider in use among it.
    pub fn info(&self, model: &str) -> std::collections::BTreeMap<String, String> {
        [
            ("execution_provider", self.provider.as_str().to_owned()),
            ("model", model.to_owned()),
            ("model_path", self.path.display().to_string()),
            ("workers", self.workers.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// Loads `path` (after `edit`, e.g. making dims symbolic) into `opts.workers` sessions.
pub fn serve(
    path: PathBuf,
    edit: impl Fn(Vec<u8>) -> Result<Vec<u8>, String>,
    input: &str,
    outputs: &[&str],
    opts: &ModelOptions,
) -> Result<Served, RuntimeError> {
    let bytes = runtime::read_model(&path)?;
    let bytes = edit(bytes).map_err(|reason| RuntimeError::Model {
        path: path.clone(),
        reason,
    })?;
    // Weights listed as inputs too keep ONNX Runtime from folding and fusing them
    // (CenterFace: 2× faster without; see BENCHMARKS.md).
    let (bytes, dropped) =
        crate::onnx_dims::drop_initializer_inputs(&bytes).map_err(|e| RuntimeError::Model {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let mut sessions = Vec::new();
    let mut provider = opts.runtime.provider;
    for _ in 0..opts.workers.max(1) {
        let built = runtime::session(&bytes, &opts.runtime)?;
        provider = built.provider;
        sessions.push(built.session);
    }
    tracing::info!(model = %path.display(), provider = provider.as_str(), workers = sessions.len(), max_batch = opts.batch.max_batch, weight_inputs_dropped = dropped, "model loaded");
    // An empty name means the model's first input or output.
    let first = &sessions[0];
    let input = match input {
        "" => first.inputs()[0].name().to_owned(),
        n => n.to_owned(),
    };
    let outputs: Vec<String> = outputs
        .iter()
        .map(|o| match *o {
            "" => first.outputs()[0].name().to_owned(),
            n => n.to_owned(),
        })
        .collect();
    let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let input = input.as_str();
    let workers = sessions.len();
    Ok(Served {
        batcher: Batcher::start(
            &path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sessions,
            input,
            &outputs,
            opts.batch.clone(),
        ),
        provider,
        path,
        max_batch: opts.batch.max_batch,
        workers,
    })
}
