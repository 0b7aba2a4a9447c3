//! The live view: the edge reads the gateway's Prometheus `/metrics` every interval and
//! keeps, per interval, the decisions by chain and the filter latency quantiles (from
//! the histogram buckets' growth), so that the UI draws charts without a Prometheus.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::proxy::Upstreams;

const DECISIONS: &str = "sekisho_gateway_decisions_total";
const FILTER_DURATION: &str = "sekisho_gateway_filter_duration_seconds";
const MAX_METRICS_BYTES: usize = 8 << 20;

/// One interval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// End of the interval, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub seconds: f64,
    /// chain → decision → decisions in the interval.
    pub decisions: BTreeMap<String, BTreeMap<String, f64>>,
    /// filter → calls and latency in the interval.
    pub filters: BTreeMap<String, FilterSample>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FilterSample {
    pub calls: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveView {
    pub interval_ms: u64,
    /// The last error reading the gateway's metrics, if the last read failed.
    pub trouble: Option<String>,
    pub samples: Vec<Sample>,
}

/// Cumulative counters read at one moment.
#[derive(Debug, Default, Clone)]
pub struct Reading {
    decisions: HashMap<(String, String), f64>,
    /// filter → (le → cumulative count), sum, count; summed over chains and stages.
    buckets: HashMap<String, BTreeMap<OrdF64, f64>>,
    sums: HashMap<String, f64>,
    counts: HashMap<String, f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
#[allow(clippy::derive_ord_xor_partial_ord)]
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Reads the Prometheus text format, keeping the series the live view needs.
pub fn parse(text: &str) -> Reading {
    let mut r = Reading::default();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], parse_labels(&series[i..])),
            None => (series, Vec::new()),
        };
        let label = |k: &str| {
            labels
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        match name {
            DECISIONS => {
                *r.decisions
                    .entry((label("chain"), label("decision")))
                    .or_default() += value;
            }
            n if n == format!("{FILTER_DURATION}_bucket") => {
                let le = match label("le").as_str() {
                    "+Inf" => f64::INFINITY,
                    s => match s.parse() {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                };
                *r.buckets
                    .entry(label("filter"))
                    .or_default()
                    .entry(OrdF64(le))
                    .or_default() += value;
            }
            n if n == format!("{FILTER_DURATION}_sum") => {
                *r.sums.entry(label("filter")).or_default() += value;
            }
            n if n == format!("{FILTER_DURATION}_count") => {
                *r.counts.entry(label("filter")).or_default() += value;
            }
            _ => {}
        }
    }
    r
}

/// `{a="x",b="y\"z"}` → [(a, x), (b, y"z)].
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.trim_start_matches('{').chars().peekable();
    loop {
        let name: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if name.is_empty() || name.starts_with('}') {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(o) => value.push(o),
                    None => break,
                },
                '"' => break,
                o => value.push(o),
            }
        }
        out.push((name, value));
    }
    out
}

/// What happened between two readings `seconds` apart. Counters that went down (the
/// gateway restarted) count from zero.
pub fn delta(prev: &Reading, now: &Reading, at_ms: u64, seconds: f64) -> Sample {
    let grow = |p: Option<&f64>, n: f64| {
        let p = p.copied().unwrap_or(0.0);
        if n >= p { n - p } else { n }
    };
    let mut decisions: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for ((chain, decision), v) in &now.decisions {
        let d = grow(prev.decisions.get(&(chain.clone(), decision.clone())), *v);
        if d > 0.0 {
            decisions
                .entry(chain.clone())
                .or_default()
                .insert(decision.clone(), d);
        }
    }
    let mut filters = BTreeMap::new();
    for (filter, count) in &now.counts {
        let calls = grow(prev.counts.get(filter), *count);
        if calls <= 0.0 {
            continue;
        }
        let restarted = prev.counts.get(filter).is_some_and(|p| p > count);
        let sum = if restarted {
            now.sums.get(filter).copied().unwrap_or(0.0)
        } else {
            grow(
                prev.sums.get(filter),
                now.sums.get(filter).copied().unwrap_or(0.0),
            )
        };
        let empty = BTreeMap::new();
        let before = if restarted {
            &empty
        } else {
            prev.buckets.get(filter).unwrap_or(&empty)
        };
        let buckets: Vec<(f64, f64)> = now
            .buckets
            .get(filter)
            .map(|b| {
                b.iter()
                    .map(|(le, c)| (le.0, c - before.get(le).copied().unwrap_or(0.0)))
                    .collect()
            })
            .unwrap_or_default();
        filters.insert(
            filter.clone(),
            FilterSample {
                calls,
                mean_ms: 1000.0 * sum / calls,
                p50_ms: 1000.0 * quantile(&buckets, 0.5),
                p99_ms: 1000.0 * quantile(&buckets, 0.99),
            },
        );
    }
    Sample {
        at_ms,
        seconds,
        decisions,
        filters,
    }
}

/// The `q` quantile of cumulative `(upper bound, count)` buckets, interpolated within
/// the bucket it falls in, as Prometheus' histogram_quantile does.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return 0.0;
    };
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower;
            }
            let inside = count - below;
            if inside <= 0.0 {
                return le;
            }
            return lower + (le - lower) * (rank - below) / inside;
        }
        lower = le;
        below = count;
    }
    lower
}

