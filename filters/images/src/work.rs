//! Work with no model to batch (qr-code's search): each call runs alone on one of a few
//! slots (by default two per core), the others wait their turn, and the same deadline
//! rules as the model batcher ([`crate::batch`]) keep the queue from filling with work
//! nobody will read. Without them a filter under more calls than it can serve starts
//! every call at once, on more threads than cores, and answers each one too late.
//!
//! A call is refused at once (RESOURCE_EXHAUSTED) when the queue is full, or when the
//! work ahead of it (what waits, and what is left of the calls running), shared among
//! the slots, and then its own would keep it past its deadline; the estimate is a time
//! for each call and one for each input value (pixel), fitted to the recent calls
//! ([`RunCost`]). A call waits
//! only while a slot could still come in time for its own work, and is answered unrun
//! once it cannot; one whose caller goes while it waits is dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::batch::{
    ABANDONED_TOTAL, BatchError, DEADLINE_REFUSED_TOTAL, PROBES_TOTAL, QUEUE_FULL_TOTAL, QUEUE_WAIT,
};

/// The time one run takes (one batch, or one call), as recent runs went: a fixed part
/// for each run and a part for each input value, `fixed + per_value × values`. A GPU
/// runs a batch of 32 in little more time than a batch of one, and a small image has
/// costs a large one shares, so one time per value would misjudge every size but the
/// last runs': refuse a queue of single items that one batch will clear, or let a batch
/// grow past a deadline.
///
/// Two fits: the line's shape (how the time grows with the values: its fixed part and
/// slope) by least squares over the last ~10 runs (each older one weighing 9/10 of
/// what it did), refitted only while their sizes spread enough to tell the two parts
/// apart and the slope comes out at least zero; and its level by the last ~5 runs (each
/// older one 4/5), as the moving average before it did: the shape is scaled to go
/// through their mean, so that the estimate follows a model grown slower (another
/// process on its cores) as fast as before. Until the runs fit a shape it is the one
/// from the check before serving ([`RunCost::seed_two`]), or all per value. Zero until
/// the first run or seed.
#[derive(Debug, Default)]
pub struct RunCost {
    /// Seconds, as f64 bits, read without a lock.
    fixed: AtomicU64,
    per_value: AtomicU64,
    fit: Mutex<Fit>,
}

#[derive(Debug, Default)]
struct Fit {
    /// For the level.
    recent: RunSums,
    /// For the shape.
    longer: RunSums,
    /// The last shape fitted: seconds per run, and per value.
    shape: Option<(f64, f64)>,
    /// When the last run (or seed) was folded in, or a call let through to measure
    /// again ([`RunCost::probe`]).
    last: Option<Instant>,
}

/// Weighted sums over runs: weight, values, seconds, values², values × seconds.
#[derive(Debug, Default, Clone, Copy)]
struct RunSums {
    w: f64,
    v: f64,
    t: f64,
    vv: f64,
    vt: f64,
}

/// How long an idle filter whose estimate refuses every call goes without a run before
/// it lets one through, however short its deadline, to measure again: an estimate once
/// too high (a slow moment, a cold start) would otherwise refuse calls for good, since
/// only runs correct it. At most one such call a second, on a worker or slot that would
/// otherwise idle.
pub const PROBE_AFTER: Duration = Duration::from_secs(1);

/// What the older runs keep of their weight at each new one, in the level's fit and
/// the shape's.
const KEEP_LEVEL: f64 = 0.8;
const KEEP_SHAPE: f64 = 0.9;
/// The runs' sizes must spread by this much (their standard deviation over their mean)
/// before the shape is refitted: below it, noise in the times would set it.
const SPREAD: f64 = 0.1;

impl RunSums {
    fn add(&mut self, keep: f64, v: f64, t: f64) {
        for s in [
            &mut self.w,
            &mut self.v,
            &mut self.t,
            &mut self.vv,
            &mut self.vt,
        ] {
            *s *= keep;
        }
        self.w += 1.0;
        self.v += v;
        self.t += t;
        self.vv += v * v;
        self.vt += v * t;
    }

    /// The mean run: its values and seconds.
    fn mean(&self) -> (f64, f64) {
        (self.v / self.w, self.t / self.w)
    }

    /// The least-squares line (seconds per run, per value), if the sizes spread enough
    /// and the slope is not negative (a larger run never takes less: such a fit is
    /// noise, or older runs at another level); a fixed part below zero is taken as
    /// none.
    fn line(&self) -> Option<(f64, f64)> {
        let (mv, mt) = self.mean();
        let var = self.vv / self.w - mv * mv;
        // NaN (an overflowing time) is no fit either.
        if var.is_nan() || var <= (SPREAD * mv) * (SPREAD * mv) {
            return None;
        }
        let slope = (self.vt / self.w - mv * mt) / var;
        if slope.is_nan() || slope < 0.0 {
            return None;
        }
        let fixed = mt - slope * mv;
        Some(if fixed < 0.0 {
            (0.0, mt / mv)
        } else {
            (fixed, slope)
        })
    }
}

impl Fit {
    fn add(&mut self, v: f64, t: f64) {
        self.last = Some(Instant::now());
        self.recent.add(KEEP_LEVEL, v, t);
        self.longer.add(KEEP_SHAPE, v, t);
        if let Some(shape) = self.longer.line() {
            self.shape = Some(shape);
        }
    }

