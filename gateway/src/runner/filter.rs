//! One filter call through its guard stack, timed and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sekisho_chainstore::MAX_VERDICT_LABELS;
use sekisho_proto::filter::v1::{ApplyRequest, ApplyResponse};
use tonic::Status;
use tower::ServiceExt;

use crate::chain::CompiledFilter;
use crate::layers;
use crate::metrics as m;
use crate::registry::FilterRegistry;

/// How one filter call went.
pub struct FilterRun {
    pub result: Result<ApplyResponse, Status>,
    pub attempts: u32,
    pub latency: Duration,
}

/// The most regions one filter's verdict may carry: each is passed to every later
/// filter of the chain and returned to the caller.
pub const MAX_VERDICT_REGIONS: usize = 4096;

/// The longest label name a verdict may carry, in bytes.
pub const MAX_LABEL_LEN: usize = 256;

/// What makes a filter's verdict unusable, if anything: a score outside [0, 1] (or NaN);
/// more than [`MAX_VERDICT_LABELS`] labels (rules' cost estimates count on it), a label
/// name over [`MAX_LABEL_LEN`] bytes, a label value that is NaN or infinite (a rule such
/// as `labels.nsfw > 0.9` is false for -inf, and its chain went on as if the filter had
/// found nothing; NaN made the rule fail); more than [`MAX_VERDICT_REGIONS`] regions, or a region whose box,
/// score or landmarks are not finite, or whose width or height is negative.
pub fn verdict_problem(r: &ApplyResponse) -> Option<String> {
    if !(0.0..=1.0).contains(&r.score) {
        return Some(format!("score {} is outside [0, 1]", r.score));
    }
    if r.labels.len() > MAX_VERDICT_LABELS {
        return Some(format!(
            "the verdict has {} labels; the most is {MAX_VERDICT_LABELS}",
            r.labels.len()
        ));
    }
    // The first wrong one by name, whatever order the map gives (no sorting, nor any
    // allocation, on every call for verdicts that are right).
    let wrong = r
        .labels
        .iter()
        .filter(|(name, value)| name.len() > MAX_LABEL_LEN || !value.is_finite())
        .min_by_key(|(name, _)| *name);
    if let Some((name, value)) = wrong {
        return Some(match name.len() > MAX_LABEL_LEN {
            true => format!(
                "a label's name is {} bytes; the most is {MAX_LABEL_LEN}",
                name.len()
            ),
            false => format!("label `{name}` is {value}, not a number a rule can use"),
        });
    }
    if r.regions.len() > MAX_VERDICT_REGIONS {
        return Some(format!(
            "the verdict has {} regions; the most is {MAX_VERDICT_REGIONS}",
            r.regions.len()
        ));
    }
    for (i, g) in r.regions.iter().enumerate() {
        let landmarks = g.landmarks.iter().flat_map(|p| [p.x, p.y]);
        let numbers = [g.x, g.y, g.width, g.height, g.score];
        if !numbers.into_iter().chain(landmarks).all(f32::is_finite) {
            return Some(format!(
                "region {i} has a coordinate or score that is not finite"
            ));
        }
        if g.width < 0.0 || g.height < 0.0 {
            return Some(format!(
                "region {i} is {} × {}: a negative size",
                g.width, g.height
            ));
        }
    }
    None
}

