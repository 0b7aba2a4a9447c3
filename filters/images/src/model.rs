//! A model served by batching workers: the model file, how its sessions run, and how
//! requests are batched. Shared by the ONNX filters.

use std::path::PathBuf;
use std::time::Instant;

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use crate::batch::{BatchOptions, BatchSizes, Batcher, run_batch};
use crate::runtime::{self, Provider, RuntimeError, RuntimeOptions};

/// What the sessions run before the filter serves (`--warm-up`). A model is always
/// checked: one that cannot take what the filter gives it does not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmUp {
    /// `All` on CUDA, `Check` on the CPU.
    #[default]
    Auto,
    /// The first session runs a batch of one item and a batch of the most items: a
    /// model whose graph fixes its batch, takes another input or gives other outputs is
    /// refused with the reason before the filter serves.
    Check,
    /// The check, then every session runs every batch size the model runs at (from 1 to
    /// the most, or those of `--batch-sizes`) once, so that no call pays for a first run
    /// of its shape (on CUDA, cuDNN searches for its convolution algorithms once per
    /// input shape).
    All,
}

impl WarmUp {
    fn resolve(self, provider: Provider) -> WarmUp {
        match (self, provider) {
            (WarmUp::Auto, Provider::Cuda) => WarmUp::All,
            (WarmUp::Auto, Provider::Cpu) => WarmUp::Check,
            (w, _) => w,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WarmUp::Auto => "auto",
            WarmUp::Check => "check",
            WarmUp::All => "all",
        }
    }
}

/// What a filter gives its model, for the check before it serves.
#[derive(Debug, Clone)]
pub struct Probe {
    /// One item's input, without the batch dimension, as the filter gives it.
    pub item: Vec<i64>,
    /// For each output, how many values one such item must get back (`None`: any).
    pub values: Vec<Option<usize>>,
    /// What those values are, for the message when they are not.
    pub values_are: String,
    /// Whether every item has the probe's shape (a classifier), so that `WarmUp::All`
    /// has the shapes to run; face-detect's follow each photo's aspect ratio.
    pub fixed_shape: bool,
}

#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// The model file; each filter has a default in the cache.
    pub model: Option<PathBuf>,
    pub runtime: RuntimeOptions,
    pub batch: BatchOptions,
    /// Sessions, each on its own worker thread.
    pub workers: usize,
    pub warm_up: WarmUp,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            model: None,
            runtime: RuntimeOptions::default(),
            batch: BatchOptions::default(),
            workers: 1,
            warm_up: WarmUp::default(),
        }
    }
}

/// A running model: its batcher and the provider its sessions really use.
pub struct Served {
    pub batcher: Batcher,
    pub provider: Provider,
    pub path: PathBuf,
    max_batch: usize,
    /// The batch sizes the model runs at (empty: every size).
    sizes: Vec<usize>,
    workers: usize,
    warmed: WarmUp,
    /// Seconds from reading the model file to ready: loading the sessions, the check
    /// and the warm-up.
    ready_after: f64,
    /// On CUDA: how.
    cuda: Option<CudaUse>,
}

/// How the sessions use CUDA.
struct CudaUse {
    /// The GPUs the sessions run on, each once.
    devices: Vec<i32>,
    /// The most memory the sessions may take on each GPU.
    mem_limit: Option<u64>,
    conv_search: runtime::ConvSearch,
    tf32: bool,
}

impl Served {
    pub fn batcher_max_batch(&self) -> u32 {
        self.max_batch as u32
    }

