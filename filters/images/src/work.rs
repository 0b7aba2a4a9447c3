//! Work with no model to batch (qr-code's search): each call runs alone on one of a few
//! slots (by default two per core), the others wait their turn, and the same deadline
//! rules as the model batcher ([`crate::batch`]) keep the queue from filling with work
//! nobody will read. Without them a filter under more calls than it can serve starts
//! every call at once, on more threads than cores, and answers each one too late.
//!
//! A call is refused at once (RESOURCE_EXHAUSTED) when the queue is full, or when the
//! work ahead of it (what waits, and what is left of the calls running), shared among
//! the slots, and then its own would keep it past its deadline; the estimate is the
//! input values (pixels), at a moving average of the time one value took. A call waits
//! only while a slot could still come in time for its own work, and is answered unrun
//! once it cannot; one whose caller goes while it waits is dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::batch::{
    ABANDONED_TOTAL, BatchError, DEADLINE_REFUSED_TOTAL, QUEUE_FULL_TOTAL, QUEUE_WAIT,
};

/// The time one input value takes, as recent work went: a moving average with a weight
/// of 1/5 for each new measure, kept as f64 bits; zero until the first.
#[derive(Debug, Default)]
pub struct PerValue(AtomicU64);

impl PerValue {
    /// Seconds per input value (zero: not known yet).
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// What `values` input values take at that rate.
    pub fn time_for(&self, values: usize) -> Duration {
        Duration::from_secs_f64(self.get() * values as f64)
    }

    /// Sets the estimate: `d` for `values` input values.
    pub fn seed(&self, d: Duration, values: usize) {
        let v = d.as_secs_f64() / values.max(1) as f64;
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// Folds in a measure: `d` for `values` input values.
    pub fn record(&self, d: Duration, values: usize) {
        let new = d.as_secs_f64() / values.max(1) as f64;
        let old = self.get();
        let avg = if old == 0.0 {
            new
        } else {
            (old * 4.0 + new) / 5.0
        };
        self.0.store(avg.to_bits(), Ordering::Relaxed);
    }
}

/// The work running now, so that a new call's wait counts what is left of it: the
/// running calls' (or batches') input values at the moving average, less the time they
/// have run.
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

    /// What is left of the running work at `now`, at `rate`: all of it less the time it
    /// has run, summed over the runs (one past its estimate takes from the others': an
    /// estimate, not a schedule).
    pub fn left(&self, rate: &PerValue, now: Instant) -> Duration {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.count == 0 {
            return Duration::ZERO;
        }
        let now_ns = now.saturating_duration_since(s.epoch).as_nanos();
        let ran = (u128::from(s.count) * now_ns).saturating_sub(s.started_ns);
        let all = rate.time_for(s.values as usize);
        all.saturating_sub(Duration::from_nanos(ran.min(u64::MAX as u128) as u64))
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
    pub per_value: PerValue,
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
        self.admit(deadline, values)?;
        let queued = self.slots.available_permits() == 0;
        let wait = Waiting::new(self, values);
        let acquire = self.slots.clone().acquire_owned();
        // It waits only while a slot could still come in time for its work.
        let need = self.stats.per_value.time_for(values);
        let acquired = match deadline {
            Some(d) => {
                let last = d.checked_sub(need).unwrap_or(d);
                tokio::time::timeout_at(last.into(), acquire).await.ok()
            }
            None => Some(acquire.await),
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
        let need = self.stats.per_value.time_for(values);
        if let Some(d) = deadline
            && self.stats.per_value.get() > 0.0
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
    /// keep past `deadline`.
    fn admit(&self, deadline: Option<Instant>, values: usize) -> Result<(), BatchError> {
        let Some(deadline) = deadline else {
            return Ok(());
        };
        if self.stats.per_value.get() == 0.0 {
            return Ok(());
        }
        // With a slot free nothing waits ahead of it.
        let ahead = if self.slots.available_permits() > 0 {
            Duration::ZERO
        } else {
            self.drain()
        };
        let own = self.stats.per_value.time_for(values);
        let left = deadline.saturating_duration_since(Instant::now());
        if ahead + own <= left {
            return Ok(());
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

    /// When the calls waiting now should all have had their slot: their values and what
    /// is left of the running calls, shared among the slots.
    fn drain(&self) -> Duration {
        let queued = self.waiting_values.load(Ordering::Relaxed) as usize;
        let pv = &self.stats.per_value;
        (pv.time_for(queued) + self.running.left(pv, Instant::now())) / self.workers as u32
    }

    fn abandon(&self, reason: &'static str) {
        let count = match reason {
            GONE => &self.stats.abandoned,
            _ => &self.stats.expired,
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
        q.stats
            .per_value
            .record(self.started.elapsed(), self.values);
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
        let per = q.stats.per_value.time_for(10);
        assert!(per >= Duration::from_millis(50), "{per:?}");
    }

    #[tokio::test]
    async fn a_call_the_queue_would_keep_past_its_deadline_is_refused_at_once() {
        let q = Arc::new(WorkQueue::new("t", 1, 16));
        q.stats.per_value.seed(Duration::from_millis(50), 10);
        let busy = slow(q.enter(None, 10).await.unwrap(), Duration::from_millis(300));
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

    #[test]
    fn what_is_left_of_running_work_is_its_estimate_less_the_time_it_ran() {
        let rate = PerValue::default();
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
    }

    #[tokio::test]
    async fn a_call_that_running_work_would_keep_past_its_deadline_is_refused_at_once() {
        let q = Arc::new(WorkQueue::new("t", 1, 16));
        q.stats.per_value.seed(Duration::from_millis(5), 1);
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
        q.stats.per_value.seed(Duration::from_millis(1), 1);
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
