//! A filter's endpoint pool: the endpoints discovery found, which of them take traffic,
//! and how a call picks one.
//!
//! - An endpoint takes traffic once it has answered `Describe` as this filter, with the
//!   descriptor most of its described siblings share (a replica of another version,
//!   content types or config schema is refused and reported, never mixed in), and while
//!   `grpc.health.v1` does not say NOT_SERVING ([`tend`]).
//! - A call draws two ready endpoints at random and takes the less loaded (p2c): load is
//!   peak-EWMA latency × (calls in flight + 1), as in Finagle and tower, so a slow
//!   replica gets few calls even when idle (`balance: p2c_in_flight` compares calls in
//!   flight only; `round_robin` takes turns). A retry avoids the endpoints it has tried.
//! - With `outlier.max_rest` set (off by default), an endpoint that sheds a call
//!   (RESOURCE_EXHAUSTED) with a retry pushback (`grpc-retry-pushback-ms`: when a call
//!   like it should fit) is sent no new calls for as long as one would wait there, at
//!   most `max_rest`, while a sibling can take them. Off by default because it did not
//!   pay where measured (BENCHMARKS.md (e'')): under p2c, which already steers by load,
//!   it swung calls onto the sibling (0.90–0.96× as many answered), and under round robin
//!   it changed nothing beyond the noise.
//! - Passive outlier ejection: after `consecutive_failures` failed calls in a row an
//!   endpoint is out for `base_ejection` × (its ejections so far), up to `max_ejection`;
//!   never the last endpoint that takes traffic.
//! - A retry budget per filter (`percent` of calls plus `min_per_second`).

mod endpoint;
mod tend;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use endpoint::{Endpoint, Health, InFlight, Phase};
use sekisho_proto::filter::v1::FilterDescriptor;
use sekisho_proto::gateway::v1 as gproto;
use tonic::{Code, Status};
use tower::retry::budget::{Budget, TpsBudget};

use crate::config::{Balance, OutlierConfig, RetryBudgetConfig};
use crate::metrics as m;

/// What every pool of a gateway shares.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connections: usize,
    pub balance: Balance,
    pub outlier: OutlierConfig,
    pub retry_budget: RetryBudgetConfig,
    pub describe_interval: Duration,
}

/// How long a call waits for an endpoint that is still being described, at most.
const WAIT_FOR_FIRST_DESCRIBE: Duration = Duration::from_secs(2);

pub struct FilterPool {
    pub name: String,
    settings: Arc<PoolSettings>,
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    /// The descriptor the pool serves: the one most described endpoints share.
    reference: Mutex<Option<Arc<FilterDescriptor>>>,
    /// The (version, execution provider) pairs published as served, so that one no
    /// longer served is set to 0 (once) rather than keeping its last value.
    served: Mutex<BTreeSet<(String, String)>>,
    /// Bumped whenever an endpoint's standing changes, for calls waiting on one.
    changed: tokio::sync::watch::Sender<u64>,
    budget: TpsBudget,
    turn: AtomicUsize,
    next_id: AtomicU64,
    epoch: Instant,
}

/// The parts of a descriptor that replicas must agree on.
fn same_filter(a: &FilterDescriptor, b: &FilterDescriptor) -> bool {
    a.name == b.name
        && a.version == b.version
        && a.content_types == b.content_types
        && a.config_schema == b.config_schema
}

/// Says how `d` differs from the reference, for the refusal.
fn difference(d: &FilterDescriptor, reference: &FilterDescriptor) -> String {
    let mut parts = Vec::new();
    if d.version != reference.version {
        parts.push(format!(
            "version `{}` where its siblings have `{}`",
            d.version, reference.version
        ));
    }
    if d.content_types != reference.content_types {
        parts.push(format!(
            "content types [{}] where its siblings have [{}]",
            d.content_types.join(", "),
            reference.content_types.join(", ")
        ));
    }
    if d.config_schema != reference.config_schema {
        parts.push("a different config schema".into());
    }
    format!(
        "descriptor disagrees with its siblings: {}",
        parts.join("; ")
    )
}

