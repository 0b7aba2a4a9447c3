//! The chainstore process: validated writes, versions, stale-write refusal, rollback,
//! and a Watch that resumes after a restart without gaps.

use sekisho_proto::chainstore::v1::{self as proto, watch_event::Kind};
use sekisho_tests::TestChainstore;
use tonic::Code;

fn doc(name: &str, reason: &str) -> String {
    format!(
        "name: {name}\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{{use: keywords}}]\n    branches:\n      - when: \"score > 0.5\"\n        decide: {{decision: REVIEW, reason: {reason}}}\ndefault_decision: APPROVE\n"
    )
}

fn create(document: String) -> proto::CreateChainRequest {
    proto::CreateChainRequest {
        document,
        author: "ops".into(),
        comment: "first".into(),
    }
}

fn update(name: &str, document: String, expected_version: u64) -> proto::UpdateChainRequest {
    proto::UpdateChainRequest {
        name: name.into(),
        document,
        expected_version,
        author: "ops".into(),
        comment: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_validated_versioned_and_never_merged() {
    let dir = tempfile::tempdir().unwrap();
    let cs = TestChainstore::start(&dir.path().join("chains.db"))
        .await
        .unwrap();
    let mut c = cs.client().await;

    let v1 = c
        .create_chain(create(doc("comments", "r1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v1.name.as_str(), v1.version), ("comments", 1));
    let e = c
        .create_chain(create(doc("comments", "again")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);

    // Invalid documents are refused with the path of each problem.
    let bad = doc("comments", "r2").replace("score > 0.5", "scor > 0.5");
    let e = c
        .update_chain(update("comments", bad, 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("stages[0].branches[0].when: unknown variable `scor`"),
        "{}",
        e.message()
    );
    let e = c
        .create_chain(create("name: x\nstages: [\n".into()))
        .await
        .unwrap_err();
    assert!(e.message().contains("line "), "{}", e.message());

    let v2 = c
        .update_chain(update("comments", doc("comments", "r2"), 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v2.version, 2);
    // A writer that read version 1 is refused, and told the current version.
    let e = c
        .update_chain(update("comments", doc("comments", "stale"), 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Aborted);
    assert!(
        e.message().contains("is at version 2, not 1"),
        "{}",
        e.message()
    );
    let e = c
        .update_chain(update("comments", doc("comments", "r3"), 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .update_chain(update("comments", doc("other", "r3"), 2))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("names chain `other`"),
        "{}",
        e.message()
    );

    // Rollback is a new version with the old document.
    let v3 = c
        .rollback(proto::RollbackRequest {
            name: "comments".into(),
            to_version: 1,
            expected_version: 2,
            author: "ops".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v3.version, v3.document.clone()), (3, v1.document.clone()));

    c.delete_chain(proto::DeleteChainRequest {
        name: "comments".into(),
        expected_version: 3,
    })
    .await
    .unwrap();
    let e = c
        .get_chain(proto::GetChainRequest {
            name: "comments".into(),
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let history = c
        .list_versions(proto::ListVersionsRequest {
            name: "comments".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    let summary: Vec<(u64, bool, &str)> = history
        .iter()
        .map(|v| (v.version, v.deleted, v.comment.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, false, "first"),
            (2, false, ""),
            (3, false, "rollback to version 1"),
            (4, true, "deleted")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_and_conflicts_over_http_json() {
    let dir = tempfile::tempdir().unwrap();
    let cs = TestChainstore::start(&dir.path().join("chains.db"))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let r: serde_json::Value = http
        .post(format!("{}/v1/chains:validate", cs.url))
        .json(&serde_json::json!({"document": "name: c\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{use: k}]\n    branches:\n      - {when: \"true\", goto: nowhere}\n"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["valid"], false, "{r}");
    assert_eq!(
        r["problems"][0]["path"], "stages[0].branches[0].goto",
        "{r}"
    );
    let r: serde_json::Value = http
        .post(format!("{}/v1/chains:validate", cs.url))
        .json(&serde_json::json!({"document": "name: c\nbogus: 1\n"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["problems"][0]["line"], 2, "{r}");

    let created = http
        .post(format!("{}/v1/chains", cs.url))
        .json(&serde_json::json!({"document": doc("c", "r")}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let stale = http
        .put(format!("{}/v1/chains/c", cs.url))
        .json(&serde_json::json!({"document": doc("c", "r2"), "expectedVersion": "7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 409);
    let body: serde_json::Value = stale.json().await.unwrap();
    assert_eq!(body["error"]["status"], "ABORTED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is at version 1, not 7")
    );
    let got: serde_json::Value = http
        .get(format!("{}/v1/chains/c", cs.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["version"], "1");
}

async fn next_events(
    stream: &mut tonic::Streaming<proto::WatchEvent>,
    n: usize,
) -> Vec<(Kind, String, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10s")
            .unwrap()
            .expect("the stream is open");
        let c = e.chain.unwrap();
        out.push((Kind::try_from(e.kind).unwrap(), c.name, e.revision));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_a_restart_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let cs = TestChainstore::start(&dir.path().join("chains.db"))
        .await
        .unwrap();
    let mut c = cs.client().await;
    for n in ["a", "b", "c"] {
        c.create_chain(create(doc(n, "r"))).await.unwrap();
    }
    let mut w = c
        .watch(proto::WatchRequest { from_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = next_events(&mut w, 3).await;
    assert_eq!(
        first
            .iter()
            .map(|(k, n, _)| (*k, n.as_str()))
            .collect::<Vec<_>>(),
        [(Kind::Put, "a"), (Kind::Put, "b"), (Kind::Put, "c")]
    );
    // A change made while watching arrives live.
    c.delete_chain(proto::DeleteChainRequest {
        name: "b".into(),
        expected_version: 1,
    })
    .await
    .unwrap();
    let live = next_events(&mut w, 1).await;
    assert_eq!((live[0].0, live[0].1.as_str()), (Kind::Delete, "b"));
    let last = live[0].2;

    // The chainstore dies; changes happen before the watcher is back.
    drop(w);
    let cs = cs.restart().await.unwrap();
    let mut c = cs.client().await;
    c.create_chain(create(doc("d", "r"))).await.unwrap();
    c.update_chain(update("a", doc("a", "r2"), 1))
        .await
        .unwrap();
    let mut w = c
        .watch(proto::WatchRequest {
            from_revision: last,
        })
        .await
        .unwrap()
        .into_inner();
    let resumed = next_events(&mut w, 2).await;
    assert_eq!(
        resumed
            .iter()
            .map(|(k, n, r)| (*k, n.as_str(), *r))
            .collect::<Vec<_>>(),
        [(Kind::Put, "d", last + 1), (Kind::Put, "a", last + 2)],
        "nothing lost, nothing repeated"
    );
}

/// SIGTERM with a watcher attached: the watch ends and the process exits. A gateway's
/// Watch never ends on its own, and the graceful shutdown used to wait for it for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_chainstore_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cs = TestChainstore::start(&dir.path().join("chains.db"))
        .await
        .unwrap();
    let mut c = cs.client().await;
    c.create_chain(create(doc("a", "r"))).await.unwrap();
    let mut w = c
        .watch(proto::WatchRequest { from_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    next_events(&mut w, 1).await;
    let status = cs.terminate().await.expect("it exits");
    assert!(status.success(), "{status}");
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), w.message())
        .await
        .expect("the watch ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
}

/// Filters are checked against what a real gateway's discovery found: the name is known,
/// the chain's content types are accepted, the config override fits the filter's schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_checked_against_discovery() {
    let keywords =
        sekisho_tests::TestFilter::start(sekisho_filters_samples::Keywords::default()).await;
    let gw = sekisho_tests::TestGateway::setup()
        .filter("keywords", &keywords.url)
        .start()
        .await
        .unwrap();
    gw.wait_described(&["keywords"]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cs = TestChainstore::start_checking(&dir.path().join("chains.db"), &gw.url)
        .await
        .unwrap();
    let mut c = cs.client().await;

    c.create_chain(create(doc("fits", "r"))).await.unwrap();

    let cases = [
        (
            doc("typo", "r").replace("use: keywords", "use: keywrods"),
            "stages[0].filters[0].use: no filter named `keywrods` is known to discovery; known: keywords",
        ),
        (
            doc("images", "r").replace("[text/plain]", "[image/png]"),
            "stages[0].filters[0].use: `keywords` accepts text/*, not `image/png`",
        ),
        (
            doc("config", "r").replace(
                "{use: keywords}",
                "{use: keywords, config: {case_sensitive: \"yes\"}}",
            ),
            "stages[0].filters[0].config.case_sensitive: ",
        ),
    ];
    for (document, expected) in cases {
        let e = c.create_chain(create(document.clone())).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(expected), "{}", e.message());
        // The dry run reports the same problem at the same path, and saves nothing.
        let v = c
            .validate_chain(proto::ValidateChainRequest { document })
            .await
            .unwrap()
            .into_inner();
        assert!(!v.valid);
        let path = expected.split(": ").next().unwrap();
        assert!(v.problems.iter().any(|p| p.path == path), "{v:?}");
    }
    let names: Vec<String> = c
        .list_chains(proto::ListChainsRequest {})
        .await
        .unwrap()
        .into_inner()
        .chains
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["fits"]);
}

/// With no gateway answering, writes are checked for structure only and `Validate` says
/// which check was not made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_gateway_filters_are_not_checked_and_validate_says_so() {
    // A port that was free a moment ago: nothing answers there.
    let dead = format!("http://127.0.0.1:{}", sekisho_tests::free_port());
    let dir = tempfile::tempdir().unwrap();
    let cs = TestChainstore::start_checking(&dir.path().join("chains.db"), &dead)
        .await
        .unwrap();
    let mut c = cs.client().await;
    let document = doc("later", "r").replace("use: keywords", "use: not-deployed-yet");
    let v = c
        .validate_chain(proto::ValidateChainRequest {
            document: document.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid, "{v:?}");
    assert_eq!(v.warnings.len(), 1, "{v:?}");
    assert!(
        v.warnings[0].message.contains("filters were not checked"),
        "{v:?}"
    );
    c.create_chain(create(document)).await.unwrap();
}