    /// Starts over from `runs` (a seed): they set the level, and two of different sizes
    /// the shape, the line through both (all of it fixed if the larger run took less).
    fn seeded(runs: &[(Duration, usize)]) -> Fit {
        let mut fit = Fit {
            last: Some(Instant::now()),
            ..Fit::default()
        };
        for (d, values) in runs {
            fit.recent
                .add(1.0, (*values).max(1) as f64, d.as_secs_f64());
        }
        // Two runs, with the weight of one each: the least-squares line is the line
        // through both.
        if let [(_, v1), (_, v2)] = runs
            && v1 != v2
        {
            fit.shape = fit.recent.line().or(Some((fit.recent.mean().1, 0.0)));
        }
        fit
    }

    /// The shape, scaled to go through the recent runs' mean.
    fn estimate(&mut self) -> (f64, f64) {
        let (mv, mt) = self.recent.mean();
        let (fixed, per_value) = *self.shape.get_or_insert((0.0, mt / mv));
        let at = fixed + per_value * mv;
        let k = if at > 0.0 { mt / at } else { 1.0 };
        (fixed * k, per_value * k)
    }
}

fn secs(bits: &AtomicU64) -> f64 {
    f64::from_bits(bits.load(Ordering::Relaxed))
}

impl RunCost {
    /// Whether there is an estimate yet.
    pub fn known(&self) -> bool {
        self.fixed() > 0.0 || self.per_value() > 0.0
    }

    /// Seconds each run takes whatever its size.
    pub fn fixed(&self) -> f64 {
        secs(&self.fixed)
    }

    /// Seconds each input value adds to a run.
    pub fn per_value(&self) -> f64 {
        secs(&self.per_value)
    }

    /// What one run of `values` input values takes.
    pub fn time_for(&self, values: usize) -> Duration {
        self.time_for_runs(1, values)
    }

    /// What `runs` runs of `values` input values in all take.
    pub fn time_for_runs(&self, runs: usize, values: usize) -> Duration {
        let s = runs as f64 * self.fixed() + values as f64 * self.per_value();
        Duration::from_secs_f64(s.max(0.0))
    }

    /// Starts over from one measure, all of it per value: `d` for `values` input values
    /// (tests).
    pub fn seed(&self, d: Duration, values: usize) {
        self.start(&[(d, values)]);
    }

    /// Starts over from two runs of different sizes (the check before serving: one item,
    /// and a full batch): the line through both.
    pub fn seed_two(&self, one: (Duration, usize), two: (Duration, usize)) {
        self.start(&[one, two]);
    }

    fn start(&self, runs: &[(Duration, usize)]) {
        let mut fit = self.fit.lock().unwrap_or_else(|e| e.into_inner());
        *fit = Fit::seeded(runs);
        let (fixed, per_value) = fit.estimate();
        self.store(fixed, per_value);
    }

    /// Whether a call the estimate would refuse may run to measure again: true when no
    /// run has been folded in (nor another such call let through) for `after`, and then
    /// not again for `after`. An estimate that refuses every call gets no new runs to
    /// correct it ([`PROBE_AFTER`]).
    pub fn probe(&self, after: Duration) -> bool {
        self.probe_or_look(after, true)
    }

    /// Whether [`RunCost::probe`] would let a call through now (without taking the
    /// chance: for the check before decoding, which the same call's later one follows).
    pub fn would_probe(&self, after: Duration) -> bool {
        self.probe_or_look(after, false)
    }

    fn probe_or_look(&self, after: Duration, take: bool) -> bool {
        let mut fit = self.fit.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if fit
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < after)
        {
            return false;
        }
        if take {
            fit.last = Some(now);
        }
        true
    }

    /// Folds in a run: `d` for `values` input values.
    pub fn record(&self, d: Duration, values: usize) {
        let mut fit = self.fit.lock().unwrap_or_else(|e| e.into_inner());
        fit.add(values.max(1) as f64, d.as_secs_f64());
        let (fixed, per_value) = fit.estimate();
        self.store(fixed, per_value);
    }

    fn store(&self, fixed: f64, per_value: f64) {
        self.fixed.store(fixed.to_bits(), Ordering::Relaxed);
        self.per_value.store(per_value.to_bits(), Ordering::Relaxed);
    }

    /// Sets the gauges of the estimate (`sekisho_filter_run_cost_seconds`) for `model`.
    pub fn publish(&self, model: &str) {
        metrics::gauge!(crate::batch::RUN_COST, "model" => model.to_owned(), "part" => "fixed")
            .set(self.fixed());
        metrics::gauge!(crate::batch::RUN_COST, "model" => model.to_owned(), "part" => "per_value")
            .set(self.per_value());
    }
}

/// The work running now, so that a new call's wait counts what is left of it: the
/// running calls' (or batches') estimates, less the time they have run.
#[derive(Debug, Default)]
pub struct Running(Mutex<Sums>);

/// Sums over the running work: its input values, how many runs, and their start times
/// (nanoseconds after the `Running`'s epoch).
#[derive(Debug)]
struct Sums {
    values: u64,
    count: u64,
    started_ns: u128,
    epoch: Instant,
}