    /// What `Describe` says about the model: the provider in use among it.
    pub fn info(&self, model: &str) -> std::collections::BTreeMap<String, String> {
        let cuda = self.cuda.iter().flat_map(|c| {
            let devices: Vec<String> = c.devices.iter().map(i32::to_string).collect();
            [
                ("cuda_devices", devices.join(",")),
                (
                    "gpu_mem_limit_per_gpu",
                    c.mem_limit.map_or("none".to_owned(), |l| l.to_string()),
                ),
                ("cudnn_conv_search", c.conv_search.as_str().to_owned()),
                ("cuda_tf32", c.tf32.to_string()),
            ]
        });
        [
            ("execution_provider", self.provider.as_str().to_owned()),
            ("model", model.to_owned()),
            ("model_path", self.path.display().to_string()),
            ("workers", self.workers.to_string()),
            ("warm_up", self.warmed.as_str().to_owned()),
            ("batch_sizes", BatchSizes::describe(&self.sizes)),
            ("model_ready_seconds", format!("{:.3}", self.ready_after)),
        ]
        .into_iter()
        .chain(cuda)
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// Loads `path` (after `edit`, e.g. making dims symbolic) into `opts.workers` sessions,
/// checks that the model takes what the filter gives it (`probe`) and warms it up as
/// `opts.warm_up` says, then starts the batching workers.
pub fn serve(
    path: PathBuf,
    edit: impl Fn(Vec<u8>) -> Result<Vec<u8>, String>,
    input: &str,
    outputs: &[&str],
    probe: &Probe,
    opts: &ModelOptions,
) -> Result<Served, RuntimeError> {
    let began = Instant::now();
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
    let places = runtime::placements(&opts.runtime, opts.workers.max(1));
    let mut sessions = Vec::new();
    let mut cuda_on = Vec::new();
    let mut cpu_for = None;
    for place in &places {
        let built = runtime::session(&bytes, &opts.runtime, *place)?;
        match built.provider {
            Provider::Cuda if !cuda_on.contains(&place.device) => cuda_on.push(place.device),
            Provider::Cuda => {}
            Provider::Cpu => cpu_for = cpu_for.or(Some(place.device)),
        }
        sessions.push(built.session);
    }
    // One batcher, one estimate of a batch's time: its sessions all run on GPUs, or all
    // on the CPU.
    if let (Some(missing), Some(working)) = (cpu_for, cuda_on.first()) {
        return Err(RuntimeError::CudaMissing {
            device: missing,
            reason: format!(
                "device {working} can be used, so the filter will not run some sessions on \
                 the CPU beside it: give --device-id only the GPUs this process sees"
            ),
        });
    }
    let provider = if cuda_on.is_empty() {
        Provider::Cpu
    } else {
        Provider::Cuda
    };
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
    let refuse = |reason: String| RuntimeError::Unfit {
        path: path.clone(),
        reason,
    };
    let declared = check_declared(&sessions[0], input, &outputs, &probe.item).map_err(refuse)?;
    let mut batch = opts.batch.clone();
    if declared == Some(1) && batch.max_batch > 1 {
        tracing::warn!(model = %path.display(), max_batch = batch.max_batch, "the model's input takes batches of exactly one item: serving one item at a time");
        batch.max_batch = 1;
        batch.sizes = BatchSizes::Every;
    }
    // On CUDA few batch shapes: cuDNN's algorithm search, and the warm-up, run once per
    // shape. On the CPU a row of padding costs what an item does.
    if batch.sizes == BatchSizes::Auto {
        batch.sizes = match provider {
            Provider::Cuda => BatchSizes::powers_of_two(batch.max_batch),
            Provider::Cpu => BatchSizes::Every,
        };
    }
    let sizes = batch
        .sizes
        .sizes(batch.max_batch)
        .map_err(|e| RuntimeError::Options(format!("--batch-sizes: {e}")))?;
    let started = Instant::now();
    let most = most_in_batch(&batch, &probe.item);
    // On CUDA the first run of each input shape also searches for its convolution
    // algorithms (cuDNN), far longer than a run: the full batch is timed at its second run
    // there, so that admission does not start out pricing every batch at that search. On
    // the CPU a first run costs ~10% more (BENCHMARKS.md (d)), not worth a second batch.
    let retime = provider == Provider::Cuda;
    let timed =
        check_runs(&mut sessions[0], input, &outputs, probe, most, retime).map_err(refuse)?;
    let warmed = match opts.warm_up.resolve(provider) {
        WarmUp::All if probe.fixed_shape => {
            // cuDNN's search times each algorithm on the GPU: sessions searching at once
            // would time each other's runs (and take workspace from each other), so on
            // CUDA the sessions on one GPU warm one after another, the GPUs side by side.
            // CPU sessions all run side by side.
            let warm_sizes = sizes_up_to(&sizes, most);
            let lanes: Vec<i64> = match provider {
                Provider::Cuda => places.iter().map(|p| i64::from(p.device)).collect(),
                Provider::Cpu => (0..sessions.len() as i64).collect(),
            };
            each_session(&mut sessions, &lanes, |i, session| {
                let started = Instant::now();
                warm_all(session, input, &outputs, &probe.item, &warm_sizes)?;
                tracing::info!(model = %path.display(), session = i, batch_sizes = ?warm_sizes, seconds = started.elapsed().as_secs_f64(), "session warmed");
                Ok(())
            })
            .map_err(refuse)?;
            WarmUp::All
        }
        _ => WarmUp::Check,
    };
    let ready_after = began.elapsed().as_secs_f64();
    tracing::info!(model = %path.display(), warm_up = warmed.as_str(), max_batch = most, seconds = started.elapsed().as_secs_f64(), since_read = ready_after, "model checked");
    let batcher = Batcher::start(
        &path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sessions,
        input,
        &outputs,
        batch.clone(),
    );
    // Until real batches run: the line through one item's time and a full batch's.
    batcher.seed_cost(timed.0, timed.1);
    Ok(Served {
        batcher,
        provider,
        path,
        max_batch: batch.max_batch,
        sizes,
        workers,
        warmed,
        ready_after,
        cuda: (provider == Provider::Cuda).then_some(CudaUse {
            devices: cuda_on,
            mem_limit: opts.runtime.gpu_mem_limit,
            conv_search: opts.runtime.conv_search,
            tf32: opts.runtime.tf32,
        }),
    })
}

/// The most items of `item`'s shape one batch holds.
fn most_in_batch(batch: &BatchOptions, item: &[i64]) -> usize {
    let values = item.iter().product::<i64>().max(1) as usize;
    (batch.max_batch_elements / values).clamp(1, batch.max_batch.max(1))
}

fn shape_text(dims: &[i64]) -> String {
    let dims: Vec<String> = dims
        .iter()
        .map(|d| {
            if *d < 0 {
                "?".to_owned()
            } else {
                d.to_string()
            }
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

/// What the model declares against what the filter gives it: its input by that name, of
/// 32-bit floats, with the item's dimensions where it fixes one, and the outputs by name,
/// of 32-bit floats. Returns the batch size the input fixes, if it fixes one.
fn check_declared(
    session: &Session,
    input: &str,
    outputs: &[&str],
    item: &[i64],
) -> Result<Option<i64>, String> {
    let names = |outlets: &[ort::value::Outlet]| -> String {
        outlets
            .iter()
            .map(|o| format!("`{}`", o.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(inlet) = session.inputs().iter().find(|i| i.name() == input) else {
        return Err(format!(
            "the model has no input `{input}` (its inputs: {})",
            names(session.inputs())
        ));
    };
    let float = |name: &str, ty: &ValueType| -> Result<(), String> {
        match ty.tensor_type() {
            Some(TensorElementType::Float32) => Ok(()),
            Some(t) => Err(format!(
                "`{name}` is a tensor of {t}; the filter works with 32-bit floats"
            )),
            None => Err(format!(
                "`{name}` is not a tensor ({ty:?}); the filter works with tensors of 32-bit floats"
            )),
        }
    };
    float(input, inlet.dtype())?;
    let shape = inlet
        .dtype()
        .tensor_shape()
        .map(|s| s.to_vec())
        .unwrap_or_default();
    let mut given = vec![-1];
    given.extend_from_slice(item);
    let fits = shape.len() == given.len()
        && shape[1..]
            .iter()
            .zip(item)
            .all(|(d, want)| *d <= 0 || d == want);
    if !fits {
        return Err(format!(
            "the model's input `{input}` is {}, the filter gives it {} (batch first): check \
             the layout and size it is configured with",
            shape_text(&shape),
            shape_text(&given)
        ));
    }
    for name in outputs {
        let Some(outlet) = session.outputs().iter().find(|o| o.name() == *name) else {
            return Err(format!(
                "the model has no output `{name}` (its outputs: {})",
                names(session.outputs())
            ));
        };
        float(name, outlet.dtype())?;
    }
    match shape[0] {
        d if d <= 0 || d == 1 => Ok((d == 1).then_some(1)),
        d => Err(format!(
            "the model's input `{input}` takes batches of exactly {d} items; the filter \
             runs 1 to --max-batch (give the model a symbolic batch dimension)"
        )),
    }
}

/// Runs a batch of one item of zeros, and one of `most` items: what the model gives back
/// has the shape the filter reads. Returns the time of one item (run again, past the
/// first run's set-up) and of the batch of `most`, each with its input values: the
/// batcher's first estimate, before any call.
fn check_runs(
    session: &mut Session,
    input: &str,
    outputs: &[&str],
    probe: &Probe,
    most: usize,
    retime: bool,
) -> Result<(Timed, Timed), String> {
    let one = probe.item.iter().product::<i64>().max(0) as usize;
    let got =
        run_batch(session, input, outputs, &probe.item, (1, 1), vec![0.0; one]).map_err(|e| {
            format!(
                "the model cannot run one input of {}: {e}",
                shape_text(&probe.item)
            )
        })?;
    for ((name, out), want) in outputs.iter().zip(&got[0]).zip(&probe.values) {
        if let Some(want) = want
            && out.data.len() != *want
        {
            return Err(format!(
                "the model's output `{name}` gives {} values for an input of {}; the filter \
                 reads {want} ({})",
                out.data.len(),
                shape_text(&probe.item),
                probe.values_are
            ));
        }
    }
    let started = Instant::now();
    run_batch(session, input, outputs, &probe.item, (1, 1), vec![0.0; one])
        .map_err(|e| format!("the model ran one input of zeros once, not twice: {e}"))?;
    let alone = (started.elapsed(), one);
    if most == 1 {
        return Ok((alone, alone));
    }
    let full = |session: &mut Session| {
        let started = Instant::now();
        run_batch(
            session,
            input,
            outputs,
            &probe.item,
            (most, most),
            vec![0.0; one * most],
        )
        .map(|_| started.elapsed())
        .map_err(|e| {
            format!(
                "the model runs one item but not a batch of {most}: {e} (start the filter \
                 with a smaller --max-batch; 1 if the model's graph fixes its batch size)"
            )
        })
    };
    let mut took = full(session)?;
    if retime {
        took = full(session)?;
    }
    Ok((alone, (took, one * most)))
}

/// A run's time and its input values.
type Timed = (std::time::Duration, usize);

/// The batch sizes a batch of at most `most` items runs at (`sizes` empty: every size),
/// ascending.
fn sizes_up_to(sizes: &[usize], most: usize) -> Vec<usize> {
    if sizes.is_empty() {
        return (1..=most).collect();
    }
    let mut up_to: Vec<usize> = sizes.iter().copied().filter(|&s| s < most).collect();
    up_to.push(most);
    up_to
}

/// One session runs each of `sizes`.
fn warm_all(
    session: &mut Session,
    input: &str,
    outputs: &[&str],
    item: &[i64],
    sizes: &[usize],
) -> Result<(), String> {
    let one = item.iter().product::<i64>().max(0) as usize;
    for &n in sizes {
        run_batch(session, input, outputs, item, (n, n), vec![0.0; one * n])
            .map_err(|e| format!("warming up a batch of {n}: {e}"))?;
    }
    Ok(())
}

/// Runs `work` on every session (with its index): the sessions of one lane (`lanes[i]`
/// is session i's) one after another, the lanes side by side, each on its own thread.
/// The first error wins.
fn each_session<S: Send>(
    sessions: &mut [S],
    lanes: &[i64],
    work: impl Fn(usize, &mut S) -> Result<(), String> + Sync,
) -> Result<(), String> {
    let mut by_lane: std::collections::BTreeMap<i64, Vec<(usize, &mut S)>> = Default::default();
    for (i, s) in sessions.iter_mut().enumerate() {
        by_lane.entry(lanes[i]).or_default().push((i, s));
    }
    let work = &work;
    std::thread::scope(|scope| {
        let runs: Vec<_> = by_lane
            .into_values()
            .map(|lane| scope.spawn(move || lane.into_iter().try_for_each(|(i, s)| work(i, s))))
            .collect();
        runs.into_iter().try_for_each(|r| {
            r.join()
                .unwrap_or_else(|_| Err("a warm-up run panicked".into()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::{each_session, sizes_up_to};
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn the_warm_up_runs_each_size_a_batch_runs_at() {
        assert_eq!(sizes_up_to(&[], 4), [1, 2, 3, 4]);
        assert_eq!(sizes_up_to(&[1, 2, 4, 8], 8), [1, 2, 4, 8]);
        // Batches of this shape hold at most 6 (their input values): padded up to 6.
        assert_eq!(sizes_up_to(&[1, 2, 4, 8], 6), [1, 2, 4, 6]);
        assert_eq!(sizes_up_to(&[1], 1), [1]);
    }

    /// Runs sessions in `lanes`, each staying at least 50 ms and until one of each lane
    /// has started (up to 20 s): the most that ran at once in all, and in one lane.
    fn most_at_once(lanes: &[i64]) -> (usize, usize) {
        let distinct = lanes.iter().collect::<BTreeSet<_>>().len();
        let started = AtomicUsize::new(0);
        let running = Mutex::new((0usize, BTreeMap::<i64, usize>::new()));
        let most = Mutex::new((0usize, 0usize));
        let mut sessions = vec![(); lanes.len()];
        each_session(&mut sessions, lanes, |i, _| {
            {
                let mut r = running.lock().unwrap();
                r.0 += 1;
                let in_lane = r.1.entry(lanes[i]).or_default();
                *in_lane += 1;
                let in_lane = *in_lane;
                let mut m = most.lock().unwrap();
                *m = (m.0.max(r.0), m.1.max(in_lane));
            }
            started.fetch_add(1, Ordering::SeqCst);
            let begun = Instant::now();
            while (started.load(Ordering::SeqCst) < distinct
                || begun.elapsed() < Duration::from_millis(50))
                && begun.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut r = running.lock().unwrap();
            r.0 -= 1;
            *r.1.get_mut(&lanes[i]).unwrap() -= 1;
            Ok(())
        })
        .unwrap();
        most.into_inner().unwrap()
    }

    #[test]
    fn sessions_of_one_lane_warm_one_after_another_the_lanes_side_by_side() {
        // CUDA: the lanes are the GPUs; the CPU: each session its own lane.
        assert_eq!(most_at_once(&[0, 0, 0]), (1, 1));
        assert_eq!(most_at_once(&[0, 1, 2]), (3, 1));
        assert_eq!(most_at_once(&[0, 1, 0, 1]), (2, 1));
        let mut sessions = vec![0u32; 3];
        let err = each_session(&mut sessions, &[0, 0, 0], |i, s| {
            *s += 1;
            if i == 1 {
                Err("the second failed".into())
            } else {
                Ok(())
            }
        });
        assert_eq!(err.unwrap_err(), "the second failed");
        assert_eq!(sessions, [1, 1, 0], "a lane stops at its first error");
    }
}
