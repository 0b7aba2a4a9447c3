//! What a filter process reports through the `metrics` facade. The SDK records these for
//! every filter; a process exposes them where it installs a recorder (`sekisho filter
//! --metrics-listen`, or the gateway's `/metrics` inside `sekisho dev`). Without a
//! recorder they cost next to nothing.

/// `Apply` calls answered, by filter and gRPC code (`ok`, `invalid_argument`, ...).
pub const REQUESTS_TOTAL: &str = "sekisho_filter_requests_total";
/// `Apply` latency inside the filter process, by filter.
pub const DURATION: &str = "sekisho_filter_request_duration_seconds";
/// `Apply` calls being served now, by filter.
pub const IN_FLIGHT: &str = "sekisho_filter_requests_in_flight";
/// 1, labelled with the filter's version and execution provider.
pub const INFO: &str = "sekisho_filter_info";

/// Help texts for the SDK's metrics.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS_TOTAL,
        "Apply calls answered, by filter and gRPC code."
    );
    describe_histogram!(
        DURATION,
        "Apply latency inside the filter process, by filter."
    );
    describe_gauge!(IN_FLIGHT, "Apply calls being served now, by filter.");
    describe_gauge!(
        INFO,
        "1 per filter served, labelled with its version and execution provider (cpu, cuda, or none)."
    );
}