impl Default for Sums {
    fn default() -> Self {
        Sums {
            values: 0,
            count: 0,
            started_ns: 0,
            epoch: Instant::now(),
        }
    }
}

impl Running {
    /// Work of `values` input values started at `started`.
    pub fn begin(&self, values: usize, started: Instant) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.started_ns += started.saturating_duration_since(s.epoch).as_nanos();
        s.values += values as u64;
        s.count += 1;
    }

    /// That work ended (the same `values` and `started` as its `begin`).
    pub fn end(&self, values: usize, started: Instant) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.started_ns -= started.saturating_duration_since(s.epoch).as_nanos();
        s.values -= values as u64;
        s.count -= 1;
    }

    /// What is left of the running work at `now`, at `cost`: all of it less the time it
    /// has run, summed over the runs (one past its estimate takes from the others': an
    /// estimate, not a schedule).
    pub fn left(&self, cost: &RunCost, now: Instant) -> Duration {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.count == 0 {
            return Duration::ZERO;
        }
        let now_ns = now.saturating_duration_since(s.epoch).as_nanos();
        let ran = (u128::from(s.count) * now_ns).saturating_sub(s.started_ns);
        let all = cost.time_for_runs(s.count as usize, s.values as usize);
        all.saturating_sub(Duration::from_nanos(ran.min(u64::MAX as u128) as u64))
    }
}

/// How much longer than its estimate the work ahead of a call is taken to be when the
/// call is admitted: `ahead × (1 + margin)`. The estimate is a mean, so without a margin
/// a call admitted near the edge misses its deadline about as often as it makes it, and
/// is answered unrun after waiting, when its caller no longer has time to go elsewhere.
/// The margin rises with each admitted call answered unrun and falls with each that
/// runs, settling where about [`Margin::TARGET`] of them are answered unrun; with no
/// queue (no call answered unrun) it falls back to nothing and turns no call away.
#[derive(Debug, Default)]
pub struct Margin(AtomicU64);

impl Margin {
    /// The share of admitted calls answered unrun it aims at.
    pub const TARGET: f64 = 0.05;
    /// What one call answered unrun adds (less the target's share).
    const STEP: f64 = 0.1;
    /// At most this much (the work ahead taken as three times its estimate).
    const MOST: f64 = 2.0;

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// `ahead`, with the margin.
    pub fn apply(&self, ahead: Duration) -> Duration {
        ahead.mul_f64(1.0 + self.get())
    }

    /// `n` admitted calls ran. Returns the margin if it changed.
    pub fn ran(&self, n: usize) -> Option<f64> {
        self.adjust(-Self::STEP * Self::TARGET * n as f64)
    }

    /// `n` admitted calls were answered unrun, their deadlines too near. Returns the
    /// margin if it changed.
    pub fn expired(&self, n: usize) -> Option<f64> {
        self.adjust(Self::STEP * (1.0 - Self::TARGET) * n as f64)
    }

    fn adjust(&self, by: f64) -> Option<f64> {
        let old = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                let m = (f64::from_bits(b) + by).clamp(0.0, Self::MOST);
                (m.to_bits() != b).then_some(m.to_bits())
            })
            .ok()?;
        Some((f64::from_bits(old) + by).clamp(0.0, Self::MOST))
    }

    /// Sets the gauge (`sekisho_filter_admission_margin`) for `model`.
    pub fn publish(model: &str, margin: Option<f64>) {
        if let Some(m) = margin {
            metrics::gauge!(crate::batch::ADMISSION_MARGIN, "model" => model.to_owned()).set(m);
        }
    }
}

/// Calls run, and calls not run: dropped because their caller had gone, answered unrun
/// because their deadline would pass first, refused on arrival for their deadline or a
/// full queue.
#[derive(Debug, Default)]
pub struct WorkStats {
    pub runs: AtomicU64,
    pub abandoned: AtomicU64,
    pub expired: AtomicU64,
    pub refused_late: AtomicU64,
    pub refused_full: AtomicU64,
    /// Calls let through although the estimate would have refused them
    /// ([`PROBE_AFTER`]).
    pub probes: AtomicU64,
    pub cost: RunCost,
    pub margin: Margin,
}

/// Slots for calls that each take a core, and the queue in front of them.
pub struct WorkQueue {
    /// Names the work in metrics (the `model` label of the batcher's metrics).
    name: String,
    slots: Arc<Semaphore>,
    workers: usize,
    queue: usize,
    waiting: AtomicUsize,
    /// Input values of the calls waiting for a slot.
    waiting_values: AtomicU64,
    /// When a slot was last given back (nanoseconds after `epoch`).
    last_release: AtomicU64,
    /// The calls holding a slot.
    running: Running,
    epoch: Instant,
    pub stats: WorkStats,
}

/// Calls waiting at most (beyond it: RESOURCE_EXHAUSTED), as the model batcher's default.
pub const DEFAULT_QUEUE: usize = 256;

