//! Streaming, metrics, OpenAPI and custom aggregators.

use std::sync::Arc;

use sekisho_filters_samples::Noop;
use sekisho_gateway::aggregate::{AggregateInput, Aggregator, StageRef};
use sekisho_gateway::config::StaticFilter;
use sekisho_gateway::{GatewayConfig, GatewayServer};
use sekisho_proto::filter::v1::content::Payload;
use sekisho_proto::gateway::v1::{Decision, gateway_client::GatewayClient};
use sekisho_tests::filters::Barrier;
use sekisho_tests::{TestFilter, TestGateway, request};

const CHAIN: &str = r#"
name: c
content_types: [text/plain]
stages:
  - id: s
    filters: [{use: noop, config: {score: 0.7}}]
    branches:
      - when: "score > 0.5 && 'n' in metadata && metadata.n == '3'"
        decide: {decision: REJECT, reason: third}
default_decision: APPROVE
"#;

/// A gateway serving `CHAIN` on a `noop` filter (kept alive with it).
async fn noop_gateway() -> (TestFilter, TestGateway) {
    let f = TestFilter::start(Noop::default()).await;
    let gw = TestGateway::setup()
        .filter("noop", &f.url)
        .chain(CHAIN)
        .start()
        .await
        .unwrap();
    (f, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_answers_every_request_in_order() {
    let (_f, gw) = noop_gateway().await;
    let reqs: Vec<_> = (0..40)
        .map(|i| {
            let mut r = request("c", "text/plain", Payload::Text(format!("item {i}")));
            r.request_id = format!("req-{i}");
            r.metadata.insert("n".into(), (i % 5).to_string());
            r
        })
        .collect();
    let mut out = gw
        .client()
        .await
        .moderate_stream(futures::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut i = 0;
    while let Some(r) = out.message().await.unwrap() {
        assert_eq!(r.request_id, format!("req-{i}"));
        let want = if i % 5 == 3 {
            Decision::Reject
        } else {
            Decision::Approve
        };
        assert_eq!(r.decision(), want, "item {i}");
        i += 1;
    }
    assert_eq!(i, 40);
}

/// A stream the client holds open (it has more to send) when the gateway gets SIGTERM:
/// what was sent is answered, then the stream ends UNAVAILABLE (send the rest elsewhere),
/// and the process exits. Before, graceful shutdown waited on the stream for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_stream_ends_unavailable_on_sigterm_and_the_gateway_exits() {
    let (_f, gw) = noop_gateway().await;
    let (send, requests) = tokio::sync::mpsc::channel(4);
    let mut out = gw
        .client()
        .await
        .moderate_stream(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        let mut r = request("c", "text/plain", Payload::Text(format!("item {i}")));
        r.request_id = format!("req-{i}");
        send.send(r).await.unwrap();
        let answer = out.message().await.unwrap().expect("an answer");
        assert_eq!(answer.request_id, format!("req-{i}"));
        assert_eq!(answer.decision(), Decision::Approve);
    }
    let exited = tokio::spawn(gw.terminate());
    let status = out
        .message()
        .await
        .expect_err("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    let exit = exited.await.unwrap().expect("the gateway exits");
    assert!(exit.success(), "{exit:?}");
    drop(send);
}

/// The gateway's metrics once they contain `needle` (polled for up to 10 s; the test
/// fails with the last text otherwise).
async fn wait_for_metric(gw: &TestGateway, needle: &str) -> String {
    let mut text = String::new();
    for _ in 0..500 {
        text = gw.metrics().await;
        if text.contains(needle) {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no `{needle}` in the metrics:\n{text}");
}

/// A `ModerateStream` of `requests` as `caller`: its answers.
async fn stream_as(
    gw: &TestGateway,
    caller: &str,
    requests: impl futures::Stream<Item = sekisho_proto::gateway::v1::ModerateRequest> + Send + 'static,
) -> tonic::Streaming<sekisho_proto::gateway::v1::ModerateResponse> {
    let mut call = tonic::Request::new(requests);
    call.metadata_mut()
        .insert("x-sekisho-principal", caller.parse().unwrap());
    gw.client()
        .await
        .moderate_stream(call)
        .await
        .unwrap()
        .into_inner()
}

/// A moderate call as `caller` (the `x-sekisho-principal` header the edge sets).
async fn moderate_as(
    gw: &TestGateway,
    caller: &str,
    chain: &str,
) -> Result<sekisho_proto::gateway::v1::ModerateResponse, tonic::Status> {
    let mut r = tonic::Request::new(request(chain, "text/plain", Payload::Text("hi".into())));
    r.metadata_mut()
        .insert("x-sekisho-principal", caller.parse().unwrap());
    gw.client().await.moderate(r).await.map(|r| r.into_inner())
}

/// SIGTERM while a stream's request waits for its caller's place (the one place held by
/// a slow call): the waiting request is not run, the stream answers what ran and ends
/// UNAVAILABLE, and the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_its_callers_place_ends_the_stream_on_sigterm() {
    let f = TestFilter::start(Noop::default()).await;
    let gw = TestGateway::setup()
        .filter("noop", &f.url)
        .chain("name: slow\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{use: noop, timeout: 10s, config: {delay_ms: 3000}}]\ndefault_decision: APPROVE\n")
        .config("callers", serde_json::json!({"default": {"max_in_flight": 1}}))
        .start()
        .await
        .unwrap();
    let (send, requests) = tokio::sync::mpsc::channel(4);
    let mut out = stream_as(
        &gw,
        "s",
        tokio_stream::wrappers::ReceiverStream::new(requests),
    )
    .await;
    for i in 0..2 {
        let mut r = request("slow", "text/plain", Payload::Text(format!("item {i}")));
        r.request_id = format!("req-{i}");
        send.send(r).await.unwrap();
    }
    // The first holds the place (3 s at the filter); the second waits for it.
    wait_for_metric(
        &gw,
        "sekisho_gateway_caller_waits_total{caller=\"other\",limit=\"in_flight\"} 1",
    )
    .await;
    let exited = tokio::spawn(gw.terminate());
    let first = out.message().await.unwrap().expect("the first is answered");
    assert_eq!(first.request_id, "req-0");
    let status = out.message().await.expect_err("then the stream ends");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    assert!(exited.await.unwrap().expect("it exits").success());
    drop(send);
}

/// At the gateway's `max_in_flight` a unary call is shed, and a stream's request waits
/// for a place instead of ending the stream: two slow calls hold both places, the
/// stream's three requests wait (a unary call meanwhile is shed), then are answered in
/// order once the slow calls are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_gateways_limit_a_streams_requests_wait_and_unary_calls_are_shed() {
    let f = TestFilter::start(Noop::default()).await;
    let gw = Arc::new(
        TestGateway::setup()
            .filter("noop", &f.url)
            .chain("name: slow\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{use: noop, timeout: 10s, config: {delay_ms: 3000}}]\ndefault_decision: APPROVE\n")
            .chain(CHAIN)
            .config("max_in_flight", serde_json::json!(2))
            .start()
            .await
            .unwrap(),
    );
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { gw.moderate_text("slow", "hi").await })
        })
        .collect();
    wait_for_metric(&gw, "sekisho_gateway_requests_in_flight 2").await;
    let reqs: Vec<_> = (0..3)
        .map(|i| {
            let mut r = request("c", "text/plain", Payload::Text(format!("item {i}")));
            r.request_id = format!("req-{i}");
            r
        })
        .collect();
    let mut out = stream_as(&gw, "s", futures::stream::iter(reqs)).await;
    wait_for_metric(&gw, "sekisho_gateway_stream_waits_total").await;
    let shed = gw.moderate_text("c", "hi").await.unwrap_err();
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    assert!(
        shed.message().contains("serving its limit of 2 requests"),
        "{shed:?}"
    );
    for i in 0..3 {
        let r = out.message().await.unwrap().expect("an answer");
        assert_eq!(r.request_id, format!("req-{i}"));
        assert_eq!(r.decision(), Decision::Approve);
    }
    assert!(out.message().await.unwrap().is_none());
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap().decision(), Decision::Approve);
    }
}