/// The samples, filled by a task reading the gateway.
#[derive(Clone)]
pub struct Live {
    inner: Arc<RwLock<State>>,
    interval: Duration,
}

struct State {
    samples: VecDeque<Sample>,
    keep: usize,
    trouble: Option<String>,
}

impl Live {
    pub fn new(interval: Duration, keep: usize) -> Self {
        Live {
            inner: Arc::new(RwLock::new(State {
                samples: VecDeque::with_capacity(keep),
                keep,
                trouble: None,
            })),
            interval,
        }
    }

    pub fn view(&self) -> LiveView {
        let s = self.inner.read().unwrap_or_else(|e| e.into_inner());
        LiveView {
            interval_ms: self.interval.as_millis() as u64,
            trouble: s.trouble.clone(),
            samples: s.samples.iter().cloned().collect(),
        }
    }

    fn push(&self, sample: Sample) {
        let mut s = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if s.samples.len() == s.keep {
            s.samples.pop_front();
        }
        s.samples.push_back(sample);
        s.trouble = None;
    }

    fn trouble(&self, e: String) {
        let mut s = self.inner.write().unwrap_or_else(|e| e.into_inner());
        s.trouble = Some(e);
    }

    /// Reads the gateway's metrics every interval until the task is dropped.
    pub async fn follow(self, upstreams: Upstreams) {
        let mut prev: Option<(Reading, std::time::Instant)> = None;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match upstreams.get_gateway("/metrics", MAX_METRICS_BYTES).await {
                Ok(body) => {
                    let reading = parse(&String::from_utf8_lossy(&body));
                    let now = std::time::Instant::now();
                    if let Some((p, at)) = &prev {
                        let at_ms = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_millis() as u64)
                            .unwrap_or(0);
                        self.push(delta(p, &reading, at_ms, (now - *at).as_secs_f64()));
                    }
                    prev = Some((reading, now));
                }
                Err(e) => {
                    tracing::debug!("cannot read the gateway's metrics: {e}");
                    self.trouble(format!("cannot read the gateway's metrics: {e}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"# HELP sekisho_gateway_decisions_total Decisions
# TYPE sekisho_gateway_decisions_total counter
sekisho_gateway_decisions_total{chain="c",decision="APPROVE",reason=""} 10
sekisho_gateway_decisions_total{chain="c",decision="REJECT",reason="spam \"x\""} 2
sekisho_gateway_decisions_total{chain="c",decision="REJECT",reason="other"} 1
sekisho_gateway_filter_duration_seconds_bucket{chain="c",stage="s",filter="f",le="0.001"} 5
sekisho_gateway_filter_duration_seconds_bucket{chain="c",stage="s",filter="f",le="0.01"} 9
sekisho_gateway_filter_duration_seconds_bucket{chain="c",stage="s",filter="f",le="+Inf"} 10
sekisho_gateway_filter_duration_seconds_sum{chain="c",stage="s",filter="f"} 0.02
sekisho_gateway_filter_duration_seconds_count{chain="c",stage="s",filter="f"} 10
"#;

    #[test]
    fn labels_with_escapes_parse() {
        assert_eq!(
            parse_labels(r#"{a="x",b="y\"z\\",c=""}"#),
            vec![
                ("a".into(), "x".into()),
                ("b".into(), "y\"z\\".into()),
                ("c".into(), String::new())
            ]
        );
    }

    #[test]
    fn intervals_are_differences_of_readings() {
        let a = parse(A);
        assert_eq!(a.decisions[&("c".into(), "REJECT".into())], 3.0);
        let b_text = A
            .replace("\"\"} 10", "\"\"} 16")
            .replace("le=\"0.001\"} 5", "le=\"0.001\"} 105")
            .replace("le=\"0.01\"} 9", "le=\"0.01\"} 109")
            .replace("le=\"+Inf\"} 10", "le=\"+Inf\"} 110")
            .replace("} 0.02", "} 0.12")
            .replace("filter=\"f\"} 10", "filter=\"f\"} 110");
        let b = parse(&b_text);
        let s = delta(&a, &b, 1, 2.0);
        assert_eq!(s.decisions["c"]["APPROVE"], 6.0);
        assert!(!s.decisions["c"].contains_key("REJECT"), "no new rejects");
        let f = &s.filters["f"];
        assert_eq!(f.calls, 100.0);
        assert!((f.mean_ms - 1.0).abs() < 1e-9);
        // All 100 new calls fell in the first bucket: p50 at half of it.
        assert!((f.p50_ms - 0.5).abs() < 1e-9, "{f:?}");
        assert!((f.p99_ms - 0.99).abs() < 1e-9, "{f:?}");
        // A restarted gateway counts from zero.
        let s = delta(&b, &a, 2, 2.0);
        assert_eq!(s.decisions["c"]["APPROVE"], 10.0);
        assert_eq!(s.filters["f"].calls, 10.0);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let b = [(1.0, 50.0), (2.0, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(&b, 0.5), 1.0);
        assert_eq!(quantile(&b, 0.75), 1.5);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 4.0)], 0.5), 1.0);
    }
}
