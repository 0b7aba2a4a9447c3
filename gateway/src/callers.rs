//! Per-caller limits, so that one caller cannot starve the others: each caller (named by
//! a request header, `x-sekisho-principal` unless configured otherwise; the edge sets it
//! to the signed-in principal) has its own requests-in-flight limit and its own token
//! bucket (a rate and a burst). A request over either is shed with RESOURCE_EXHAUSTED /
//! HTTP 429 before it takes a place of the gateway-wide `max_in_flight`.
//!
//! Callers are tracked by name, at most `max_callers` at once: when that many are known,
//! those with nothing in flight and a full bucket (the state a new caller starts in) are
//! forgotten (looked for at most every 100 ms); until one is, a new name shares one
//! overflow state with the other new names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{CallerLimit, CallersConfig};
use crate::error::GatewayError;
use crate::metrics as m;

/// The caller of a request that names none.
pub const ANONYMOUS: &str = "anonymous";

/// The longest caller name kept, in bytes.
pub const MAX_NAME: usize = 128;

/// The metric label of callers not named in `overrides` (callers choose their names, so
/// only configured ones name a series).
const OTHER: &str = "other";

/// The limits in force, and each caller's state.
pub struct Callers {
    header: String,
    default: Limits,
    /// The callers `overrides` names, with their own limits; never forgotten.
    overrides: HashMap<String, Arc<CallerState>>,
    max_callers: usize,
    known: Mutex<Known>,
    /// Shared by new callers while `known` is full of busy ones.
    overflow: Arc<CallerState>,
}

/// The callers tracked, and when the idle ones were last looked for.
struct Known {
    callers: HashMap<String, Arc<CallerState>>,
    swept: Option<Instant>,
}

/// How often a full table is looked through for idle callers, at most: the look takes
/// every tracked caller's bucket in turn, under the table's lock.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_in_flight: Option<usize>,
    /// Requests per second, and the bucket's size.
    rate: Option<(f64, f64)>,
}

impl Limits {
    fn from(l: &CallerLimit) -> Self {
        Limits {
            max_in_flight: l.max_in_flight,
            rate: l
                .rate
                .map(|r| (r, l.burst.map_or(r.ceil().max(1.0), f64::from))),
        }
    }
}

struct CallerState {
    limits: Limits,
    in_flight: Option<Arc<Semaphore>>,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// The tokens it holds at `now`: what it had, plus what `rate` has added since, up to
    /// `burst`.
    fn level(&self, rate: f64, burst: f64, now: Instant) -> f64 {
        (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst)
    }
}

impl CallerState {
    fn new(limits: Limits) -> Self {
        CallerState {
            limits,
            in_flight: limits.max_in_flight.map(|n| Arc::new(Semaphore::new(n))),
            bucket: Mutex::new(Bucket {
                tokens: limits.rate.map_or(0.0, |(_, burst)| burst),
                at: Instant::now(),
            }),
        }
    }

    /// Nothing in flight and a full bucket: forgetting it changes nothing.
    fn idle(&self, now: Instant) -> bool {
        let free = match (&self.in_flight, self.limits.max_in_flight) {
            (Some(s), Some(n)) => s.available_permits() == n,
            _ => true,
        };
        free && self.limits.rate.is_none_or(|(rate, burst)| {
            let b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            b.level(rate, burst, now) >= burst
        })
    }

    /// Takes a token, owing it if the bucket holds none: how long until it is there.
    fn owe_token(&self) -> Option<std::time::Duration> {
        let (rate, burst) = self.limits.rate?;
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.tokens = b.level(rate, burst, now) - 1.0;
        b.at = now;
        (b.tokens < 0.0).then(|| std::time::Duration::from_secs_f64(-b.tokens / rate))
    }

