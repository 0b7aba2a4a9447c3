//! Dynamic batching: requests that arrive together run as one batch, on one of
//! `sessions.len()` worker threads (each owns its session: `Session::run` takes `&mut
//! self`, so there is no lock to share). A worker that comes free takes what is queued,
//! up to `max_batch` items, and runs it at once: batches grow with the load and an item
//! that arrives alone does not wait (Triton's dynamic batcher does the same with its
//! default queue delay of 0). With a `max_wait`, the first item also waits that long for
//! more (BENCHMARKS.md (d) measures both on CPU). A worker leaves one queued item for
//! each other worker that is waiting idle: two items arriving together at two idle
//! workers run side by side, not one after the other in one worker's batch while the
//! other worker's core idles.
//! Only items of the same shape share a batch; each caller gets back exactly its own
//! rows of every output. With `sizes` the model runs only at those batch sizes: a batch
//! of 5 with sizes 1, 2, 4, 8 runs as 8, the last item copied into the 3 rows left
//! (TensorFlow Serving's `allowed_batch_sizes` does the same). On CUDA that keeps the
//! input shapes few: cuDNN searches for its convolution algorithms once per shape, and
//! the warm-up runs each one.
//!
//! Deadlines (the caller's `grpc-timeout`, [`sekisho_filter_sdk::deadline`]): under
//! overload a queue otherwise fills with work that is answered after its caller has
//! given up, and then every answer comes too late. So an item is refused at once when
//! the queue ahead of it would keep it past its deadline (an estimate: the batches the
//! queued items make and what is left of the batches running, shared among the workers,
//! each batch taking a fixed time and one for each input value, fitted to the recent
//! batches ([`RunCost`]): by values, not items, since face-detect's inputs differ in size
//! a hundredfold, and not by values alone, since a GPU runs 32 items in little more time
//! than one),
//! is answered at once with the same error when its deadline would pass before it could
//! run alone, and is dropped unrun when its caller has gone; and a batch grows only while
//! it would still end before the earliest deadline in it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use ort::session::Session;
use ort::value::Tensor;

use crate::work::{PROBE_AFTER, RunCost, Running};

#[derive(Debug, Clone)]
pub struct BatchOptions {
    pub max_batch: usize,
    /// How long the first item of a batch waits for more after taking what is queued
    /// (zero: not at all).
    pub max_wait: Duration,
    /// Items waiting at most, across workers; beyond it callers are told to retry.
    pub queue: usize,
    /// Input values (all a batch's items together) one batch holds at most: the memory
    /// a model takes grows with them. An item larger than this runs alone.
    pub max_batch_elements: usize,
    /// The batch sizes the model runs at.
    pub sizes: BatchSizes,
}

/// The batch sizes a model runs at (`--batch-sizes`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BatchSizes {
    /// Powers of two (and the most a batch holds) on CUDA, every size on the CPU, where
    /// a row of padding costs as much as an item.
    #[default]
    Auto,
    /// Every size from 1 to the most: no padding.
    Every,
    /// These sizes (and the most a batch holds): a batch runs at the smallest of them
    /// that holds it, padded.
    Only(Vec<usize>),
}

impl BatchSizes {
    /// The sizes a batch of at most `max_batch` items runs at, ascending, `max_batch`
    /// the last; empty for every size. `Auto` must be resolved first (it is taken as
    /// `Every`). A size above `max_batch` is refused.
    pub fn sizes(&self, max_batch: usize) -> Result<Vec<usize>, String> {
        let max_batch = max_batch.max(1);
        match self {
            BatchSizes::Auto | BatchSizes::Every => Ok(Vec::new()),
            BatchSizes::Only(list) => {
                if let Some(over) = list.iter().find(|&&s| s > max_batch) {
                    return Err(format!(
                        "batch size {over} is over the most a batch holds ({max_batch}, \
                         --max-batch)"
                    ));
                }
                let mut sizes: Vec<usize> = list.iter().copied().filter(|&s| s > 0).collect();
                sizes.push(max_batch);
                sizes.sort_unstable();
                sizes.dedup();
                Ok(sizes)
            }
        }
    }