/// Failures that say the endpoint is unwell or busy, as opposed to the item being bad: the
/// endpoint's load estimate pays for them.
fn endpoint_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Internal
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::DataLoss
            | Code::Unimplemented
    )
}

/// Of those, the ones that count toward ejecting the endpoint. RESOURCE_EXHAUSTED is an
/// endpoint shedding load: busy, not broken. Ejecting it would move its load onto its
/// siblings, under the same load, and take its capacity away while it lasts.
fn ejecting_failure(code: Code) -> bool {
    endpoint_failure(code) && code != Code::ResourceExhausted
}

impl FilterPool {
    pub fn new(name: String, settings: Arc<PoolSettings>) -> Arc<Self> {
        let b = &settings.retry_budget;
        let budget = TpsBudget::new(Duration::from_secs(10), b.min_per_second, b.percent / 100.0);
        Arc::new(FilterPool {
            name,
            settings,
            endpoints: RwLock::new(Vec::new()),
            reference: Mutex::new(None),
            served: Mutex::new(BTreeSet::new()),
            changed: tokio::sync::watch::Sender::new(0),
            budget,
            turn: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
        })
    }

    fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The descriptor the pool serves, once an endpoint has answered `Describe`.
    pub fn descriptor(&self) -> Option<Arc<FilterDescriptor>> {
        self.reference.lock().ok().and_then(|r| r.clone())
    }

    /// Makes the pool's endpoints those of `wanted` (address → the sources that list it):
    /// new ones are described before they take traffic, gone ones stop being picked.
    pub fn sync(self: &Arc<Self>, wanted: &BTreeMap<String, BTreeSet<&'static str>>) {
        let mut added = Vec::new();
        let mut removed = Vec::new();
        {
            let mut eps = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
            eps.retain(|e| {
                let keep = wanted.contains_key(&e.address);
                if !keep {
                    removed.push(e.clone());
                }
                keep
            });
            for (address, sources) in wanted {
                if let Some(e) = eps.iter().find(|e| &e.address == address) {
                    if let Ok(mut s) = e.sources.lock() {
                        *s = sources.clone();
                    }
                    continue;
                }
                let first = sources.iter().next().copied().unwrap_or("static");
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                match Endpoint::new(id, address, first, self.settings.connections, self.epoch) {
                    Ok(e) => {
                        if let Ok(mut s) = e.sources.lock() {
                            *s = sources.clone();
                        }
                        let e = Arc::new(e);
                        eps.push(e.clone());
                        added.push(e);
                    }
                    Err(why) => {
                        tracing::warn!(filter = %self.name, address, error = %why, "endpoint ignored")
                    }
                }
            }
        }
        for e in &removed {
            e.set_usable(false);
            if let Some(t) = e.task.lock().ok().and_then(|mut t| t.take()) {
                t.abort();
            }
            tracing::info!(filter = %self.name, address = %e.address, "endpoint withdrawn");
        }
        for e in added {
            tracing::info!(filter = %self.name, address = %e.address, "endpoint found");
            let task = tokio::spawn(tend::tend(self.clone(), e.clone()));
            if let Ok(mut t) = e.task.lock() {
                *t = Some(task.abort_handle());
            }
        }
        if !removed.is_empty() {
            self.recompute();
        }
    }

