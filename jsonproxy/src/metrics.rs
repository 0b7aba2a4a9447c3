//! The process's one Prometheus recorder, shared by every server in it (the gateway, the
//! filters, and all of them inside `sekisho dev`): installed on first use, rendered at
//! `/metrics`. Histogram buckets follow the metric's name: `_seconds` latency buckets,
//! `_score` buckets over [0, 1], `_batch_size` powers of two.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the recorder once per process and returns its handle.
pub fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let latency = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0,
        ];
        let scores = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];
        let batches = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_score".into()), &scores))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), &batches))
            .expect("bucket lists are not empty")
            .install_recorder()
            .expect("the metrics recorder is installed once per process")
    })
}

/// An HTTP router serving `GET /metrics` (the Prometheus text format) and `/healthz`.
pub fn router() -> axum::Router {
    let handle = install();
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || async move { handle.render() }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
}