    /// Powers of two up to `max_batch`, and `max_batch`.
    pub fn powers_of_two(max_batch: usize) -> BatchSizes {
        BatchSizes::Only(
            std::iter::successors(Some(1usize), |s| s.checked_mul(2))
                .take_while(|&s| s < max_batch)
                .collect(),
        )
    }

    /// How `Describe` gives them.
    pub fn describe(sizes: &[usize]) -> String {
        if sizes.is_empty() {
            return "every".to_owned();
        }
        sizes
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The size a batch of `n` items (at most `most`, the most a batch of their shape holds)
/// runs at: the smallest of `sizes` (ascending) from `n` up to `most`, else `most`; `n`
/// itself when `sizes` is empty (every size).
pub fn run_size(n: usize, most: usize, sizes: &[usize]) -> usize {
    if sizes.is_empty() {
        return n;
    }
    sizes
        .iter()
        .copied()
        .find(|&s| s >= n && s <= most)
        .unwrap_or(most.max(n))
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_batch: 8,
            max_wait: Duration::ZERO,
            queue: 256,
            max_batch_elements: usize::MAX,
            sizes: BatchSizes::Auto,
        }
    }
}

/// One output of one item: its shape without the batch dimension, and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

#[derive(Debug, thiserror::Error, Clone)]
pub enum BatchError {
    /// A full queue (its length), and when it should have room again.
    #[error("the filter is busy ({0} calls queued); retry")]
    Busy(usize, Duration),
    #[error("the model failed: {0}")]
    Failed(String),
    #[error("the model's workers have stopped")]
    Stopped,
    /// Why, and when a call with the same time left should fit (zero: not known, or
    /// never, when the call alone takes longer than it had).
    #[error("the filter cannot answer before this call's deadline: {0}")]
    TooLate(String, Duration),
}

/// A full queue or one too long for the deadline is load being shed (RESOURCE_EXHAUSTED,
/// with, as its retry pushback, the time until the queue should have room for a call
/// like it: the gateway tries another replica while time is left, sends this one nothing
/// meanwhile, and does not eject it for it); stopped workers are worth retrying elsewhere
/// too (UNAVAILABLE); a model failure is not (INTERNAL).
impl From<BatchError> for sekisho_filter_sdk::FilterError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Busy(_, after) | BatchError::TooLate(_, after) => Self::Overloaded {
                message: e.to_string(),
                retry_after: (!after.is_zero()).then_some(after),
            },
            BatchError::Stopped => Self::Unavailable(e.to_string()),
            BatchError::Failed(m) => Self::Internal(m),
        }
    }
}

struct Job {
    shape: Vec<i64>,
    data: Vec<f32>,
    queued: Instant,
    deadline: Option<Instant>,
    /// Let through although the estimate said it would be late, to measure again
    /// ([`crate::work::PROBE_AFTER`]): it runs whatever its deadline.
    probe: bool,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Output>, BatchError>>,
}

/// Batches and items run, for the mean batch size; items dropped unrun because their
/// caller had gone, or answered unrun because their deadline would pass first; items
/// refused on arrival for their deadline; and the estimate of a batch's time.
#[derive(Debug, Default)]
pub struct BatchStats {
    pub batches: AtomicU64,
    pub items: AtomicU64,
    pub abandoned: AtomicU64,
    pub expired: AtomicU64,
    pub refused_late: AtomicU64,
    /// Rows run as padding, to bring a batch to one of the allowed sizes.
    pub padding: AtomicU64,
    /// Items let through although the estimate would have refused them, the filter
    /// being idle and the estimate not measured for a while.
    pub probes: AtomicU64,
    /// What a batch takes: a fixed time and one for each input value, fitted to recent
    /// batches; zero until the first (or the model's check before serving).
    pub cost: RunCost,
    /// The batches running now.
    pub running: Running,
    /// What admission adds to the estimate of the work ahead.
    pub margin: crate::work::Margin,
}