    /// Re-derives the served descriptor and each endpoint's phase from what is known.
    pub(crate) fn recompute(&self) {
        let eps = self.endpoints();
        let mut reference = self.reference.lock().unwrap_or_else(|p| p.into_inner());
        // Group the reachable endpoints that say they are this filter by descriptor.
        let mut groups: Vec<(Arc<FilterDescriptor>, usize)> = Vec::new();
        for e in &eps {
            let s = e.lock();
            let Some(d) = s.described.as_ref().filter(|d| d.name == self.name) else {
                continue;
            };
            match groups.iter_mut().find(|(g, _)| same_filter(g, d)) {
                Some((_, n)) => *n += 1,
                None => groups.push((d.clone(), 1)),
            }
        }
        // The largest group wins; on a tie the one served now stays.
        let best = groups.iter().map(|(_, n)| *n).max().unwrap_or(0);
        let keep = reference
            .as_ref()
            .and_then(|r| groups.iter().find(|(g, n)| *n == best && same_filter(g, r)));
        let chosen = keep
            .or_else(|| groups.iter().find(|(_, n)| *n == best))
            .map(|(g, _)| g.clone());
        if let (Some(old), Some(new)) = (reference.as_ref(), chosen.as_ref())
            && !same_filter(old, new)
        {
            tracing::warn!(filter = %self.name, from = %old.version, to = %new.version,
                "most replicas now serve another descriptor; switching to it");
        }
        if let Some(c) = &chosen {
            *reference = Some(c.clone());
        }
        let mut counts: BTreeMap<&'static str, f64> = BTreeMap::new();
        let mut serving: BTreeMap<(String, String), f64> = BTreeMap::new();
        let now = Instant::now();
        for e in &eps {
            let mut s = e.lock();
            let phase = if !s.tried {
                Phase::Pending
            } else if !s.unreachable.is_empty() {
                Phase::Unreachable(s.unreachable.clone())
            } else if let Some(d) = &s.described {
                if d.name != self.name {
                    Phase::Refused(format!(
                        "the endpoint says it is filter `{}`, not `{}`",
                        d.name, self.name
                    ))
                } else if let Some(r) = chosen.as_ref().filter(|r| !same_filter(d, r)) {
                    Phase::Refused(difference(d, r))
                } else if s.health == Health::NotServing {
                    Phase::NotServing
                } else {
                    Phase::Ready
                }
            } else {
                Phase::Pending
            };
            if phase != s.phase {
                match &phase {
                    Phase::Refused(why) | Phase::Unreachable(why) => {
                        tracing::warn!(filter = %self.name, address = %e.address, state = phase.label(), reason = %why, "endpoint kept out")
                    }
                    _ => {
                        tracing::info!(filter = %self.name, address = %e.address, state = phase.label(), "endpoint state")
                    }
                }
            }
            e.set_usable(phase == Phase::Ready);
            let label = if phase == Phase::Ready && e.ejected_at(now) {
                "ejected"
            } else {
                phase.label()
            };
            *counts.entry(label).or_default() += 1.0;
            if phase == Phase::Ready
                && let Some(d) = &s.described
            {
                *serving
                    .entry((d.version.clone(), sekisho_proto::execution_provider(d)))
                    .or_default() += 1.0;
            }
            s.phase = phase;
        }
        drop(reference);
        self.publish_served(&serving);
        for state in [
            "pending",
            "ready",
            "refused",
            "not_serving",
            "unreachable",
            "ejected",
        ] {
            metrics::gauge!(m::FILTER_ENDPOINTS, "filter" => self.name.clone(), "state" => state)
                .set(counts.get(state).copied().unwrap_or(0.0));
        }
        self.changed.send_modify(|g| *g += 1);
    }

    /// What the serving endpoints run: `filter_info` 1 for each (version, provider)
    /// served, endpoints counted by provider; what is no longer served reads 0.
    fn publish_served(&self, serving: &BTreeMap<(String, String), f64>) {
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        served.extend(serving.keys().cloned());
        let mut by_provider: BTreeMap<&str, f64> = BTreeMap::new();
        for key @ (version, provider) in served.iter() {
            let n = serving.get(key).copied().unwrap_or(0.0);
            *by_provider.entry(provider).or_default() += n;
            metrics::gauge!(m::FILTER_INFO, "filter" => self.name.clone(),
                "version" => version.clone(), "execution_provider" => provider.clone())
            .set(if n > 0.0 { 1.0 } else { 0.0 });
        }
        for (provider, n) in by_provider {
            metrics::gauge!(m::FILTER_ENDPOINTS_BY_PROVIDER, "filter" => self.name.clone(),
                "execution_provider" => provider.to_owned())
            .set(n);
        }
        // Zeroed above; they keep that value, so the set does not grow with every
        // version a rolling upgrade passes through.
        served.retain(|key| serving.contains_key(key));
    }