/// One caller over its own limits is shed (RESOURCE_EXHAUSTED, HTTP 429) while another
/// is served: requests in flight (the barrier filter holds two of `a`'s until a third
/// call reaches it, which only another caller's can), and a rate (`batch`'s bucket of 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_over_its_limits_is_shed_and_the_others_are_served() {
    let barrier = TestFilter::start(Barrier::new("barrier", 3)).await;
    let noop = TestFilter::start(Noop::default()).await;
    let gw = Arc::new(
        TestGateway::setup()
            .filter("barrier", &barrier.url)
            .filter("noop", &noop.url)
            .chain("name: held\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{use: barrier, timeout: 30s}]\ndefault_decision: APPROVE\n")
            .chain(CHAIN)
            .config(
                "callers",
                serde_json::json!({
                    "default": {"max_in_flight": 2},
                    "overrides": {"batch": {"rate": 0.001, "burst": 2}},
                }),
            )
            .start()
            .await
            .unwrap(),
    );
    let held: Vec<_> = (0..2)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { moderate_as(&gw, "a", "held").await })
        })
        .collect();
    // Both of `a`'s calls are in flight (waiting at the barrier) before the third.
    wait_for_metric(&gw, "sekisho_gateway_requests_in_flight 2").await;
    let shed = moderate_as(&gw, "a", "held").await.unwrap_err();
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    assert!(
        shed.message()
            .contains("caller `a` has 2 requests in flight"),
        "{shed:?}"
    );
    // Another caller is served: its call is the barrier's third, which lets all go.
    assert_eq!(
        moderate_as(&gw, "b", "held").await.unwrap().decision(),
        Decision::Approve
    );
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().decision(), Decision::Approve);
    }

    // `batch` has its own bucket of 2 and no in-flight limit.
    for _ in 0..2 {
        moderate_as(&gw, "batch", "c").await.unwrap();
    }
    let shed = moderate_as(&gw, "batch", "c").await.unwrap_err();
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    assert!(shed.message().contains("over its rate"), "{shed:?}");
    // When its next token comes (1,000 s at 0.001 a second): gRPC's retry pushback.
    let pushback: u64 = shed
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("a pushback")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((900_000..=1_000_000).contains(&pushback), "{pushback}");
    // Over JSON too, the header naming the caller: 429.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chains/c:moderate", gw.url))
        .header("x-sekisho-principal", "batch")
        .json(&serde_json::json!({"content": {"contentType": "text/plain", "text": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((900..=1_000).contains(&retry_after), "{retry_after}");
    // Others, and a call naming no caller, are not held back by `batch`.
    moderate_as(&gw, "a", "c").await.unwrap();
    gw.moderate_text("c", "hi").await.unwrap();

    // A stream over its caller's 2 places waits instead of ending: its 20 requests,
    // sent at once, are all answered, in order.
    let reqs: Vec<_> = (0..20)
        .map(|i| {
            let mut r = request("c", "text/plain", Payload::Text(format!("item {i}")));
            r.request_id = format!("req-{i}");
            r
        })
        .collect();
    let mut out = stream_as(&gw, "streamer", futures::stream::iter(reqs)).await;
    for i in 0..20 {
        let r = out.message().await.unwrap().expect("an answer");
        assert_eq!(r.request_id, format!("req-{i}"));
    }
    assert!(out.message().await.unwrap().is_none());

    let text = gw.metrics().await;
    for needle in [
        r#"sekisho_gateway_caller_shed_total{caller="other",limit="in_flight"} 1"#,
        r#"sekisho_gateway_caller_shed_total{caller="batch",limit="rate"} 2"#,
        r#"sekisho_gateway_caller_waits_total{caller="other",limit="in_flight"}"#,
    ] {
        assert!(text.contains(needle), "missing `{needle}` in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_openapi_are_served() {
    let (_f, gw) = noop_gateway().await;
    for _ in 0..3 {
        gw.moderate_text("c", "hi").await.unwrap();
    }
    let _ = gw.moderate_text("missing", "hi").await.unwrap_err();
    // Refused before its chain is looked up (no content type): the caller's name for the
    // chain must not become a series either (schemathesis found such names there).
    let refused = gw
        .client()
        .await
        .moderate(request("made-up-name", "", Payload::Text("hi".into())))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let text = gw.metrics().await;
    for needle in [
        r#"sekisho_gateway_requests_total{chain="c",code="ok"} 3"#,
        r#"sekisho_gateway_requests_total{chain="unknown",code="not_found"} 1"#,
        r#"sekisho_gateway_requests_total{chain="unknown",code="invalid_argument"} 1"#,
        r#"sekisho_gateway_decisions_total{chain="c",decision="APPROVE",reason="default"} 3"#,
        r#"sekisho_gateway_request_duration_seconds_count{chain="c"} 3"#,
        r#"sekisho_gateway_stage_duration_seconds_count{chain="c",stage="s"} 3"#,
        r#"sekisho_gateway_filter_duration_seconds_count{chain="c",stage="s",filter="noop"} 3"#,
        r#"sekisho_gateway_filter_score_bucket{filter="noop",le="0.7"} 3"#,
        "sekisho_gateway_requests_in_flight 0",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in\n{text}");
    }
    assert!(!text.contains("made-up-name"), "{text}");
    let doc: serde_json::Value = reqwest::get(format!("{}/openapi.json", gw.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/v1/chains/{chain}:moderate"]["post"].is_object());
    assert!(doc["paths"]["/v1/filters"]["get"].is_object());
    // What a request must hold is in the document (google.api.field_behavior).
    let schemas = &doc["components"]["schemas"];
    // The body is the request less what the path sets (the chain).
    let body = &doc["paths"]["/v1/chains/{chain}:moderate"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    assert_eq!(body["required"], serde_json::json!(["content"]));
    assert!(body["properties"].get("chain").is_none(), "{body}");
    let content = &schemas["sekisho.filter.v1.Content"];
    assert_eq!(content["required"], serde_json::json!(["contentType"]));
    assert_eq!(content["properties"]["contentType"]["minLength"], 1);
    assert_eq!(
        content["oneOf"],
        serde_json::json!([{"required": ["data"]}, {"required": ["text"]}, {"required": ["features"]}])
    );
    assert_eq!(content["additionalProperties"], false);

    // A method a path does not answer: 405, and which methods it does (RFC 9110).
    let http = reqwest::Client::new();
    for (method, path, allow) in [
        ("TRACE", "/v1/filters", "GET"),
        // `c:moderate` is the moderate verb, not a chain named so.
        ("GET", "/v1/chains/c:moderate", "POST"),
    ] {
        let r = http
            .request(method.parse().unwrap(), format!("{}{path}", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], allow, "{method} {path}");
    }
}

/// The second-highest score: something the built-ins cannot express.
struct SecondHighest;

#[async_trait::async_trait]
impl Aggregator for SecondHighest {
    async fn aggregate(
        &self,
        _: StageRef<'_>,
        inputs: &[AggregateInput<'_>],
    ) -> Result<f64, String> {
        let mut s: Vec<f64> = inputs.iter().map(|i| i.score).collect();
        s.sort_by(|a, b| b.total_cmp(a));
        Ok(s.get(1).copied().unwrap_or(s[0]))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_aggregator_registered_in_code_is_used() {
    let f = TestFilter::start(Noop::default()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.yaml"),
        "name: c\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{use: noop, as: a, config: {score: 0.9}}, {use: noop, as: b, config: {score: 0.4}}, {use: noop, as: c, config: {score: 0.6}}]\n    aggregate: {custom: second-highest}\ndefault_decision: APPROVE\n",
    )
    .unwrap();
    let config = GatewayConfig {
        listen: "127.0.0.1:0".into(),
        chains_dir: Some(dir.path().to_owned()),
        filters: [(
            "noop".to_owned(),
            StaticFilter {
                endpoints: vec![f.url.clone()],
            },
        )]
        .into(),
        ..GatewayConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = GatewayServer::new(config)
        .custom_aggregator(
            "second-highest",
            Arc::new(|_| Ok(Arc::new(SecondHighest) as Arc<dyn Aggregator>)),
        )
        .start(async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    let mut client = GatewayClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap();
    let r = client
        .moderate(request("c", "text/plain", Payload::Text("hi".into())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.stages[0].score, 0.6);
    assert_eq!(r.stages[0].aggregator, "custom:second-highest");
    let _ = stop.send(());
    running.wait().await.unwrap();
}