impl BatchStats {
    /// What one batch of `values` input values takes, as recent batches went (zero: not
    /// known yet).
    pub fn time_for(&self, values: usize) -> Duration {
        self.cost.time_for(values)
    }

    /// Sets the estimate: `d` for `values` input values, all of it per value (tests).
    pub fn seed(&self, d: Duration, values: usize) {
        self.cost.seed(d, values);
    }
}

pub struct Batcher {
    tx: Sender<Job>,
    queue: usize,
    model: String,
    idle: Arc<AtomicUsize>,
    workers: usize,
    /// Input values of the items in the queue (taken off it by a worker, they no longer
    /// count).
    queued_values: Arc<AtomicU64>,
    /// Items, and input values, one batch holds at most.
    max_batch: usize,
    max_batch_elements: usize,
    /// How many rows an item run alone takes (1, unless `sizes` pads it).
    alone_rows: usize,
    pub stats: Arc<BatchStats>,
}

/// Batch sizes run, by model.
pub const BATCH_SIZE: &str = "sekisho_filter_batch_size";
/// Time from an item's arrival to the start of the batch that runs it, by model.
pub const QUEUE_WAIT: &str = "sekisho_filter_queue_wait_seconds";
/// Time one batch spends in ONNX Runtime, by model.
pub const INFERENCE: &str = "sekisho_filter_inference_seconds";
/// Rows of padding run to bring batches to an allowed size (`--batch-sizes`), by model.
pub const BATCH_PADDING_TOTAL: &str = "sekisho_filter_batch_padding_total";
/// Items refused because the queue was full, by model.
pub const QUEUE_FULL_TOTAL: &str = "sekisho_filter_queue_full_total";
/// Items queued but not run, by model and reason: `caller_gone` (the call had ended: its
/// deadline passed, or it was cancelled), `deadline` (it would have ended before the item
/// could run; answered RESOURCE_EXHAUSTED at once).
pub const ABANDONED_TOTAL: &str = "sekisho_filter_abandoned_total";
/// Items refused on arrival (RESOURCE_EXHAUSTED) because the queue ahead would keep them past
/// their deadline, by model.
pub const DEADLINE_REFUSED_TOTAL: &str = "sekisho_filter_deadline_refused_total";
/// The estimate of one run's time that admission uses, by model and part: `fixed`
/// (seconds each run takes whatever its size) and `per_value` (seconds each input value
/// adds).
pub const RUN_COST: &str = "sekisho_filter_run_cost_seconds";
/// Items (or calls) let through although the estimate would have refused them, the filter
/// idle and nothing measured for [`PROBE_AFTER`], by model.
pub const PROBES_TOTAL: &str = "sekisho_filter_probes_total";
/// How much longer than its estimate admission takes the work ahead of a call to be
/// (`work::Margin`: 0 with no calls answered unrun of late), by model.
pub const ADMISSION_MARGIN: &str = "sekisho_filter_admission_margin";

/// Help texts for the batcher's metrics.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(BATCH_SIZE, "Items per model run, by model.");
    describe_histogram!(
        QUEUE_WAIT,
        "Time from an item's arrival to the start of its batch, by model."
    );
    describe_histogram!(
        INFERENCE,
        "Time one batch spends in ONNX Runtime, by model."
    );
    describe_counter!(
        BATCH_PADDING_TOTAL,
        "Rows of padding (copies of a batch's last item) run to bring batches to an allowed size (--batch-sizes), by model."
    );
    describe_counter!(
        QUEUE_FULL_TOTAL,
        "Items refused with RESOURCE_EXHAUSTED because the model's queue was full, by model."
    );
    describe_counter!(
        ABANDONED_TOTAL,
        "Items queued but not run, by model and reason: caller_gone (the call had ended), deadline (it would end before the item could run)."
    );
    describe_counter!(
        DEADLINE_REFUSED_TOTAL,
        "Items refused with RESOURCE_EXHAUSTED on arrival because the queue ahead would keep them past their deadline, by model."
    );
    describe_gauge!(
        RUN_COST,
        "The estimate of one run's (a batch's, or a call's) time that admission uses, fitted to recent runs, by model and part: fixed (seconds per run), per_value (seconds per input value)."
    );
    describe_gauge!(
        ADMISSION_MARGIN,
        "How much longer than its estimate admission takes the work ahead of a call to be (0.2: 20% longer), raised by calls admitted and then answered unrun for their deadline, lowered by calls run, by model."
    );
    describe_counter!(
        PROBES_TOTAL,
        "Items let through although the estimate would have refused them for their deadline, the filter idle and nothing measured for a second: only runs correct the estimate, by model."
    );
}

