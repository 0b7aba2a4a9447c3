//! One endpoint of a filter: its connections, its load, and what is known of it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sekisho_proto::filter::v1::{FilterDescriptor, filter_client::FilterClient};
use sekisho_proto::gateway::v1 as gproto;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

/// Where an endpoint stands. Only `Ready` takes traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Found, not described yet.
    Pending,
    Ready,
    /// Not this filter, or its descriptor disagrees with its siblings'.
    Refused(String),
    /// `grpc.health.v1` says NOT_SERVING (it is shutting down, or says it is unwell).
    NotServing,
    /// Describe or the health watch failed.
    Unreachable(String),
}

impl Phase {
    pub fn label(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Ready => "ready",
            Phase::Refused(_) => "refused",
            Phase::NotServing => "not_serving",
            Phase::Unreachable(_) => "unreachable",
        }
    }
}

/// What grpc.health.v1 last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not known (no answer yet, or the endpoint has no health service): no hindrance.
    Unknown,
    Serving,
    NotServing,
}

#[derive(Debug)]
pub(crate) struct Status {
    /// The last good answer to Describe, while the endpoint is reachable.
    pub described: Option<Arc<FilterDescriptor>>,
    /// Why Describe or the health watch last failed; empty when it did not.
    pub unreachable: String,
    /// Set once the first Describe has been answered or failed.
    pub tried: bool,
    pub health: Health,
    pub phase: Phase,
    pub consecutive_failures: u32,
    pub ejections: u32,
    pub last_ejection_end: Option<Instant>,
    pub last_call_error: String,
}

