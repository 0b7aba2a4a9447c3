//! Metric names and help texts, in one place. Prometheus conventions: `sekisho_` prefix,
//! base units, `_total` for counters.

use std::sync::OnceLock;

use metrics_exporter_prometheus::PrometheusHandle;

pub const REQUESTS_TOTAL: &str = "sekisho_gateway_requests_total";
pub const REQUESTS_IN_FLIGHT: &str = "sekisho_gateway_requests_in_flight";
pub const REQUEST_DURATION: &str = "sekisho_gateway_request_duration_seconds";
pub const STAGE_DURATION: &str = "sekisho_gateway_stage_duration_seconds";
pub const FILTER_DURATION: &str = "sekisho_gateway_filter_duration_seconds";
pub const FILTER_ERRORS_TOTAL: &str = "sekisho_gateway_filter_errors_total";
pub const FILTER_RETRIES_TOTAL: &str = "sekisho_gateway_filter_retries_total";
pub const FILTER_TIMEOUTS_TOTAL: &str = "sekisho_gateway_filter_timeouts_total";
pub const FILTER_SCORE: &str = "sekisho_gateway_filter_score";
pub const DECISIONS_TOTAL: &str = "sekisho_gateway_decisions_total";
pub const FILTER_INFO: &str = "sekisho_gateway_filter_info";
pub const FILTER_ENDPOINTS: &str = "sekisho_gateway_filter_endpoints";
pub const FILTER_ENDPOINTS_BY_PROVIDER: &str = "sekisho_gateway_filter_endpoints_by_provider";
pub const ENDPOINT_EJECTIONS_TOTAL: &str = "sekisho_gateway_endpoint_ejections_total";
pub const ENDPOINT_PUSHBACKS_TOTAL: &str = "sekisho_gateway_endpoint_pushbacks_total";
pub const RETRIES_REFUSED_TOTAL: &str = "sekisho_gateway_filter_retries_refused_total";
pub const CALLER_SHED_TOTAL: &str = "sekisho_gateway_caller_shed_total";
pub const CALLER_WAITS_TOTAL: &str = "sekisho_gateway_caller_waits_total";
pub const STREAM_WAITS_TOTAL: &str = "sekisho_gateway_stream_waits_total";

/// Installs the process's Prometheus recorder (shared with any filters served in the
/// same process) and describes the gateway's metrics.
pub fn install() -> &'static PrometheusHandle {
    static DESCRIBED: OnceLock<()> = OnceLock::new();
    let handle = sekisho_jsonproxy::metrics::install();
    DESCRIBED.get_or_init(describe);
    handle
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS_TOTAL, "Moderate calls, by chain and gRPC code.");
    describe_gauge!(REQUESTS_IN_FLIGHT, "Moderate calls being served now.");
    describe_counter!(
        CALLER_SHED_TOTAL,
        "Moderate calls shed by a caller's own limit (`in_flight` or `rate`), by caller (those named in callers.overrides; the rest `other`)."
    );
    describe_counter!(
        CALLER_WAITS_TOTAL,
        "ModerateStream requests that waited for their caller's place or token (`in_flight` or `rate`) instead of being shed, by caller as above."
    );
    describe_counter!(
        STREAM_WAITS_TOTAL,
        "ModerateStream requests that waited for a place under the gateway's max_in_flight instead of being shed."
    );
    describe_histogram!(REQUEST_DURATION, "Moderate latency by chain.");
    describe_histogram!(STAGE_DURATION, "Stage latency by chain and stage.");
    describe_histogram!(
        FILTER_DURATION,
        "Filter call latency (retries included) by filter."
    );
    describe_counter!(
        FILTER_ERRORS_TOTAL,
        "Filter calls that failed after retries, by filter and code."
    );
    describe_counter!(FILTER_RETRIES_TOTAL, "Retried filter attempts, by filter.");
    describe_counter!(
        FILTER_TIMEOUTS_TOTAL,
        "Filter calls that ran out of time, by filter."
    );
    describe_histogram!(
        FILTER_SCORE,
        "Scores filters returned, by filter: watch for drift."
    );
    describe_counter!(DECISIONS_TOTAL, "Decisions by chain, decision and reason.");
    describe_gauge!(
        FILTER_INFO,
        "1 for each version and execution provider (cpu, cuda, or none for filters without a model) that an endpoint serving the filter has; 0 once none has."
    );
    describe_gauge!(
        FILTER_ENDPOINTS,
        "Endpoints of each filter by state (ready, pending, refused, not_serving, unreachable, ejected)."
    );
    describe_gauge!(
        FILTER_ENDPOINTS_BY_PROVIDER,
        "Endpoints serving each filter (ready or ejected for a while) by the execution provider each said in Describe (cpu, cuda, or none): a replica that fell back to the CPU shows as cpu."
    );
    describe_counter!(
        ENDPOINT_EJECTIONS_TOTAL,
        "Endpoints ejected after consecutive failed calls, by filter."
    );
    describe_counter!(
        ENDPOINT_PUSHBACKS_TOTAL,
        "Calls an endpoint refused with RESOURCE_EXHAUSTED and a retry pushback after which it rested (new calls went to its siblings for as long as one would have waited there, at most outlier.max_rest; none counted with max_rest 0s, the default), by filter."
    );
    describe_counter!(
        RETRIES_REFUSED_TOTAL,
        "Retries not sent because the filter's retry budget was spent, by filter."
    );
}