impl Batcher {
    /// Starts one worker thread per session. `model` names the model in metrics,
    /// `input` is the model's input name, `outputs` the outputs returned, in that order.
    pub fn start(
        model: &str,
        sessions: Vec<Session>,
        input: &str,
        outputs: &[&str],
        opts: BatchOptions,
    ) -> Batcher {
        describe_metrics();
        let (tx, rx) = crossbeam_channel::bounded::<Job>(opts.queue.max(1));
        let stats = Arc::new(BatchStats::default());
        let idle = Arc::new(AtomicUsize::new(0));
        let workers = sessions.len().max(1);
        let queued_values = Arc::new(AtomicU64::new(0));
        // `model::serve` resolves `Auto` (it knows the provider) and refuses sizes over the
        // most; here either is every size.
        let sizes = opts.sizes.sizes(opts.max_batch).unwrap_or_default();
        for (i, session) in sessions.into_iter().enumerate() {
            let w = Worker {
                model: model.to_owned(),
                session,
                input: input.to_owned(),
                outputs: outputs.iter().map(|s| (*s).to_owned()).collect(),
                rx: rx.clone(),
                opts: opts.clone(),
                stats: stats.clone(),
                idle: idle.clone(),
                queued_values: queued_values.clone(),
                held: VecDeque::new(),
                sizes: sizes.clone(),
            };
            std::thread::Builder::new()
                .name(format!("onnx-worker-{i}"))
                .spawn(move || w.run())
                .expect("spawning a model worker thread");
        }
        Batcher {
            tx,
            queue: opts.queue,
            model: model.to_owned(),
            idle,
            workers,
            queued_values,
            max_batch: opts.max_batch.max(1),
            max_batch_elements: opts.max_batch_elements.max(1),
            alone_rows: run_size(1, opts.max_batch.max(1), &sizes),
            stats,
        }
    }