    /// Takes a token, if the bucket holds one; else how long until it will.
    fn take_token(&self) -> Result<(), std::time::Duration> {
        let Some((rate, burst)) = self.limits.rate else {
            return Ok(());
        };
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.tokens = b.level(rate, burst, now);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(std::time::Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

/// A caller's place, held while its request runs.
pub struct CallerPermit {
    _in_flight: Option<OwnedSemaphorePermit>,
}

impl Callers {
    pub fn new(cfg: &CallersConfig) -> Self {
        let default = Limits::from(&cfg.default);
        Callers {
            header: cfg.header.clone(),
            default,
            overrides: cfg
                .overrides
                .iter()
                .map(|(name, l)| (name.clone(), Arc::new(CallerState::new(Limits::from(l)))))
                .collect(),
            max_callers: cfg.max_callers,
            known: Mutex::new(Known {
                callers: HashMap::new(),
                swept: None,
            }),
            overflow: Arc::new(CallerState::new(default)),
        }
    }

    /// The caller a request's metadata names: its first [`MAX_NAME`] bytes (a name is
    /// kept for each caller tracked, so a long one must not cost more).
    pub fn caller_of<'a>(&self, metadata: &'a tonic::metadata::MetadataMap) -> &'a str {
        metadata
            .get(self.header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            // `to_str` passes visible ASCII only, so any byte is a character boundary.
            .map(|v| &v[..v.len().min(MAX_NAME)])
            .unwrap_or(ANONYMOUS)
    }

    /// The state that holds `caller`'s limits, and its metric label; `None` when no
    /// limit applies to it.
    fn select<'a>(&self, caller: &'a str) -> Option<(Arc<CallerState>, &'a str)> {
        match self.overrides.get(caller) {
            Some(s) => Some((s.clone(), caller)),
            None if self.default.max_in_flight.is_none() && self.default.rate.is_none() => None,
            None => Some((self.state(caller), OTHER)),
        }
    }

    /// Admits one request of a stream: instead of shedding it, waits for the caller's
    /// place and token. A stream whose request waits reads no more (its window is
    /// full), and HTTP/2 flow control passes that back to its client. A token waited
    /// for is owed: the bucket goes below empty, and the caller's other requests are
    /// shed until it has refilled.
    pub async fn admit_waiting(&self, caller: &str) -> CallerPermit {
        let Some((state, label)) = self.select(caller) else {
            return CallerPermit { _in_flight: None };
        };
        let in_flight = match &state.in_flight {
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    metrics::counter!(m::CALLER_WAITS_TOTAL, "caller" => label.to_owned(), "limit" => "in_flight")
                        .increment(1);
                    // The semaphore is never closed.
                    s.clone().acquire_owned().await.ok()
                }
            },
            None => None,
        };
        if let Some(wait) = state.owe_token() {
            metrics::counter!(m::CALLER_WAITS_TOTAL, "caller" => label.to_owned(), "limit" => "rate")
                .increment(1);
            tokio::time::sleep(wait).await;
        }
        CallerPermit {
            _in_flight: in_flight,
        }
    }

    /// Admits one request of `caller`, or sheds it.
    pub fn admit(&self, caller: &str) -> Result<CallerPermit, GatewayError> {
        let Some((state, label)) = self.select(caller) else {
            return Ok(CallerPermit { _in_flight: None });
        };
        let limits = state.limits;
        let in_flight = match (&state.in_flight, limits.max_in_flight) {
            (Some(s), Some(n)) => Some(s.clone().try_acquire_owned().map_err(|_| {
                metrics::counter!(m::CALLER_SHED_TOTAL, "caller" => label.to_owned(), "limit" => "in_flight")
                    .increment(1);
                GatewayError::overloaded(format!(
                    "caller `{caller}` has {n} requests in flight, its limit; retry with backoff"
                ))
            })?),
            _ => None,
        };
        if let Err(retry_after) = state.take_token() {
            metrics::counter!(m::CALLER_SHED_TOTAL, "caller" => label.to_owned(), "limit" => "rate")
                .increment(1);
            let (rate, burst) = limits.rate.unwrap_or_default();
            return Err(GatewayError::Overloaded {
                message: format!(
                    "caller `{caller}` is over its rate of {rate} requests a second (burst {burst}); retry in {:.1} s",
                    retry_after.as_secs_f64()
                ),
                retry_after: Some(retry_after),
            });
        }
        Ok(CallerPermit {
            _in_flight: in_flight,
        })
    }

    /// The state of a caller under the default limits.
    fn state(&self, caller: &str) -> Arc<CallerState> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = known.callers.get(caller) {
            return s.clone();
        }
        if known.callers.len() >= self.max_callers {
            let now = Instant::now();
            if known
                .swept
                .is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY)
            {
                known.swept = Some(now);
                known.callers.retain(|_, s| !s.idle(now));
            }
            if known.callers.len() >= self.max_callers {
                return self.overflow.clone();
            }
        }
        let s = Arc::new(CallerState::new(self.default));
        known.callers.insert(caller.to_owned(), s.clone());
        s
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.known.lock().map(|k| k.callers.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn callers(default: CallerLimit, max_callers: usize) -> Callers {
        Callers::new(&CallersConfig {
            header: "x-sekisho-principal".into(),
            default,
            overrides: BTreeMap::from([(
                "big".to_owned(),
                CallerLimit {
                    max_in_flight: Some(4),
                    rate: None,
                    burst: None,
                },
            )]),
            max_callers,
        })
    }

    #[test]
    fn each_caller_has_its_own_places_and_an_override_its_own_limit() {
        let c = callers(
            CallerLimit {
                max_in_flight: Some(2),
                rate: None,
                burst: None,
            },
            100,
        );
        let a1 = c.admit("a").unwrap();
        let _a2 = c.admit("a").unwrap();
        let e = c.admit("a").err().unwrap().to_string();
        assert!(e.contains("caller `a` has 2 requests in flight"), "{e}");
        // Another caller is not held back by `a`.
        let _b = c.admit("b").unwrap();
        // `big` has 4 places.
        let big: Vec<_> = (0..4).map(|_| c.admit("big").unwrap()).collect();
        assert!(c.admit("big").is_err());
        drop(big);
        // A place given back is taken again.
        drop(a1);
        assert!(c.admit("a").is_ok());
    }

    #[test]
    fn the_caller_is_the_header_trimmed_and_cut_to_a_bounded_name() {
        let c = callers(CallerLimit::default(), 100);
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(c.caller_of(&md), ANONYMOUS);
        md.insert("x-sekisho-principal", " checkout ".parse().unwrap());
        assert_eq!(c.caller_of(&md), "checkout");
        md.insert("x-sekisho-principal", "   ".parse().unwrap());
        assert_eq!(c.caller_of(&md), ANONYMOUS);
        md.insert("x-sekisho-principal", "n".repeat(5000).parse().unwrap());
        assert_eq!(c.caller_of(&md), "n".repeat(MAX_NAME));
    }

    #[test]
    fn a_bucket_gives_its_burst_then_sheds() {
        let c = callers(
            CallerLimit {
                max_in_flight: None,
                // One token every 1,000 s: none comes back during the test.
                rate: Some(0.001),
                burst: Some(3),
            },
            100,
        );
        for _ in 0..3 {
            drop(c.admit("a").unwrap());
        }
        let e = c.admit("a").err().unwrap().to_string();
        assert!(
            e.contains("over its rate of 0.001 requests a second (burst 3)"),
            "{e}"
        );
        drop(c.admit("b").unwrap());
        // No rate limit on `big`: its own limits replace the default.
        for _ in 0..10 {
            drop(c.admit("big").unwrap());
        }
    }

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let c = callers(
            CallerLimit {
                max_in_flight: None,
                rate: Some(1000.0),
                burst: Some(1),
            },
            100,
        );
        drop(c.admit("a").unwrap());
        // Whether the next call finds a token depends on the clock; after 5 ms it must.
        std::thread::sleep(std::time::Duration::from_millis(5));
        drop(c.admit("a").unwrap());
    }

    #[tokio::test]
    async fn a_streams_request_waits_for_its_place_and_owes_its_token() {
        let c = Arc::new(callers(
            CallerLimit {
                max_in_flight: Some(1),
                rate: Some(1000.0),
                burst: Some(1),
            },
            100,
        ));
        let first = c.admit_waiting("s").await;
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.admit_waiting("s").await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "the place is held");
        // Meanwhile the caller's unary requests are shed: no place.
        assert!(c.admit("s").is_err());
        drop(first);
        // The place is the waiter's; the token it owes comes within a millisecond.
        let _second = waiting.await.unwrap();
        assert!(c.admit("s").is_err(), "the place is held again");
    }

    #[test]
    fn an_owed_token_is_repaid_before_the_next_is_given() {
        let c = callers(
            CallerLimit {
                max_in_flight: None,
                rate: Some(0.001),
                burst: Some(1),
            },
            100,
        );
        let state = c.select("s").unwrap().0;
        assert_eq!(state.owe_token(), None, "the bucket's one token");
        let wait = state.owe_token().expect("owed");
        // One token at 0.001 a second: 1,000 s, less the few µs since the first.
        assert!(
            wait.as_secs_f64() > 999.0 && wait.as_secs_f64() <= 1000.0,
            "{wait:?}"
        );
        assert!(c.admit("s").is_err(), "shed while the debt stands");
    }

    #[test]
    fn callers_are_forgotten_when_idle_and_new_ones_share_the_overflow_when_none_is() {
        let c = callers(
            CallerLimit {
                max_in_flight: Some(1),
                rate: None,
                burst: None,
            },
            2,
        );
        let a = c.admit("a").unwrap();
        let b = c.admit("b").unwrap();
        assert_eq!(c.tracked(), 2);
        // Both busy: `c` and `d` share the overflow state (one place between them).
        let cc = c.admit("c").unwrap();
        assert!(c.admit("d").is_err());
        drop(cc);
        // `a` idle again: it is forgotten to make room for `d`, which gets its own place
        // (once the table may be looked through again).
        drop(a);
        std::thread::sleep(SWEEP_EVERY);
        let _d = c.admit("d").unwrap();
        assert_eq!(c.tracked(), 2);
        assert!(c.admit("b").is_err(), "b is still held");
        drop(b);
    }
}
