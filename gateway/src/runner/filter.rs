//! One filter call through its guard stack, timed and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

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
    // A filter that answers a score outside [0, 1] is broken, whatever it says.
    let result = result.and_then(|r| {
        if (0.0..=1.0).contains(&r.score) {
            Ok(r)
        } else {
            Err(Status::internal(format!(
                "score {} is outside [0, 1]",
                r.score
            )))
        }
    });
    FilterRun {
        result,
        attempts: attempts.load(Ordering::Relaxed),
        latency,
    }
}