    /// Runs one item (`shape` without the batch dimension, row-major `data`), within the
    /// deadline of the call being served, if it has one.
    pub async fn run(&self, shape: Vec<i64>, data: Vec<f32>) -> Result<Vec<Output>, BatchError> {
        let deadline = sekisho_filter_sdk::deadline();
        let probe = self.admit(deadline, data.len())?;
        let values = data.len() as u64;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            shape,
            data,
            queued: Instant::now(),
            deadline,
            probe,
            reply,
        };
        // Counted before it can be taken off the queue (and uncounted then).
        self.queued_values.fetch_add(values, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.queued_values.fetch_sub(values, Ordering::Relaxed);
                metrics::counter!(QUEUE_FULL_TOTAL, "model" => self.model.clone()).increment(1);
                // Room for one more once one place's share of the queue has run.
                let room = self.drain() / self.queue.max(1) as u32;
                return Err(BatchError::Busy(self.queue, room));
            }
            Err(TrySendError::Disconnected(_)) => {
                self.queued_values.fetch_sub(values, Ordering::Relaxed);
                return Err(BatchError::Stopped);
            }
        }
        rx.await.map_err(|_| BatchError::Stopped)?
    }

    /// Refuses an item of `values` input values that the queue ahead of it would keep
    /// past `deadline`: the batches queued and what is left of the batches running, shared
    /// among the workers (nothing, with the queue empty and a worker idle), then a batch
    /// of its own, as recent batches went. Filters call it before decoding too (with 0
    /// values, not yet known), so as not to decode for nothing. With nothing ahead and no
    /// batch measured for [`PROBE_AFTER`], an item it would refuse is let through
    /// instead, to measure again (`Ok(true)`): only runs correct an estimate.
    pub fn admit(&self, deadline: Option<Instant>, values: usize) -> Result<bool, BatchError> {
        let Some(deadline) = deadline else {
            return Ok(false);
        };
        if !self.stats.cost.known() {
            return Ok(false);
        }
        let ahead = if self.queued_values.load(Ordering::Relaxed) == 0 && self.idle_workers() > 0 {
            Duration::ZERO
        } else {
            self.stats.margin.apply(self.drain())
        };
        let own = self.stats.time_for(values * self.alone_rows);
        let wait = ahead + own;
        let left = deadline.saturating_duration_since(Instant::now());
        if wait <= left {
            return Ok(false);
        }
        // Before decoding (no values yet) it only looks: the same call's check with its
        // values takes the chance.
        let probe = || match values {
            0 => self.stats.cost.would_probe(PROBE_AFTER),
            _ => self.stats.cost.probe(PROBE_AFTER),
        };
        if ahead.is_zero() && probe() {
            if values > 0 {
                self.stats.probes.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(PROBES_TOTAL, "model" => self.model.clone()).increment(1);
            }
            return Ok(true);
        }
        self.stats.refused_late.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(DEADLINE_REFUSED_TOTAL, "model" => self.model.clone()).increment(1);
        Err(BatchError::TooLate(
            format!(
                "{} items queued ahead, ~{:.1} ms of work on {} worker(s), then ~{:.1} ms for \
             this one; {:.1} ms left",
                self.tx.len(),
                ahead.as_secs_f64() * 1e3,
                self.workers,
                own.as_secs_f64() * 1e3,
                left.as_secs_f64() * 1e3
            ),
            fits_after(ahead, own, left),
        ))
    }

    /// When the work queued now should be done: the batches its items make (full ones:
    /// a queue that long is taken a batch at a time) and what is left of the batches
    /// running, shared among the workers.
    fn drain(&self) -> Duration {
        let values = self.queued_values.load(Ordering::Relaxed) as usize;
        let batches = self
            .tx
            .len()
            .div_ceil(self.max_batch)
            .max(values.div_ceil(self.max_batch_elements));
        let cost = &self.stats.cost;
        let running = self.stats.running.left(cost, Instant::now());
        (cost.time_for_runs(batches, values) + running) / self.workers.max(1) as u32
    }

    /// Sets the estimate of a batch's time from two runs (the model's check before
    /// serving: one item, and a full batch), and publishes it.
    pub fn seed_cost(&self, one: (Duration, usize), full: (Duration, usize)) {
        self.stats.cost.seed_two(one, full);
        self.stats.cost.publish(&self.model);
    }

    /// Workers waiting for an item now.
    pub fn idle_workers(&self) -> usize {
        self.idle.load(Ordering::SeqCst)
    }

    /// Mean items per batch so far.
    pub fn mean_batch(&self) -> f64 {
        let b = self.stats.batches.load(Ordering::Relaxed);
        let i = self.stats.items.load(Ordering::Relaxed);
        if b == 0 { 0.0 } else { i as f64 / b as f64 }
    }
}

/// When a call refused for its deadline would fit, had it the same time `left`: once
/// the queue `ahead` of it has run down by what it lacked. Zero (no pushback) when
/// nothing is ahead or it alone takes longer than it has: waiting would not help.
pub(crate) fn fits_after(ahead: Duration, own: Duration, left: Duration) -> Duration {
    if ahead.is_zero() || own >= left {
        return Duration::ZERO;
    }
    (ahead + own).saturating_sub(left)
}

/// Reasons an item is not run (`sekisho_filter_abandoned_total`).
const GONE: &str = "caller_gone";
const EXPIRED: &str = "deadline";

/// A batch being collected, and the earliest deadline among its jobs.
struct Batch {
    jobs: Vec<Job>,
    slack: Option<Instant>,
}