    /// An endpoint for one attempt of a call, avoiding those in `tried` when another
    /// will do. While endpoints are still being described for the first time the call
    /// waits for them, up to `deadline` (and at most 2 s).
    pub async fn pick(&self, tried: &[u64], deadline: Instant) -> Result<InFlight, Status> {
        let wait_until = deadline.min(Instant::now() + WAIT_FOR_FIRST_DESCRIBE);
        let mut changed = self.changed.subscribe();
        loop {
            let now = Instant::now();
            // The common case reads under the lock, without copying the endpoint list.
            let chosen = {
                let eps = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
                self.choose(&eps, tried, now)
            };
            if let Some(e) = chosen {
                return Ok(e.start_call());
            }
            let eps = self.endpoints();
            let pending = eps.iter().any(|e| !e.lock().tried);
            if !pending || now >= wait_until {
                return Err(self.none_ready(&eps, now));
            }
            let left = wait_until - now;
            let _ = tokio::time::timeout(left, changed.changed()).await;
        }
    }

    fn choose(&self, eps: &[Arc<Endpoint>], tried: &[u64], now: Instant) -> Option<Arc<Endpoint>> {
        // A retry goes elsewhere when it can, to the same endpoint when nothing else is
        // up; an endpoint resting after a pushback only when every other is resting too.
        let mut candidates: Vec<&Arc<Endpoint>> = Vec::new();
        for (fresh_only, awake_only) in [(true, true), (true, false), (false, true), (false, false)]
        {
            candidates = eps
                .iter()
                .filter(|e| {
                    e.usable(now)
                        && (!fresh_only || !tried.contains(&e.id))
                        && (!awake_only || !e.resting_at(now))
                })
                .collect();
            if !candidates.is_empty() {
                break;
            }
        }
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].clone()),
            n => Some(match self.settings.balance {
                Balance::RoundRobin => {
                    candidates[self.turn.fetch_add(1, Ordering::Relaxed) % n].clone()
                }
                Balance::P2c | Balance::P2cInFlight => {
                    let a = rand::random_range(0..n);
                    let mut b = rand::random_range(0..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (ea, eb) = (candidates[a], candidates[b]);
                    let b_better = if self.settings.balance == Balance::P2c {
                        eb.cost(now) < ea.cost(now)
                    } else {
                        eb.in_flight() < ea.in_flight()
                    };
                    if b_better { eb.clone() } else { ea.clone() }
                }
            }),
        }
    }

    fn none_ready(&self, eps: &[Arc<Endpoint>], now: Instant) -> Status {
        if eps.is_empty() {
            return Status::unavailable(format!(
                "filter `{}` has no endpoints: discovery has found none",
                self.name
            ));
        }
        let states: Vec<String> = eps
            .iter()
            .map(|e| {
                let p = e.to_proto(now);
                if p.last_error.is_empty() {
                    format!("{} {}", p.address, p.state)
                } else {
                    format!("{} {}: {}", p.address, p.state, p.last_error)
                }
            })
            .collect();
        Status::unavailable(format!(
            "filter `{}` has no endpoint ready: {}",
            self.name,
            states.join("; ")
        ))
    }

    /// A call on `e` was refused with a retry pushback (`st`) after the call had spent
    /// `spent` on earlier attempts: `e` is sent nothing while a sibling can take its
    /// calls, for as long as a new call would have to wait to fit there, at most
    /// `outlier.max_rest`. The filter's pushback is for a call with as little time left as
    /// the refused attempt had; a new call has `spent` more, and fits that much sooner (a
    /// retry's pushback, taken whole, rested a replica until its queue had run dry).
    pub fn heed_pushback(&self, e: &Endpoint, st: &Status, spent: Duration) {
        let max = self.settings.outlier.max_rest;
        let Some(after) = sekisho_proto::retry_pushback(st) else {
            return;
        };
        let rest = after.saturating_sub(spent).min(max);
        if st.code() != Code::ResourceExhausted || rest.is_zero() {
            return;
        }
        e.rest_until(Instant::now() + rest);
        metrics::counter!(m::ENDPOINT_PUSHBACKS_TOTAL, "filter" => self.name.clone()).increment(1);
    }

    /// Notes how a call on `e` went and how long it took, for balancing and outlier
    /// ejection.
    pub fn record(self: &Arc<Self>, e: &Endpoint, result: Result<(), &Status>, latency: Duration) {
        let o = &self.settings.outlier;
        e.calls.fetch_add(1, Ordering::Relaxed);
        let failed = result.is_err_and(|st| endpoint_failure(st.code()));
        if failed {
            e.failures.fetch_add(1, Ordering::Relaxed);
        }
        e.observe(latency, failed);
        let mut s = e.lock();
        let failure = match result {
            Ok(()) => {
                s.consecutive_failures = 0;
                return;
            }
            Err(st) if ejecting_failure(st.code()) => st,
            // Shedding load: neither a failure toward ejection nor a sign of health (a
            // pushback with it rests the endpoint: `heed_pushback`).
            Err(st) if endpoint_failure(st.code()) => {
                s.last_call_error = format!("{}: {}", st.code(), st.message());
                return;
            }
            Err(_) => {
                // The item's fault, not the endpoint's.
                s.consecutive_failures = 0;
                return;
            }
        };
        s.consecutive_failures += 1;
        s.last_call_error = format!("{}: {}", failure.code(), failure.message());
        let now = Instant::now();
        if s.consecutive_failures < o.consecutive_failures || e.ejected_at(now) {
            return;
        }
        // Never the whole pool: someone else must be taking traffic.
        let others = self
            .endpoints()
            .iter()
            .filter(|x| x.id != e.id && x.usable(now))
            .count();
        if others == 0 {
            return;
        }
        // Ejections that ended long ago are forgiven.
        if let Some(end) = s.last_ejection_end
            && now.saturating_duration_since(end) > o.base_ejection * s.ejections.max(1)
        {
            s.ejections = 0;
        }
        s.ejections += 1;
        let length = (o.base_ejection * s.ejections).min(o.max_ejection);
        s.consecutive_failures = 0;
        s.last_ejection_end = Some(now + length);
        e.eject_until(now + length);
        tracing::warn!(filter = %self.name, address = %e.address, for_s = length.as_secs_f64(),
            ejections = s.ejections, last_error = %s.last_call_error, "endpoint ejected after failed calls");
        metrics::counter!(m::ENDPOINT_EJECTIONS_TOTAL, "filter" => self.name.clone()).increment(1);
        drop(s);
        self.recompute();
        // Its return is a change of state too (the endpoints gauge, waiting calls).
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(length).await;
            pool.recompute();
        });
    }

    /// Counts a call against the retry budget.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw_retry(&self) -> bool {
        let ok = self.budget.withdraw();
        if !ok {
            metrics::counter!(m::RETRIES_REFUSED_TOTAL, "filter" => self.name.clone()).increment(1);
        }
        ok
    }

    pub fn to_proto(&self) -> gproto::DiscoveredFilter {
        let now = Instant::now();
        gproto::DiscoveredFilter {
            name: self.name.clone(),
            endpoints: self.endpoints().iter().map(|e| e.to_proto(now)).collect(),
            descriptor: self.descriptor().map(|d| (*d).clone()),
        }
    }
}

#[cfg(test)]
mod tests;