/// The default number of slots: two for each core this process may use. A slot is
/// handed to the next call through the async runtime, and with one per core a core idles
/// at each hand-over: qr-code on 2 cores, 16 calls in flight, answered 432 a second with
/// 2 slots, 618 with 4 and 622 with 8 (BENCHMARKS.md (d)).
pub fn default_workers() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl WorkQueue {
    pub fn new(name: &str, workers: usize, queue: usize) -> Self {
        crate::batch::describe_metrics();
        let workers = workers.max(1);
        WorkQueue {
            name: name.to_owned(),
            slots: Arc::new(Semaphore::new(workers)),
            workers,
            queue: queue.max(1),
            waiting: AtomicUsize::new(0),
            waiting_values: AtomicU64::new(0),
            last_release: AtomicU64::new(0),
            running: Running::default(),
            epoch: Instant::now(),
            stats: WorkStats::default(),
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Calls waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// A slot for a call of `values` input values, by `deadline` (the call's own, if it
    /// has one). Hold the [`Slot`] while the work runs, wherever it runs (move it into a
    /// blocking task: a call dropped by its caller must not free its slot while its work
    /// still takes the core); dropping it records the time it was held.
    pub async fn enter(
        self: &Arc<Self>,
        deadline: Option<Instant>,
        values: usize,
    ) -> Result<Slot, BatchError> {
        if self.waiting.load(Ordering::SeqCst) >= self.queue && self.slots.available_permits() == 0
        {
            self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(QUEUE_FULL_TOTAL, "model" => self.name.clone()).increment(1);
            let room = self.drain() / self.queue as u32;
            return Err(BatchError::Busy(self.queue, room));
        }
        let probe = self.admit(deadline, values)?;
        let queued = self.slots.available_permits() == 0;
        let wait = Waiting::new(self, values);
        let acquire = self.slots.clone().acquire_owned();
        // It waits only while a slot could still come in time for its work.
        let need = self.stats.cost.time_for(values);
        let acquired = match deadline {
            Some(d) if !probe => {
                let last = d.checked_sub(need).unwrap_or(d);
                tokio::time::timeout_at(last.into(), acquire).await.ok()
            }
            _ => Some(acquire.await),
        };
        let waited = wait.done();
        let Some(permit) = acquired else {
            self.abandon(EXPIRED);
            return Err(BatchError::TooLate(
                format!(
                    "it waited {:.1} ms for a slot, and no slot came in time for the ~{:.1} ms \
                     it takes",
                    waited.as_secs_f64() * 1e3,
                    need.as_secs_f64() * 1e3
                ),
                Duration::ZERO,
            ));
        };
        let permit = permit.map_err(|_| BatchError::Stopped)?;
        metrics::histogram!(QUEUE_WAIT, "model" => self.name.clone()).record(waited.as_secs_f64());
        let need = self.stats.cost.time_for(values);
        if let Some(d) = deadline
            && !probe
            && self.stats.cost.known()
            && d.saturating_duration_since(Instant::now()) < need
        {
            self.abandon(EXPIRED);
            return Err(BatchError::TooLate(
                format!(
                    "it waited {:.1} ms for a slot, and running it takes ~{:.1} ms",
                    waited.as_secs_f64() * 1e3,
                    need.as_secs_f64() * 1e3
                ),
                Duration::ZERO,
            ));
        }
        self.stats.runs.fetch_add(1, Ordering::Relaxed);
        Margin::publish(&self.name, self.stats.margin.ran(1));
        // A call that waited has had its slot since the last one was given back: the
        // time until its task ran counts as its own, or the estimate would leave out
        // what handing a slot over costs under load, and admit calls that then expire.
        let now = Instant::now();
        let started = if !queued {
            now
        } else {
            let released =
                self.epoch + Duration::from_nanos(self.last_release.load(Ordering::Relaxed));
            released.clamp(now - waited, now)
        };
        self.running.begin(values, started);
        Ok(Slot {
            _permit: permit,
            queue: self.clone(),
            values,
            started,
        })
    }

    /// Refuses a call of `values` input values that the work waiting ahead of it would
    /// keep past `deadline`; with a slot free and no call measured for [`PROBE_AFTER`],
    /// lets it through instead, to measure again (`Ok(true)`).
    fn admit(&self, deadline: Option<Instant>, values: usize) -> Result<bool, BatchError> {
        let Some(deadline) = deadline else {
            return Ok(false);
        };
        if !self.stats.cost.known() {
            return Ok(false);
        }
        // With a slot free nothing waits ahead of it.
        let ahead = if self.slots.available_permits() > 0 {
            Duration::ZERO
        } else {
            self.stats.margin.apply(self.drain())
        };
        let own = self.stats.cost.time_for(values);
        let left = deadline.saturating_duration_since(Instant::now());
        if ahead + own <= left {
            return Ok(false);
        }
        if ahead.is_zero() && self.stats.cost.probe(PROBE_AFTER) {
            self.stats.probes.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(PROBES_TOTAL, "model" => self.name.clone()).increment(1);
            return Ok(true);
        }
        self.stats.refused_late.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(DEADLINE_REFUSED_TOTAL, "model" => self.name.clone()).increment(1);
        Err(BatchError::TooLate(
            format!(
                "{} calls waiting, ~{:.1} ms of work on {} slot(s), then ~{:.1} ms for this one; \
             {:.1} ms left",
                self.waiting(),
                ahead.as_secs_f64() * 1e3,
                self.workers,
                own.as_secs_f64() * 1e3,
                left.as_secs_f64() * 1e3
            ),
            crate::batch::fits_after(ahead, own, left),
        ))
    }

    /// When the calls waiting now should all have had their slot: their runs and what
    /// is left of the running calls, shared among the slots.
    fn drain(&self) -> Duration {
        let values = self.waiting_values.load(Ordering::Relaxed) as usize;
        let cost = &self.stats.cost;
        (cost.time_for_runs(self.waiting(), values) + self.running.left(cost, Instant::now()))
            / self.workers as u32
    }

    fn abandon(&self, reason: &'static str) {
        let count = match reason {
            GONE => &self.stats.abandoned,
            _ => {
                Margin::publish(&self.name, self.stats.margin.expired(1));
                &self.stats.expired
            }
        };
        count.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(ABANDONED_TOTAL, "model" => self.name.clone(), "reason" => reason)
            .increment(1);
    }
}

/// Reasons a call is not run (`sekisho_filter_abandoned_total`), as the batcher's.
const GONE: &str = "caller_gone";
const EXPIRED: &str = "deadline";

/// A call counted as waiting until it has its slot; dropped before that (its caller
/// went), it counts as abandoned.
struct Waiting<'a> {
    queue: &'a WorkQueue,
    values: usize,
    since: Instant,
    done: bool,
}

impl<'a> Waiting<'a> {
    fn new(queue: &'a WorkQueue, values: usize) -> Self {
        queue.waiting.fetch_add(1, Ordering::SeqCst);
        queue
            .waiting_values
            .fetch_add(values as u64, Ordering::Relaxed);
        Waiting {
            queue,
            values,
            since: Instant::now(),
            done: false,
        }
    }

    /// It has its slot (or its deadline passed): how long it waited.
    fn done(mut self) -> Duration {
        self.done = true;
        self.since.elapsed()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::SeqCst);
        self.queue
            .waiting_values
            .fetch_sub(self.values as u64, Ordering::Relaxed);
        if !self.done && !std::thread::panicking() {
            self.queue.abandon(GONE);
        }
    }
}

