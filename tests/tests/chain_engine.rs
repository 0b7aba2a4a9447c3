//! Chain semantics through a real gateway process and real filter servers.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use sekisho_filters_samples::Noop;
use sekisho_proto::aggregator::v1 as aproto;
use sekisho_proto::gateway::v1::{Decision, Outcome};
use sekisho_tests::filters::{Answers, Barrier, Boxes, Echo, Flaky};
use sekisho_tests::{TestFilter, TestGateway};

fn noop() -> Noop {
    Noop::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filters_of_a_stage_run_concurrently() {
    // Barrier answers only once all three calls are waiting at once.
    let f = TestFilter::start(Barrier::new("barrier", 3)).await;
    let gw = TestGateway::setup()
        .filter("barrier", &f.url)
        .chain(
            r#"
name: c
content_types: [text/plain]
defaults: {timeout: 30s, retries: 0}
stages:
  - id: s
    filters: [{use: barrier, as: a}, {use: barrier, as: b}, {use: barrier, as: c}]
default_decision: APPROVE
"#,
        )
        .start()
        .await
        .unwrap();
    let r = gw.moderate_text("c", "hi").await.unwrap();
    assert_eq!(r.decision(), Decision::Approve, "{r:#?}");
    assert!(
        r.stages[0]
            .filters
            .iter()
            .all(|f| f.outcome() == Outcome::Ok),
        "{r:#?}"
    );
}

struct Product;

#[tonic::async_trait]
impl aproto::aggregator_server::Aggregator for Product {
    async fn aggregate(
        &self,
        req: tonic::Request<aproto::AggregateRequest>,
    ) -> Result<tonic::Response<aproto::AggregateResponse>, tonic::Status> {
        let score = req.into_inner().inputs.iter().map(|i| i.score).product();
        Ok(tonic::Response::new(aproto::AggregateResponse { score }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_aggregator_computes_the_stage_score() {
    let f = TestFilter::start(noop()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agg_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(aproto::aggregator_server::AggregatorServer::new(Product))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let three = |p: &str| {
        format!(
            "[{{use: noop, as: {p}x, config: {{score: 0.2}}}}, {{use: noop, as: {p}y, config: {{score: 0.8}}}}, {{use: noop, as: {p}z, config: {{score: 0.5}}}}]"
        )
    };
    let chain = format!(
        r#"
name: aggs
content_types: [text/plain]
stages:
  - {{id: min, filters: {}, aggregate: min}}
  - {{id: max, filters: {}, aggregate: max}}
  - {{id: mean, filters: {}, aggregate: mean}}
  - {{id: wmean, filters: {}, aggregate: {{builtin: weighted_mean, weights: {{dx: 3, dy: 1}}}}}}
  - {{id: vote, filters: {}, aggregate: {{builtin: vote, k: 2, threshold: 0.5}}}}
  - {{id: vote3, filters: {}, aggregate: {{builtin: vote, k: 3, threshold: 0.5}}}}
  - {{id: remote, filters: {}, aggregate: {{remote: product}}}}
default_decision: APPROVE
"#,
        three("a"),
        three("b"),
        three("c"),
        three("d"),
        three("e"),
        three("f"),
        three("g")
    );
    let gw = TestGateway::setup()
        .filter("noop", &f.url)
        .aggregator("product", &agg_url)
        .chain(&chain)
        .start()
        .await
        .unwrap();
    let r = gw.moderate_text("aggs", "hi").await.unwrap();
    let scores: Vec<(String, f64)> = r.stages.iter().map(|s| (s.id.clone(), s.score)).collect();
    let expect = [
        ("min", 0.2),
        ("max", 0.8),
        ("mean", 0.5),
        ("wmean", (3.0 * 0.2 + 0.8 + 0.5) / 5.0),
        ("vote", 1.0),
        ("vote3", 0.0),
        ("remote", 0.2 * 0.8 * 0.5),
    ];
    assert_eq!(scores.len(), expect.len(), "{r:#?}");
    for ((id, got), (want_id, want)) in scores.iter().zip(expect) {
        assert_eq!(id, want_id);
        assert!((got - want).abs() < 1e-9, "stage {id}: {got} != {want}");
    }
    assert_eq!(r.decision(), Decision::Approve);
    assert_eq!(r.reason, "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_rule_that_holds_acts_goto_skips_and_default_ends() {
    let f = TestFilter::start(noop()).await;
    let gw = TestGateway::setup()
        .filter("noop", &f.url)
        .chain(
            r#"
name: c
content_types: [text/plain]
stages:
  - id: a
    filters: [{use: noop, as: n1, config: {score: 0.3}}]
    branches:
      - when: "metadata.route == 'reject' && score > 0.2"
        decide: {decision: REJECT, reason: first}
      - when: "metadata.route == 'reject'"
        decide: {decision: REVIEW, reason: second}
      - when: "metadata.route == 'jump'"
        goto: c
  - id: b
    filters: [{use: noop, as: n2}]
  - id: c
    filters: [{use: noop, as: n3}]
    branches:
      - when: "stages.a.score > 0.9 || filters.n1.score > 0.9"
        decide: {decision: REJECT, reason: never}
default_decision: APPROVE
"#,
        )
        .start()
        .await
        .unwrap();
    let run = |route: &'static str| {
        let mut req = sekisho_tests::request(
            "c",
            "text/plain",
            sekisho_proto::filter::v1::content::Payload::Text("hi".into()),
        );
        req.metadata.insert("route".into(), route.into());
        gw.moderate(req)
    };
    let r = run("reject").await.unwrap();
    assert_eq!(
        (r.decision(), r.reason.as_str()),
        (Decision::Reject, "first")
    );
    assert_eq!(r.stages.len(), 1);
    assert_eq!(
        (r.stages[0].branch, r.stages[0].next.as_str()),
        (0, "decide")
    );

    let r = run("jump").await.unwrap();
    let ids: Vec<&str> = r.stages.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a", "c"]);
    assert_eq!(r.stages[0].next, "goto:c");
    assert_eq!(
        (r.decision(), r.reason.as_str()),
        (Decision::Approve, "default")
    );

    let r = run("other").await.unwrap();
    let ids: Vec<&str> = r.stages.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(r.stages[2].next, "end");
    assert_eq!(r.decision(), Decision::Approve);
}

fn flaky(name: &str, fails: u32, unavailable: bool) -> Flaky {
    Flaky {
        name: name.into(),
        fails,
        unavailable,
        calls: Arc::new(AtomicU32::new(0)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_and_others_are_not() {
    let twice = TestFilter::start(flaky("twice", 2, true)).await;
    let twice_again = TestFilter::start(flaky("twice-again", 2, true)).await;
    let bad = TestFilter::start(flaky("bad", 1, false)).await;
    let gw = TestGateway::setup()
        .filter("twice", &twice.url)
        .filter("twice-again", &twice_again.url)
        .filter("bad", &bad.url)
        .chain("name: enough\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{use: twice, retries: 2, backoff: 1ms}]\ndefault_decision: APPROVE\n")
        .chain("name: short\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{use: twice-again, retries: 1, backoff: 1ms}]\ndefault_decision: APPROVE\n")
        .chain("name: hopeless\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{use: bad, retries: 3, backoff: 1ms}]\ndefault_decision: APPROVE\n")
        .start()
        .await
        .unwrap();

    let r = gw.moderate_text("enough", "hi").await.unwrap();
    let f = &r.stages[0].filters[0];
    assert_eq!((f.attempts, f.outcome()), (3, Outcome::Ok), "{r:#?}");
    assert_eq!(r.decision(), Decision::Approve);

    let r = gw.moderate_text("short", "hi").await.unwrap();
    let f = &r.stages[0].filters[0];
    assert_eq!(
        (f.attempts, f.outcome()),
        (2, Outcome::ErrorReview),
        "{r:#?}"
    );
    assert!(f.error.contains("failing on purpose (2)"), "{}", f.error);
    assert_eq!(
        (r.decision(), r.reason.as_str()),
        (Decision::Review, "filter_error")
    );

    // INVALID_ARGUMENT is the item's fault: no retry.
    let r = gw.moderate_text("hopeless", "hi").await.unwrap();
    let f = &r.stages[0].filters[0];
    assert_eq!(
        (f.attempts, f.outcome()),
        (1, Outcome::ErrorReview),
        "{r:#?}"
    );
    assert_eq!(r.decision(), Decision::Review);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_follows_the_filters_on_error() {
    let f = TestFilter::start(noop()).await;
    let chain = |name: &str, on_error: &str| {
        format!(
            r#"
name: {name}
content_types: [text/plain]
stages:
  - id: s
    filters:
      - {{use: noop, as: slow, timeout: 150ms, retries: 0, on_error: {on_error}, config: {{delay_ms: 5000}}}}
      - {{use: noop, as: quick, config: {{score: 0.1}}}}
    branches:
      - when: "score >= 0.5"
        decide: {{decision: REJECT, reason: high}}
default_decision: APPROVE
"#
        )
    };
    let gw = TestGateway::setup()
        .filter("noop", &f.url)
        .chain(&chain("on-review", "review"))
        .chain(&chain("on-skip", "skip"))
        .chain(&chain("on-score", "{score: 0.9}"))
        .chain(&chain("on-fail", "fail"))
        .start()
        .await
        .unwrap();

    let r = gw.moderate_text("on-review", "hi").await.unwrap();
    let slow = &r.stages[0].filters[0];
    assert_eq!(slow.outcome(), Outcome::ErrorReview);
    assert!(
        slow.error.starts_with("DeadlineExceeded: "),
        "{}",
        slow.error
    );
    assert_eq!(
        (r.decision(), r.reason.as_str()),
        (Decision::Review, "filter_error")
    );

    let r = gw.moderate_text("on-skip", "hi").await.unwrap();
    assert_eq!(r.stages[0].filters[0].outcome(), Outcome::ErrorSkipped);
    assert_eq!(r.stages[0].score, 0.1);
    assert_eq!(r.decision(), Decision::Approve);

    let r = gw.moderate_text("on-score", "hi").await.unwrap();
    assert_eq!(r.stages[0].filters[0].outcome(), Outcome::ErrorScored);
    assert_eq!(r.stages[0].score, 0.9);
    assert_eq!(
        (r.decision(), r.reason.as_str()),
        (Decision::Reject, "high")
    );

    let e = gw.moderate_text("on-fail", "hi").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(
        e.message().contains("filter `slow` failed"),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_filters_are_reported_but_never_counted() {
    let f = TestFilter::start(noop()).await;
    let gw = TestGateway::setup()
        .filter("noop", &f.url)
        .chain(
            r#"
name: c
content_types: [text/plain]
stages:
  - id: s
    filters:
      - {use: noop, as: trusted, config: {score: 0.1}}
      - {use: noop, as: candidate, shadow: true, config: {score: 1.0}}
      - {use: noop, as: broken_candidate, shadow: true, timeout: 100ms, retries: 0, config: {delay_ms: 5000}}
    aggregate: max
    branches:
      - when: "score >= 0.5"
        decide: {decision: REJECT, reason: high}
default_decision: APPROVE
"#,
        )
        .start()
        .await
        .unwrap();
    let r = gw.moderate_text("c", "hi").await.unwrap();
    assert_eq!(r.decision(), Decision::Approve, "{r:#?}");
    assert_eq!(r.stages[0].score, 0.1);
    let cand = &r.stages[0].filters[1];
    assert!(cand.shadow);
    assert_eq!((cand.score, cand.outcome()), (1.0, Outcome::Ok));
    // A broken shadow filter never sends an item to REVIEW.
    assert_eq!(r.stages[0].filters[2].outcome(), Outcome::ErrorSkipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_overrides_and_earlier_results_reach_the_filter() {
    let echo = TestFilter::start(Echo {
        name: "echo".into(),
    })
    .await;
    let boxes = TestFilter::start(Boxes).await;
    let gw = TestGateway::setup()
        .filter("echo", &echo.url)
        .filter("boxes", &boxes.url)
        .chain(
            r#"
name: c
content_types: [text/plain]
stages:
  - id: find
    filters: [{use: boxes}, {use: echo, as: plain}]
  - id: check
    filters:
      - {use: echo, as: low, config: {threshold: 0.3, tag: a}}
      - {use: echo, as: high, config: {threshold: 0.7, tag: b}}
default_decision: APPROVE
"#,
        )
        .chain(
            "name: typo\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{use: echo, config: {treshold: 1}}]\ndefault_decision: APPROVE\n",
        )
        .start()
        .await
        .unwrap();
    let r = gw.moderate_text("c", "hi").await.unwrap();
    assert_eq!(r.decision(), Decision::Approve, "{r:#?}");
    let plain = &r.stages[0].filters[1];
    assert_eq!(
        plain.labels["threshold"], 0.0,
        "no override: the filter's default"
    );
    assert_eq!(plain.labels["earlier_stages"], 0.0);
    // The gateway's deadline for the call (the chain's default timeout, 800 ms) reaches
    // the filter through the SDK.
    let left = plain.labels["deadline_left_ms"];
    assert!(left > 0.0 && left <= 800.0, "{left}");
    let low = &r.stages[1].filters[0];
    let high = &r.stages[1].filters[1];
    assert_eq!(
        (low.labels["threshold"], high.labels["threshold"]),
        (0.3, 0.7)
    );
    assert_eq!(
        low.labels["earlier_regions"], 1.0,
        "the face box from stage one"
    );
    assert_eq!(low.labels["earlier_stages"], 1.0);
    let tag = |f: &sekisho_proto::gateway::v1::FilterTrace| {
        sekisho_proto::struct_to_json(f.details.as_ref().unwrap())["tag"].clone()
    };
    assert_eq!(
        (tag(low), tag(high)),
        (serde_json::json!("a"), serde_json::json!("b"))
    );
    assert_eq!(r.stages[0].filters[0].regions.len(), 1);

    // A config the filter does not know is refused by the filter, and the item goes to REVIEW.
    let r = gw.moderate_text("typo", "hi").await.unwrap();
    assert_eq!(r.decision(), Decision::Review);
    assert!(
        r.stages[0].filters[0]
            .error
            .contains("unknown field `treshold`"),
        "{r:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_filter_works_in_a_chain() {
    let py = sekisho_tests::PythonFilter::start().await.unwrap();
    let gw = TestGateway::setup()
        .filter("links", &py.url)
        .chain(
            r#"
name: c
content_types: [text/plain]
stages:
  - id: s
    filters: [{use: links, config: {max_links: 3}}]
    branches:
      - when: "filters.links.labels.link_count >= 3.0"
        decide: {decision: REJECT, reason: link_spam}
default_decision: APPROVE
"#,
        )
        .start()
        .await
        .unwrap();
    gw.wait_described(&["links"]).await.unwrap();
    let r = gw
        .moderate_text(
            "c",
            "see http://a.example www.b.example https://c.example/x",
        )
        .await
        .unwrap();
    assert_eq!(
        (r.decision(), r.reason.as_str()),
        (Decision::Reject, "link_spam"),
        "{r:#?}"
    );
    assert_eq!(r.stages[0].filters[0].score, 1.0);
    let r = gw.moderate_text("c", "no links here").await.unwrap();
    assert_eq!(r.decision(), Decision::Approve);
    let list = gw
        .client()
        .await
        .list_filters(sekisho_proto::gateway::v1::ListFiltersRequest {})
        .await
        .unwrap()
        .into_inner();
    let d = list.filters[0].descriptor.as_ref().unwrap();
    assert_eq!(d.info["language"], "python");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_sampling_marks_approvals_only() {
    let f = TestFilter::start(noop()).await;
    let chain = |name: &str, rate: f64, decision: &str| {
        format!(
            "name: {name}\ncontent_types: [text/plain]\naudit_sample_rate: {rate}\nstages:\n  - id: s\n    filters: [{{use: noop}}]\ndefault_decision: {decision}\n"
        )
    };
    let gw = TestGateway::setup()
        .filter("noop", &f.url)
        .chain(&chain("always", 1.0, "APPROVE"))
        .chain(&chain("never", 0.0, "APPROVE"))
        .chain(&chain("rejects", 1.0, "REJECT"))
        .start()
        .await
        .unwrap();
    for _ in 0..5 {
        assert!(gw.moderate_text("always", "hi").await.unwrap().audit);
        assert!(!gw.moderate_text("never", "hi").await.unwrap().audit);
        let r = gw.moderate_text("rejects", "hi").await.unwrap();
        assert_eq!(r.decision(), Decision::Reject);
        assert!(!r.audit, "only APPROVE is sampled for a spot check");
    }
}

/// A verdict the gateway cannot take as it is — a label that is NaN or infinite, more
/// labels or regions than a verdict may carry, a region that is not finite — is the
/// filter failing (its `on_error`, here REVIEW), never a result. Before, every one but
/// NaN was approved: a rule that rejects on `labels.bad > 0.5` is false for -inf (NaN
/// made the rule fail, REVIEW with `rule_error`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_that_is_not_usable_is_the_filter_failing() {
    let f = TestFilter::start(Answers).await;
    let chain = |broken: &str| {
        format!(
            r#"
name: {}
content_types: [text/plain]
stages:
  - id: s
    filters: [{{use: answers, as: a, config: {{broken: {broken}}}}}]
    branches:
      - when: "filters.a.labels.bad > 0.5"
        decide: {{decision: REJECT, reason: bad}}
default_decision: APPROVE
"#,
            broken.replace('_', "-")
        )
    };
    let broken = [
        (
            "nan_label",
            "label `bad` is NaN, not a number a rule can use",
        ),
        (
            "infinite_label",
            "label `bad` is -inf, not a number a rule can use",
        ),
        ("many_labels", "the verdict has 301 labels; the most is 256"),
        (
            "many_regions",
            "the verdict has 5000 regions; the most is 4096",
        ),
        (
            "nan_region",
            "region 0 has a coordinate or score that is not finite",
        ),
    ];
    let mut setup = TestGateway::setup()
        .filter("answers", &f.url)
        .chain(&chain("fine"));
    for (name, _) in broken {
        setup = setup.chain(&chain(name));
    }
    let gw = setup.start().await.unwrap();
    let r = gw.moderate_text("fine", "hi").await.unwrap();
    assert_eq!(r.decision(), Decision::Approve, "{r:#?}");
    for (name, message) in broken {
        let r = gw
            .moderate_text(&name.replace('_', "-"), "hi")
            .await
            .unwrap();
        let a = &r.stages[0].filters[0];
        assert_eq!(a.outcome(), Outcome::ErrorReview, "{name}: {r:#?}");
        assert!(a.error.contains(message), "{name}: {}", a.error);
        assert_eq!(
            (r.decision(), r.reason.as_str()),
            (Decision::Review, "filter_error"),
            "{name}"
        );
        // The process still serves.
        assert_eq!(
            gw.moderate_text("fine", "hi").await.unwrap().decision(),
            Decision::Approve
        );
    }
}