/// Calls `f` with `req` under its policy.
pub async fn run_filter(
    registry: &FilterRegistry,
    f: &CompiledFilter,
    req: ApplyRequest,
    chain: &str,
    stage: &str,
    caller_deadline: Option<Instant>,
) -> FilterRun {
    let start = Instant::now();
    let Some(pool) = registry.get(&f.filter) else {
        let status = Status::unavailable(format!(
            "filter `{}` is not known to discovery; known: {}",
            f.filter,
            registry.names().join(", ")
        ));
        metrics::counter!(m::FILTER_ERRORS_TOTAL, "filter" => f.filter.clone(), "code" => "unknown_filter").increment(1);
        return FilterRun {
            result: Err(status),
            attempts: 0,
            latency: start.elapsed(),
        };
    };
    // The filter's own timeout, or less when the caller's deadline comes first.
    let mut deadline = start + f.policy.timeout;
    if let Some(d) = caller_deadline {
        deadline = deadline.min(d);
    }
    pool.deposit();
    let attempts = Arc::new(AtomicU32::new(0));
    let stack = layers::filter_stack(pool, &f.policy, deadline, attempts.clone());
    let result = stack.oneshot(req).await;
    let latency = start.elapsed();
    metrics::histogram!(m::FILTER_DURATION, "chain" => chain.to_owned(), "stage" => stage.to_owned(), "filter" => f.filter.clone())
        .record(latency.as_secs_f64());
    match &result {
        Ok(r) => metrics::histogram!(m::FILTER_SCORE, "filter" => f.filter.clone()).record(r.score),
        Err(s) => metrics::counter!(m::FILTER_ERRORS_TOTAL, "filter" => f.filter.clone(), "code" => sekisho_proto::code_label(s.code()))
            .increment(1),
    }
    // A filter whose verdict cannot be taken as it is (a score outside [0, 1], a label
    // that is not a number) is broken, whatever it says.
    let result = result.and_then(|r| match verdict_problem(&r) {
        None => Ok(r),
        Some(problem) => Err(Status::internal(problem)),
    });
    FilterRun {
        result,
        attempts: attempts.load(Ordering::Relaxed),
        latency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sekisho_proto::filter::v1::{Point, Region};

    fn region() -> Region {
        Region {
            x: 1.0,
            y: 2.0,
            width: 3.0,
            height: 4.0,
            score: 0.9,
            label: "face".into(),
            landmarks: vec![Point { x: 2.0, y: 3.0 }],
        }
    }

    /// A verdict at every limit is taken; one step past any of them, or a value that is
    /// not a finite number where a rule or a later filter would use it, is not.
    #[test]
    fn verdicts_are_taken_only_within_their_limits() {
        let at_limits = ApplyResponse {
            score: 1.0,
            labels: (0..MAX_VERDICT_LABELS)
                .map(|i| (format!("{i:0>256}"), i as f64))
                .collect(),
            regions: vec![region(); MAX_VERDICT_REGIONS],
            details: None,
        };
        assert_eq!(verdict_problem(&at_limits), None);
        let problem = |change: &dyn Fn(&mut ApplyResponse)| {
            let mut r = at_limits.clone();
            change(&mut r);
            verdict_problem(&r).expect("refused")
        };
        assert!(problem(&|r| r.score = f64::NAN).contains("score NaN is outside [0, 1]"));
        assert!(problem(&|r| r.score = 1.01).contains("outside [0, 1]"));
        let more = problem(&|r| {
            r.labels.insert("one-more".into(), 0.0);
        });
        assert!(more.contains("257 labels; the most is 256"), "{more}");
        let long = problem(&|r| {
            r.labels.clear();
            r.labels.insert("x".repeat(257), 0.0);
        });
        assert!(long.contains("257 bytes; the most is 256"), "{long}");
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = problem(&|r| {
                r.labels.insert(format!("{:0>256}", 9), bad);
            });
            assert!(
                e.contains(&format!("is {bad}, not a number a rule can use")),
                "{e}"
            );
        }
        let e = problem(&|r| r.regions.push(region()));
        assert!(e.contains("4097 regions; the most is 4096"), "{e}");
        let bad_regions: [&dyn Fn(&mut Region); 4] = [
            &|g| g.x = f32::NAN,
            &|g| g.score = f32::INFINITY,
            &|g| g.landmarks[0].y = f32::NAN,
            &|g| g.height = -1.0,
        ];
        for (i, bad) in bad_regions.iter().enumerate() {
            let e = problem(&|r| bad(&mut r.regions[7]));
            assert!(e.starts_with("region 7 "), "{i}: {e}");
        }
    }
}