/// One call's slot: the work it runs has a core to itself while this lives.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    queue: Arc<WorkQueue>,
    values: usize,
    started: Instant,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let q = &self.queue;
        q.running.end(self.values, self.started);
        q.stats.cost.record(self.started.elapsed(), self.values);
        q.stats.cost.publish(&q.name);
        let at = q.epoch.elapsed().as_nanos() as u64;
        q.last_release.fetch_max(at, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow(slot: Slot, d: Duration) -> tokio::task::JoinHandle<()> {
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            std::thread::sleep(d);
        })
    }

    /// One slot, calls of 10 values estimated at 50 ms, and a call holding the slot for
    /// 300 ms: the queue and that call.
    async fn one_slot_held() -> (Arc<WorkQueue>, tokio::task::JoinHandle<()>) {
        let q = Arc::new(WorkQueue::new("t", 1, 16));
        q.stats.cost.seed(Duration::from_millis(50), 10);
        let busy = slow(q.enter(None, 10).await.unwrap(), Duration::from_millis(300));
        (q, busy)
    }

    /// `n` calls of `values` without deadlines, each taking its slot in turn and giving it
    /// back at once; returns when all of them are waiting.
    async fn queue_behind(
        q: &Arc<WorkQueue>,
        n: usize,
        values: usize,
    ) -> Vec<tokio::task::JoinHandle<Result<(), BatchError>>> {
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { q.enter(None, values).await.map(drop) })
            })
            .collect();
        while q.waiting() < n {
            tokio::task::yield_now().await;
        }
        calls
    }

    #[tokio::test]
    async fn calls_beyond_the_slots_wait_their_turn() {
        let q = Arc::new(WorkQueue::new("t", 2, 16));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut calls = Vec::new();
        for _ in 0..8 {
            let (q, running, most) = (q.clone(), running.clone(), most.clone());
            calls.push(tokio::spawn(async move {
                let slot = q.enter(None, 10).await.unwrap();
                tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
                .unwrap();
            }));
        }
        for c in calls {
            c.await.unwrap();
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "never more than the slots at once"
        );
        assert_eq!(q.stats.runs.load(Ordering::Relaxed), 8);
        assert_eq!(q.waiting(), 0);
        // 50 ms for 10 values, give or take the scheduler.
        let per = q.stats.cost.time_for(10);
        assert!(per >= Duration::from_millis(50), "{per:?}");
    }

    #[tokio::test]
    async fn a_call_the_queue_would_keep_past_its_deadline_is_refused_at_once() {
        let (q, busy) = one_slot_held().await;
        // Two calls of 50 ms each wait for the one slot.
        let waiting = queue_behind(&q, 2, 10).await;
        // 100 ms queued ahead, what is left of the 50 ms running, and 50 of its own do not
        // fit in 120 ms...
        let soon = Instant::now() + Duration::from_millis(120);
        let refused = q.enter(Some(soon), 10).await.err().expect("refused");
        assert!(
            matches!(refused, BatchError::TooLate(ref m, _) if m.contains("2 calls waiting")),
            "{refused}"
        );
        assert_eq!(q.stats.refused_late.load(Ordering::Relaxed), 1);
        // Its status says when a call with as long left should fit: when the work ahead
        // has run down by the ~80 ms it lacked (less what the running call has run).
        let status = sekisho_filter_sdk::FilterError::from(refused).into_status();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let after = sekisho_proto::retry_pushback(&status).expect("a pushback");
        assert!(
            (Duration::from_millis(60)..=Duration::from_millis(80)).contains(&after),
            "{after:?}"
        );
        // ... and it never waited: no abandoned call is counted for it.
        assert_eq!(q.stats.abandoned.load(Ordering::Relaxed), 0);
        // With no deadline, or a far one, a call waits its turn.
        let later = Instant::now() + Duration::from_secs(10);
        let q2 = q.clone();
        let far = tokio::spawn(async move { q2.enter(Some(later), 10).await.map(drop) });
        busy.await.unwrap();
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        far.await.unwrap().unwrap();
    }

    /// The margin rises with calls answered unrun and falls as calls run, level where
    /// one in twenty admitted is answered unrun; with none, it is nothing.
    #[test]
    fn the_margin_rises_with_calls_answered_unrun_and_falls_as_calls_run() {
        let m = Margin::default();
        assert_eq!(m.ran(5), None, "nothing to lower");
        assert_eq!(
            m.apply(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        assert!((m.expired(1).unwrap() - 0.095).abs() < 1e-12);
        assert_eq!(
            m.apply(Duration::from_millis(100)).as_micros(),
            109_500,
            "the work ahead taken as 9.5% longer"
        );
        // One unrun in twenty admitted: level.
        for _ in 0..50 {
            m.ran(19);
            m.expired(1);
        }
        assert!((m.get() - 0.095).abs() < 1e-9, "{}", m.get());
        // One in ten: it keeps rising, to its bound.
        for _ in 0..1000 {
            m.ran(9);
            m.expired(1);
        }
        assert_eq!(m.get(), Margin::MOST);
        // Calls that all run bring it back to nothing.
        m.ran(10_000);
        assert_eq!(m.get(), 0.0);
    }

    /// A call that the plain estimate would admit is refused on arrival once calls
    /// admitted like it have been answered unrun.
    #[tokio::test]
    async fn after_calls_answered_unrun_a_call_at_the_edge_is_refused_on_arrival() {
        let (q, busy) = one_slot_held().await;
        let waiting = queue_behind(&q, 2, 10).await;
        // ~100 ms queued, up to 50 left of the running call, 50 of its own: 300 ms is room.
        let edge = || Instant::now() + Duration::from_millis(300);
        let q2 = q.clone();
        let admitted = tokio::spawn(async move { q2.enter(Some(edge()), 10).await.map(drop) });
        while q.waiting() < 3 {
            tokio::task::yield_now().await;
        }
        // Ten calls admitted and answered unrun: the work ahead is now taken as ~1.95×.
        for _ in 0..10 {
            q.abandon(EXPIRED);
        }
        assert!((q.stats.margin.get() - 0.95).abs() < 1e-9);
        // Three 50 ms calls queued and what is left of the running one: ~150-200 ms
        // times 1.95, and 50 of its own, do not fit in 300.
        let refused = q.enter(Some(edge()), 10).await.err().expect("refused");
        assert!(matches!(refused, BatchError::TooLate(..)), "{refused}");
        assert_eq!(q.stats.refused_late.load(Ordering::Relaxed), 1);
        busy.await.unwrap();
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        let _ = admitted.await.unwrap();
    }

    #[tokio::test]
    async fn a_call_whose_slot_comes_too_late_is_answered_unrun() {
        let q = Arc::new(WorkQueue::new("t", 1, 16));
        // Not known yet: the first call is admitted whatever its deadline.
        let busy = slow(q.enter(None, 10).await.unwrap(), Duration::from_millis(150));
        let d = Instant::now() + Duration::from_millis(100);
        let got = q.enter(Some(d), 10).await.err().expect("too late");
        assert!(matches!(got, BatchError::TooLate(ref m, _) if m.contains("no slot came")));
        assert_eq!(q.stats.expired.load(Ordering::Relaxed), 1);
        assert_eq!(q.stats.abandoned.load(Ordering::Relaxed), 0, "counted once");
        busy.await.unwrap();
        // Now ~150 ms for 10 values: a slot free with 60 ms left is not worth taking.
        let d = Instant::now() + Duration::from_millis(60);
        let got = q.enter(Some(d), 10).await.err().expect("refused");
        assert!(matches!(got, BatchError::TooLate(..)), "{got}");
        assert_eq!(q.stats.runs.load(Ordering::Relaxed), 1);
    }

    fn ms_f(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    /// Runs of 10 ms plus 1 µs a value, of sizes 1,000 to 32,000 values: the fit finds
    /// both parts, so that three runs of 40,000 values in all take 70 ms, where one time
    /// per value (the last run's, or an average's) would say anything from 42 to 440.
    #[test]
    fn a_run_cost_is_fitted_as_a_fixed_part_and_one_per_value() {
        let cost = RunCost::default();
        assert!(!cost.known());
        assert_eq!(cost.time_for(1000), Duration::ZERO);
        let run = |v: usize| Duration::from_micros(10_000 + v as u64);
        for v in [1000, 8000, 32_000, 2000, 1000, 16_000, 4000] {
            cost.record(run(v), v);
        }
        assert!((cost.fixed() - 0.010).abs() < 1e-9, "{}", cost.fixed());
        assert!(
            (cost.per_value() - 1e-6).abs() < 1e-12,
            "{}",
            cost.per_value()
        );
        assert!((ms_f(cost.time_for_runs(3, 40_000)) - 70.0).abs() < 1e-6);
        assert!((ms_f(cost.time_for(1000)) - 11.0).abs() < 1e-6);
    }

    /// The shape holds while the runs are all one size (their times cannot tell the
    /// parts apart) and the level follows their time: a model whose check found 10 ms a
    /// batch and 1 µs a value, grown three times slower, on items of one size.
    #[test]
    fn runs_of_one_size_keep_the_shape_and_follow_their_time() {
        let ms = Duration::from_millis;
        let cost = RunCost::default();
        cost.seed_two((ms(11), 1000), (ms(19), 9000));
        assert!((cost.fixed() - 0.010).abs() < 1e-9, "{}", cost.fixed());
        for _ in 0..30 {
            cost.record(ms(33), 1000);
        }
        let one = ms_f(cost.time_for(1000));
        assert!((one - 33.0).abs() < 0.1, "{one}");
        // Both parts three times what they were.
        assert!((cost.fixed() - 0.030).abs() < 1e-4, "{}", cost.fixed());
        assert!((ms_f(cost.time_for(2000)) - 36.0).abs() < 0.1);
    }

    /// Older runs at another level do not turn the shape into all fixed: a larger run
    /// never takes less, so a fit that says so keeps the shape it had.
    #[test]
    fn a_fit_with_larger_runs_taking_less_keeps_the_shape() {
        let cost = RunCost::default();
        let run = |v: usize| Duration::from_micros(10_000 + v as u64);
        for v in [1000, 9000, 1000, 9000, 1000, 9000] {
            cost.record(run(v), v);
        }
        assert!((cost.fixed() - 0.010).abs() < 1e-9);
        // Runs of 1,000 values now take 40 ms, longer than those of 9,000 did.
        for _ in 0..20 {
            cost.record(Duration::from_millis(40), 1000);
        }
        let per = cost.per_value();
        assert!(per > 0.0, "a slope of zero or less: {per}");
        let one = ms_f(cost.time_for(1000));
        assert!((one - 40.0).abs() < 1.0, "{one}");
    }

    /// Seeds: one measure is all per value; two of different sizes give the line
    /// through both; a larger run that took less (noise) gives a fixed part only,
    /// never a negative slope.
    #[test]
    fn a_run_cost_is_seeded_from_one_measure_or_the_line_through_two() {
        let ms = Duration::from_millis;
        let cost = RunCost::default();
        cost.seed(ms(20), 10);
        assert_eq!(cost.fixed(), 0.0);
        assert!((ms_f(cost.time_for(30)) - 60.0).abs() < 1e-6);
        // A batch of one item in 12 ms, of eight in 19: 11 ms, and 1 ms an item.
        cost.seed_two((ms(12), 100), (ms(19), 800));
        assert!((cost.fixed() - 0.011).abs() < 1e-9, "{}", cost.fixed());
        assert!((ms_f(cost.time_for(400)) - 15.0).abs() < 1e-6);
        cost.seed_two((ms(12), 100), (ms(10), 800));
        assert!((cost.fixed() - 0.011).abs() < 1e-9, "{}", cost.fixed());
        assert_eq!(cost.per_value(), 0.0);
        // Equal sizes cannot be told apart: all per value.
        cost.seed_two((ms(10), 100), (ms(14), 100));
        assert_eq!(cost.fixed(), 0.0);
        assert!((ms_f(cost.time_for(100)) - 12.0).abs() < 1e-6);
    }

    #[test]
    fn what_is_left_of_running_work_is_its_estimate_less_the_time_it_ran() {
        let rate = RunCost::default();
        rate.seed(Duration::from_millis(1), 1);
        let r = Running::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(r.left(&rate, t0), ms(0));
        r.begin(100, t0);
        r.begin(50, t0 + ms(20));
        // 150 ms of work, of which 30 and 10 have run.
        assert_eq!(r.left(&rate, t0 + ms(30)), ms(110));
        r.end(100, t0);
        assert_eq!(r.left(&rate, t0 + ms(30)), ms(40));
        // Past its estimate, nothing is left of it.
        assert_eq!(r.left(&rate, t0 + ms(500)), ms(0));
        r.end(50, t0 + ms(20));
        assert_eq!(r.left(&rate, t0 + ms(30)), ms(0));
        // Each run takes the fixed part once: 5 ms, and 1 ms a value.
        let cost = RunCost::default();
        cost.seed_two((ms(6), 1), (ms(15), 10));
        r.begin(10, t0);
        r.begin(10, t0);
        assert_eq!(r.left(&cost, t0 + ms(5)), ms(20));
    }

    #[tokio::test]
    async fn a_call_that_running_work_would_keep_past_its_deadline_is_refused_at_once() {
        let q = Arc::new(WorkQueue::new("t", 1, 16));
        q.stats.cost.seed(Duration::from_millis(5), 1);
        // Nothing waits, but the one slot holds ~100 ms of work.
        let busy = slow(q.enter(None, 20).await.unwrap(), Duration::from_millis(300));
        let soon = Instant::now() + Duration::from_millis(60);
        let refused = q.enter(Some(soon), 2).await.err().expect("refused");
        assert!(matches!(refused, BatchError::TooLate(..)), "{refused}");
        assert_eq!(q.stats.refused_late.load(Ordering::Relaxed), 1);
        // It would fit once the running work has run down by the ~50 ms it lacked.
        let status = sekisho_filter_sdk::FilterError::from(refused).into_status();
        let after = sekisho_proto::retry_pushback(&status).expect("a pushback");
        assert!(
            (Duration::from_millis(30)..=Duration::from_millis(50)).contains(&after),
            "{after:?}"
        );
        busy.await.unwrap();
    }

    #[tokio::test]
    async fn a_waiting_call_is_answered_while_its_caller_can_still_go_elsewhere() {
        let q = Arc::new(WorkQueue::new("t", 1, 16));
        q.stats.cost.seed(Duration::from_millis(1), 1);
        // The running call is thought to take 10 ms and holds its slot 400.
        let busy = slow(q.enter(None, 10).await.unwrap(), Duration::from_millis(400));
        // Admitted (~10 ms ahead, 50 its own, 300 left), it waits; once a slot could no
        // longer come with 50 ms to spare, it is answered, before its deadline.
        let d = Instant::now() + Duration::from_millis(300);
        let got = q.enter(Some(d), 50).await.err().expect("too late");
        assert!(Instant::now() < d, "answered only at its deadline");
        assert!(
            matches!(got, BatchError::TooLate(ref m, _) if m.contains("no slot came")),
            "{got}"
        );
        assert_eq!(q.stats.expired.load(Ordering::Relaxed), 1);
        assert_eq!(q.stats.refused_late.load(Ordering::Relaxed), 0);
        busy.await.unwrap();
    }

    /// An estimate too high for every call would refuse them for good, since only runs
    /// correct it: with a slot free and nothing measured for `PROBE_AFTER`, one call is
    /// let through, runs, and brings the estimate down; the next is judged again.
    #[tokio::test]
    async fn an_idle_queue_whose_estimate_refuses_everything_lets_one_call_through() {
        let q = Arc::new(WorkQueue::new("t", 1, 16));
        q.stats.cost.seed(Duration::from_secs(2), 10);
        let soon = || Some(Instant::now() + Duration::from_millis(200));
        let refused = q.enter(soon(), 10).await.err().expect("refused");
        assert!(matches!(refused, BatchError::TooLate(..)), "{refused}");
        tokio::time::sleep(PROBE_AFTER).await;
        let slot = q.enter(soon(), 10).await.expect("let through to measure");
        assert_eq!(q.stats.probes.load(Ordering::Relaxed), 1);
        drop(slot);
        assert!(q.stats.cost.time_for(10) < Duration::from_secs(2));
        // Not again within PROBE_AFTER: still ~1.1 s for 10 values, still refused.
        let refused = q.enter(soon(), 10).await.err().expect("refused again");
        assert!(matches!(refused, BatchError::TooLate(..)), "{refused}");
        assert_eq!(q.stats.probes.load(Ordering::Relaxed), 1);
        assert_eq!(q.stats.refused_late.load(Ordering::Relaxed), 2);
        assert_eq!(q.stats.runs.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_caller_that_goes_while_waiting_frees_its_place() {
        let q = Arc::new(WorkQueue::new("t", 1, 16));
        let busy = slow(q.enter(None, 10).await.unwrap(), Duration::from_millis(100));
        let q2 = q.clone();
        let gone = tokio::spawn(async move { q2.enter(None, 10).await.map(drop) });
        while q.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        assert_eq!(q.waiting(), 0);
        assert_eq!(q.waiting_values.load(Ordering::Relaxed), 0);
        assert_eq!(q.stats.abandoned.load(Ordering::Relaxed), 1);
        busy.await.unwrap();
        assert_eq!(q.stats.runs.load(Ordering::Relaxed), 1);
    }

    /// A refused call's pushback: when the queue ahead has run down by what it lacked;
    /// none when nothing is ahead or it alone takes longer than it had.
    #[test]
    fn a_pushback_is_what_the_call_lacked_if_waiting_can_help() {
        use crate::batch::fits_after;
        let ms = Duration::from_millis;
        assert_eq!(fits_after(ms(100), ms(50), ms(120)), ms(30));
        assert_eq!(fits_after(ms(100), ms(5), ms(10)), ms(95));
        assert_eq!(fits_after(ms(0), ms(50), ms(10)), ms(0));
        assert_eq!(fits_after(ms(100), ms(50), ms(50)), ms(0));
    }

    #[tokio::test]
    async fn a_full_queue_refuses() {
        let q = Arc::new(WorkQueue::new("t", 1, 2));
        let busy = slow(q.enter(None, 1).await.unwrap(), Duration::from_millis(100));
        let waiting = queue_behind(&q, 2, 1).await;
        let got = q.enter(None, 1).await.err().expect("full");
        assert!(matches!(got, BatchError::Busy(2, _)), "{got}");
        assert_eq!(q.stats.refused_full.load(Ordering::Relaxed), 1);
        busy.await.unwrap();
        for w in waiting {
            w.await.unwrap().unwrap();
        }
    }
}
