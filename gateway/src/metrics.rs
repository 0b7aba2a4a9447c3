//! Metric names and help texts, in one place. Prometheus conventions: `sekisho_` prefix,
//! base units, `_total` for counters.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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
pub const ENDPOINT_EJECTIONS_TOTAL: &str = "sekisho_gateway_endpoint_ejections_total";
pub const RETRIES_REFUSED_TOTAL: &str = "sekisho_gateway_filter_retries_refused_total";

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let latency = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0,
        ];
        let scores = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(FILTER_SCORE.into()), &scores))
            .expect("bucket lists are not empty")
            .install_recorder()
            .expect("the metrics recorder is installed once per process");
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS_TOTAL, "Moderate calls, by chain and gRPC code.");
    describe_gauge!(REQUESTS_IN_FLIGHT, "Moderate calls being served now.");
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
        "1 per described filter, labelled with its version and execution provider (cpu, cuda, or none for filters without a model)."
    );
    describe_gauge!(
        FILTER_ENDPOINTS,
        "Endpoints of each filter by state (ready, pending, refused, not_serving, unreachable, ejected)."
    );
    describe_counter!(
        ENDPOINT_EJECTIONS_TOTAL,
        "Endpoints ejected after consecutive failed calls, by filter."
    );
    describe_counter!(
        RETRIES_REFUSED_TOTAL,
        "Retries not sent because the filter's retry budget was spent, by filter."
    );
}