/// One endpoint. Calls pick it by [`Endpoint::usable`] and its load.
#[derive(Debug)]
pub struct Endpoint {
    pub id: u64,
    pub address: String,
    pub(crate) sources: Mutex<BTreeSet<&'static str>>,
    clients: Vec<FilterClient<Channel>>,
    pub(crate) channel: Channel,
    next_client: AtomicUsize,
    in_flight: AtomicU32,
    pub(crate) calls: AtomicU64,
    pub(crate) failures: AtomicU64,
    /// `phase == Ready`, readable without the lock.
    usable: AtomicBool,
    /// When its last ejection ends, as 1 + ms since `epoch`; 0 when never ejected.
    ejected_until_ms: AtomicU64,
    /// Until when it asked for no calls (a retry pushback with RESOURCE_EXHAUSTED), as
    /// 1 + ms since `epoch`; 0 when never.
    resting_until_ms: AtomicU64,
    epoch: Instant,
    rtt: Mutex<Ewma>,
    pub(crate) status: Mutex<Status>,
    pub(crate) task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// How long an endpoint's latency is remembered: the weight of an old estimate falls by
/// e every `DECAY` (as in Finagle's and tower's peak EWMA).
const DECAY: Duration = Duration::from_secs(10);
/// The latency assumed of an endpoint before its first answer.
const FIRST_RTT_NS: f64 = 1_000_000.0;
/// The most a run of failures can raise the estimate to, so that a replica that failed
/// for a while is tried again within about a minute of idling.
const MAX_FAILED_RTT_NS: f64 = 1e9;

/// Peak EWMA of call latency: a slower call raises the estimate at once, faster ones
/// lower it gradually. Unused, it fades, so that an endpoint once slow is tried again.
#[derive(Debug)]
struct Ewma {
    ns: f64,
    at: Instant,
}

/// Counts a call in flight on its endpoint for as long as it lives.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoint {
    pub(crate) fn new(
        id: u64,
        address: &str,
        source: &'static str,
        connections: usize,
        epoch: Instant,
    ) -> Result<Self, String> {
        let ep = TonicEndpoint::from_shared(address.to_owned())
            .map_err(|e| format!("bad endpoint `{address}`: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_adaptive_window(true);
        // Several HTTP/2 connections, used in turn: one connection's frames are handled
        // by one task, so a busy filter is served by more than one core.
        let channels: Vec<Channel> = (0..connections.max(1))
            .map(|_| ep.clone().connect_lazy())
            .collect();
        let clients = channels
            .iter()
            .map(|c| {
                FilterClient::new(c.clone())
                    .max_decoding_message_size(64 * 1024 * 1024)
                    .max_encoding_message_size(64 * 1024 * 1024)
            })
            .collect();
        Ok(Endpoint {
            id,
            address: address.to_owned(),
            sources: Mutex::new(BTreeSet::from([source])),
            clients,
            channel: channels[0].clone(),
            next_client: AtomicUsize::new(0),
            in_flight: AtomicU32::new(0),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            usable: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            resting_until_ms: AtomicU64::new(0),
            epoch,
            rtt: Mutex::new(Ewma {
                ns: FIRST_RTT_NS,
                at: Instant::now(),
            }),
            status: Mutex::new(Status {
                described: None,
                unreachable: String::new(),
                tried: false,
                health: Health::Unknown,
                phase: Phase::Pending,
                consecutive_failures: 0,
                ejections: 0,
                last_ejection_end: None,
                last_call_error: String::new(),
            }),
            task: Mutex::new(None),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client over one of its connections (cheap to clone).
    pub fn client(&self) -> FilterClient<Channel> {
        let i = self.next_client.fetch_add(1, Ordering::Relaxed);
        self.clients[i % self.clients.len()].clone()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a call on this endpoint until the guard drops.
    pub fn start_call(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Folds a call's latency into the estimate. A failed call counts as at least twice
    /// the estimate (up to 1 s), so that failing fast does not attract traffic.
    pub(crate) fn observe(&self, latency: Duration, failed: bool) {
        let now = Instant::now();
        let mut e = self.rtt.lock().unwrap_or_else(|p| p.into_inner());
        let mut rtt = latency.as_nanos() as f64;
        if failed {
            rtt = rtt.max((e.ns * 2.0).min(MAX_FAILED_RTT_NS));
        }
        if rtt > e.ns {
            e.ns = rtt;
        } else {
            let w =
                (-now.saturating_duration_since(e.at).as_secs_f64() / DECAY.as_secs_f64()).exp();
            e.ns = e.ns * w + rtt * (1.0 - w);
        }
        e.at = now;
    }

    /// Peak-EWMA latency × (calls in flight + 1): the load p2c compares.
    pub fn cost(&self, now: Instant) -> f64 {
        let e = self.rtt.lock().unwrap_or_else(|p| p.into_inner());
        let idle = now.saturating_duration_since(e.at).as_secs_f64();
        let ns = e.ns * (-idle / DECAY.as_secs_f64()).exp();
        ns * (self.in_flight() as f64 + 1.0)
    }

    pub(crate) fn set_usable(&self, usable: bool) {
        self.usable.store(usable, Ordering::Release);
    }

    /// Ready, and not ejected at `now`.
    pub fn usable(&self, now: Instant) -> bool {
        self.usable.load(Ordering::Acquire) && !self.ejected_at(now)
    }

    pub fn ejected_at(&self, now: Instant) -> bool {
        !self.ejected_left(now).is_zero()
    }

    /// Whether it asked, with a retry pushback, to be sent nothing at `now`.
    pub fn resting_at(&self, now: Instant) -> bool {
        !self.resting_left(now).is_zero()
    }

    /// Sends it nothing until `until` while a sibling can take the call (a later rest
    /// only ever extends it).
    pub(crate) fn rest_until(&self, until: Instant) {
        self.resting_until_ms
            .fetch_max(self.ms_since_epoch(until) + 1, Ordering::AcqRel);
    }

    fn ms_since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    pub(crate) fn eject_until(&self, until: Instant) {
        self.ejected_until_ms
            .store(self.ms_since_epoch(until) + 1, Ordering::Release);
    }

    fn ejected_left(&self, now: Instant) -> Duration {
        self.left_until(&self.ejected_until_ms, now)
    }

    fn resting_left(&self, now: Instant) -> Duration {
        self.left_until(&self.resting_until_ms, now)
    }

    /// The time from `now` to an instant kept as milliseconds since `epoch`, plus one
    /// (0: never set).
    fn left_until(&self, until_ms: &AtomicU64, now: Instant) -> Duration {
        let until = until_ms.load(Ordering::Acquire);
        Duration::from_millis(until.saturating_sub(self.ms_since_epoch(now) + 1))
    }

    pub(crate) fn to_proto(&self, now: Instant) -> gproto::Endpoint {
        let s = self.lock();
        let ejected = self.ejected_at(now);
        let state = if ejected && s.phase == Phase::Ready {
            "ejected"
        } else {
            s.phase.label()
        };
        let last_error = match &s.phase {
            Phase::Refused(why) | Phase::Unreachable(why) => why.clone(),
            _ => s.last_call_error.clone(),
        };
        let sources: Vec<&str> = self
            .sources
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        gproto::Endpoint {
            address: self.address.clone(),
            source: sources.join(","),
            healthy: state == "ready",
            last_error,
            state: state.to_owned(),
            in_flight: self.in_flight(),
            version: s
                .described
                .as_ref()
                .map(|d| d.version.clone())
                .unwrap_or_default(),
            ejected_for_ms: if ejected {
                self.ejected_left(now).as_millis() as u64
            } else {
                0
            },
            ejections: s.ejections,
            resting_for_ms: self.resting_left(now).as_millis() as u64,
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            info: s
                .described
                .as_ref()
                .map(|d| d.info.clone())
                .unwrap_or_default(),
        }
    }
}