struct Worker {
    model: String,
    session: Session,
    input: String,
    outputs: Vec<String>,
    rx: Receiver<Job>,
    opts: BatchOptions,
    stats: Arc<BatchStats>,
    /// Workers waiting for a job, this one included while it waits.
    idle: Arc<AtomicUsize>,
    queued_values: Arc<AtomicU64>,
    /// Jobs taken while collecting a batch of another shape: they start the next one.
    held: VecDeque<Job>,
    /// The batch sizes the model runs at, ascending (empty: every size).
    sizes: Vec<usize>,
}

impl Worker {
    fn run(mut self) {
        loop {
            let first = match self.held.pop_front() {
                Some(j) => j,
                None => {
                    self.idle.fetch_add(1, Ordering::SeqCst);
                    let job = self.rx.recv();
                    self.idle.fetch_sub(1, Ordering::SeqCst);
                    match job {
                        Ok(j) => self.taken(j),
                        Err(_) => return, // every sender is gone
                    }
                }
            };
            if first.reply.is_closed() {
                self.abandon(1, GONE);
                continue;
            }
            if !first.probe && self.too_late(&first, self.run_values(1, first.data.len())) {
                self.expire(first);
                continue;
            }
            let most = self.most(first.data.len());
            let mut batch = Batch {
                slack: first.deadline,
                jobs: vec![first],
            };
            // Held jobs of the same shape join first.
            let mut i = 0;
            while i < self.held.len() && batch.jobs.len() < most {
                if self.held[i].shape == batch.jobs[0].shape {
                    let j = self.held.remove(i).expect("index is in range");
                    if let Some(j) = self.offer(&mut batch, j) {
                        self.held.insert(i, j);
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            // What is queued already joins at once, less one item for each idle worker,
            // which runs it now, alongside; only with a `max_wait` does the batch then
            // wait for more.
            let deadline = Instant::now() + self.opts.max_wait;
            while batch.jobs.len() < most {
                let queued = self.rx.len();
                if queued > 0 && queued <= self.idle.load(Ordering::SeqCst) {
                    break;
                }
                let next = match self.rx.try_recv() {
                    Ok(j) => Some(self.taken(j)),
                    Err(TryRecvError::Empty) if !self.opts.max_wait.is_zero() => {
                        self.rx.recv_deadline(deadline).ok().map(|j| self.taken(j))
                    }
                    Err(_) => None,
                };
                match next {
                    Some(j) if j.shape == batch.jobs[0].shape => {
                        if let Some(j) = self.offer(&mut batch, j) {
                            // It would make the batch end past a deadline: it starts the next.
                            self.held.push_back(j);
                            break;
                        }
                    }
                    Some(j) => self.held.push_back(j),
                    None => break,
                }
            }
            let mut batch = batch.jobs;
            // Callers that went while the batch was being collected get nothing either.
            let before = batch.len();
            batch.retain(|j| !j.reply.is_closed());
            self.abandon(before - batch.len(), GONE);
            if batch.is_empty() {
                continue;
            }
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats
                .items
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            crate::work::Margin::publish(&self.model, self.stats.margin.ran(batch.len()));
            let started = Instant::now();
            let wait = metrics::histogram!(QUEUE_WAIT, "model" => self.model.clone());
            for job in &batch {
                wait.record(started.duration_since(job.queued).as_secs_f64());
            }
            metrics::histogram!(BATCH_SIZE, "model" => self.model.clone())
                .record(batch.len() as f64);
            let rows = run_size(batch.len(), most, &self.sizes);
            debug_assert_eq!(
                self.run_values(batch.len(), batch[0].data.len()),
                rows * batch[0].data.len()
            );
            if rows > batch.len() {
                let padding = (rows - batch.len()) as u64;
                self.stats.padding.fetch_add(padding, Ordering::Relaxed);
                metrics::counter!(BATCH_PADDING_TOTAL, "model" => self.model.clone())
                    .increment(padding);
            }
            // What the model runs, padding included.
            let values = batch[0].data.len() * rows;
            self.stats.running.begin(values, started);
            let result = self.infer(&mut batch, rows);
            self.stats.running.end(values, started);
            self.stats.cost.record(started.elapsed(), values);
            self.stats.cost.publish(&self.model);
            metrics::histogram!(INFERENCE, "model" => self.model.clone())
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(per_item) => {
                    for (job, outs) in batch.into_iter().zip(per_item) {
                        let _ = job.reply.send(Ok(outs));
                    }
                }
                Err(e) => {
                    for job in batch {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Counts `n` items not run, for `reason`.
    fn abandon(&self, n: usize, reason: &'static str) {
        if n > 0 {
            let count = match reason {
                GONE => &self.stats.abandoned,
                _ => &self.stats.expired,
            };
            count.fetch_add(n as u64, Ordering::Relaxed);
            metrics::counter!(ABANDONED_TOTAL, "model" => self.model.clone(), "reason" => reason)
                .increment(n as u64);
            if reason == EXPIRED {
                crate::work::Margin::publish(&self.model, self.stats.margin.expired(n));
            }
        }
    }

    /// A job just taken off the queue: its values no longer count as queued.
    fn taken(&self, job: Job) -> Job {
        self.queued_values
            .fetch_sub(job.data.len() as u64, Ordering::Relaxed);
        job
    }

    /// The most items of `per_item` input values each one batch holds (items of one
    /// shape have as many values each; at least one).
    fn most(&self, per_item: usize) -> usize {
        (self.opts.max_batch_elements / per_item.max(1)).clamp(1, self.opts.max_batch.max(1))
    }

    /// The input values a batch of `items` items of `per_item` values each runs, the
    /// padding to an allowed batch size included.
    fn run_values(&self, items: usize, per_item: usize) -> usize {
        per_item * run_size(items, self.most(per_item), &self.sizes)
    }

    /// Whether `job`'s deadline would pass before a batch of `values` input values could
    /// end.
    fn too_late(&self, job: &Job, values: usize) -> bool {
        match job.deadline {
            Some(d) if self.stats.cost.known() => {
                d.saturating_duration_since(Instant::now()) < self.stats.time_for(values)
            }
            _ => false,
        }
    }

    /// Answers `job` at once: its deadline would pass before it could run.
    fn expire(&self, job: Job) {
        self.abandon(1, EXPIRED);
        let _ = job.reply.send(Err(BatchError::TooLate(
            format!(
                "it waited {:.1} ms in the queue, and running it takes ~{:.1} ms",
                job.queued.elapsed().as_secs_f64() * 1e3,
                self.stats
                    .time_for(self.run_values(1, job.data.len()))
                    .as_secs_f64()
                    * 1e3
            ),
            // Its own deadline passed in the queue: nothing to say of another's.
            Duration::ZERO,
        )));
    }

    /// Adds `job` (of the batch's shape) to `batch` when the batch with it would still end
    /// before the earliest deadline in it; returns it otherwise. A job whose caller has
    /// gone, or whose deadline would pass before it could run alone, is settled here.
    fn offer(&self, batch: &mut Batch, job: Job) -> Option<Job> {
        if job.reply.is_closed() {
            self.abandon(1, GONE);
            return None;
        }
        if !job.probe && self.too_late(&job, self.run_values(1, job.data.len())) {
            self.expire(job);
            return None;
        }
        let earliest = match (batch.slack, job.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let values = self.run_values(batch.jobs.len() + 1, job.data.len());
        if let Some(d) = earliest
            && d.saturating_duration_since(Instant::now()) < self.stats.time_for(values)
        {
            return Some(job);
        }
        batch.slack = earliest;
        batch.jobs.push(job);
        None
    }

    /// Runs the batch as `rows` rows (at least its items; the last item's input repeated
    /// in the rest); the jobs' input data is moved into the tensor, not copied, when the
    /// batch is a single item run alone.
    fn infer(&mut self, batch: &mut [Job], rows: usize) -> Result<Vec<Vec<Output>>, BatchError> {
        let n = batch.len();
        let data: Vec<f32> = if n == 1 && rows == 1 {
            std::mem::take(&mut batch[0].data)
        } else {
            let mut d = Vec::with_capacity(batch[0].data.len() * rows);
            for j in batch.iter() {
                d.extend_from_slice(&j.data);
            }
            let last = &batch[n - 1].data;
            for _ in n..rows {
                d.extend_from_slice(last);
            }
            d
        };
        let outputs: Vec<&str> = self.outputs.iter().map(String::as_str).collect();
        // The padding's answers are nobody's.
        run_batch(
            &mut self.session,
            &self.input,
            &outputs,
            &batch[0].shape,
            (rows, n),
            data,
        )
    }
}

/// Runs `rows.0` items of shape `item` (their values one after the other in `data`) as
/// one batch and splits every output into the rows of the first `rows.1` items (the
/// rest are padding).
pub(crate) fn run_batch(
    session: &mut Session,
    input: &str,
    outputs: &[&str],
    item: &[i64],
    rows: (usize, usize),
    data: Vec<f32>,
) -> Result<Vec<Vec<Output>>, BatchError> {
    let (n, keep) = (rows.0, rows.1.min(rows.0));
    let mut shape = Vec::with_capacity(item.len() + 1);
    shape.push(n as i64);
    shape.extend_from_slice(item);
    let failed = |e: ort::Error| BatchError::Failed(e.to_string());
    let tensor = Tensor::from_array((shape, data)).map_err(failed)?;
    let ran = session.run(ort::inputs![input => tensor]).map_err(failed)?;
    let mut per_item: Vec<Vec<Output>> = (0..keep).map(|_| Vec::new()).collect();
    for name in outputs {
        let value = ran
            .get(name)
            .ok_or_else(|| BatchError::Failed(format!("the model has no output `{name}`")))?;
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(failed)?;
        if shape.first().copied() != Some(n as i64) {
            return Err(BatchError::Failed(format!(
                "output `{name}` has shape {shape:?}, not a batch of {n}"
            )));
        }
        let per = data.len() / n;
        let item_shape = shape[1..].to_vec();
        for (i, slot) in per_item.iter_mut().enumerate() {
            slot.push(Output {
                shape: item_shape.clone(),
                data: data[i * per..(i + 1) * per].to_vec(),
            });
        }
    }
    Ok(per_item)
}

#[cfg(test)]
mod tests {
    use super::{BatchSizes, run_size};

    #[test]
    fn a_batch_runs_at_the_smallest_allowed_size_that_holds_it() {
        let sizes = BatchSizes::powers_of_two(32).sizes(32).unwrap();
        assert_eq!(sizes, [1, 2, 4, 8, 16, 32]);
        let runs: Vec<usize> = (1..=32).map(|n| run_size(n, 32, &sizes)).collect();
        assert_eq!(&runs[..9], [1, 2, 4, 4, 8, 8, 8, 8, 16]);
        assert!(runs[16..].iter().all(|&r| r == 32), "{runs:?}");
        // Every size: no padding.
        assert_eq!(BatchSizes::Every.sizes(32).unwrap(), Vec::<usize>::new());
        assert!((1..=32).all(|n| run_size(n, 32, &[]) == n));
        // --max-batch is always one; unsorted and repeated sizes are fine.
        let sizes = BatchSizes::Only(vec![8, 3, 3]).sizes(12).unwrap();
        assert_eq!(sizes, [3, 8, 12]);
        assert_eq!(run_size(9, 12, &sizes), 12);
        // A shape whose batches hold fewer items (their input values) pads up to that
        // most, never past it.
        assert_eq!(run_size(4, 6, &sizes), 6);
        assert_eq!(run_size(2, 6, &sizes), 3);
        assert_eq!(BatchSizes::powers_of_two(1).sizes(1).unwrap(), [1]);
        assert_eq!(
            BatchSizes::powers_of_two(12).sizes(12).unwrap(),
            [1, 2, 4, 8, 12]
        );
        let e = BatchSizes::Only(vec![4, 16]).sizes(8).unwrap_err();
        assert!(
            e.contains("batch size 16 is over the most a batch holds (8"),
            "{e}"
        );
        assert_eq!(BatchSizes::describe(&[1, 2, 4]), "1,2,4");
        assert_eq!(BatchSizes::describe(&[]), "every");
    }
}
