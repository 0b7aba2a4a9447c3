//! Bad input gets a clear error, loses nothing, and leaves the gateway serving.

use bytes::Bytes;
use sekisho_filters_samples::Noop;
use sekisho_jsonproxy::RawCodec;
use sekisho_proto::filter::v1::content::Payload;
use sekisho_proto::gateway::v1::{Decision, ListChainsRequest};
use sekisho_tests::filters::Echo;
use sekisho_tests::{TestFilter, TestGateway, request};
use tonic::Code;

const GOOD: &str = "name: good\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{use: noop}]\ndefault_decision: APPROVE\n";

/// The gateway under test and the two filters it calls (kept alive as long as it).
struct Served {
    gw: TestGateway,
    _filters: [TestFilter; 2],
}

/// Starts a noop and an echo filter and a gateway with the chains above, good and bad.
async fn serve() -> Served {
    let noop = TestFilter::start(Noop::default()).await;
    let echo = TestFilter::start(Echo {
        name: "echo".into(),
    })
    .await;
    let gw = gateway(&noop, &echo).await;
    Served {
        gw,
        _filters: [noop, echo],
    }
}

async fn gateway(noop: &TestFilter, echo: &TestFilter) -> TestGateway {
    let mut setup = TestGateway::setup()
        .filter("noop", &noop.url)
        .filter("echo", &echo.url)
        .chain_file("good.yaml", GOOD)
        .chain_file(
            "any.yaml",
            "name: any\ncontent_types: [\"*/*\"]\nstages:\n  - id: s\n    filters: [{use: echo}]\ndefault_decision: APPROVE\n",
        )
        // A typo on line 6: the file is refused, the others still load.
        .chain_file(
            "broken.yaml",
            "name: broken\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters:\n      - usee: noop\n",
        )
        .chain_file(
            "cyclic.yaml",
            "name: cyclic\ncontent_types: [text/plain]\nstages:\n  - id: a\n    filters: [{use: noop}]\n  - id: b\n    filters: [{use: noop, as: n2}]\n    branches:\n      - when: \"true\"\n        goto: a\n",
        );
    // A rule that evaluating would overflow the stack and abort the process: refused.
    setup = setup.chain_file(
        "deep.yaml",
        &format!(
            "name: deep\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{{use: noop}}]\n    branches:\n      - when: \"1{} > 0\"\n        decide: {{decision: APPROVE, reason: r}}\n",
            "+1".repeat(1999)
        ),
    );
    setup.max_request_bytes = Some(64 * 1024);
    setup.start().await.unwrap()
}

async fn still_serving(gw: &mut TestGateway) {
    assert!(gw.is_alive());
    let r = gw.moderate_text("good", "hello").await.unwrap();
    assert_eq!(r.decision(), Decision::Approve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bad_requests_get_clear_statuses() {
    let Served { mut gw, _filters } = serve().await;

    let e = gw.moderate_text("nope", "x").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message()
            .contains("chain `nope` is not known; known chains: any, good"),
        "{}",
        e.message()
    );

    let e = gw
        .moderate(request(
            "good",
            "image/png",
            Payload::Data(Bytes::from_static(b"\x89PNG")),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("does not accept `image/png`"),
        "{}",
        e.message()
    );

    // The chain takes anything, but its filter only text: refused before any call.
    gw.wait_described(&["echo"]).await.unwrap();
    let e = gw
        .moderate(request(
            "any",
            "image/png",
            Payload::Data(Bytes::from_static(b"\x89PNG")),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("filter `echo` does not accept `image/png`"),
        "{}",
        e.message()
    );

    let mut no_content = request("good", "text/plain", Payload::Text("x".into()));
    no_content.content = None;
    let e = gw.moderate(no_content).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "content: missing")
    );

    let e = gw
        .moderate(request("good", "text/plain", Payload::Data(Bytes::new())))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = gw
        .moderate(request("good", "text/plain", Payload::Text(String::new())))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::InvalidArgument,
            "content.text: empty; there is nothing to moderate"
        )
    );

    // Rules' cost estimates count on at most 128 metadata entries.
    let mut many = request("good", "text/plain", Payload::Text("x".into()));
    many.metadata = (0..128).map(|i| (format!("k{i}"), "v".into())).collect();
    let r = gw.moderate(many.clone()).await.unwrap();
    assert_eq!(r.decision(), Decision::Approve);
    many.metadata.insert("one-more".into(), "v".into());
    let e = gw.moderate(many).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::InvalidArgument,
            "metadata: 129 entries; the limit is 128"
        )
    );

    let big = Bytes::from(vec![b'a'; 100 * 1024]);
    let e = gw
        .moderate(request("good", "text/plain", Payload::Data(big)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("the limit is 65536 bytes"),
        "{}",
        e.message()
    );

    still_serving(&mut gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_invalid_argument() {
    let Served { mut gw, _filters } = serve().await;
    let channel = tonic::transport::Channel::from_shared(gw.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    // Field 1 (chain) claims 100 bytes but the message ends after 3.
    let garbage = Bytes::from_static(&[0x0a, 0x64, b'a', b'b', b'c']);
    let e = grpc
        .unary(
            tonic::Request::new(garbage),
            http::uri::PathAndQuery::from_static("/sekisho.gateway.v1.Gateway/Moderate"),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("ModerateRequest.chain"),
        "{}",
        e.message()
    );
    still_serving(&mut gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_requests_get_json_errors() {
    let Served { mut gw, _filters } = serve().await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Vec<u8>| {
        http.post(format!("{}{path}", gw.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let check = |status: u16, grpc: &str, needle: &str, r: (u16, serde_json::Value)| {
        assert_eq!(r.0, status, "{}", r.1);
        assert_eq!(r.1["error"]["status"], grpc, "{}", r.1);
        assert_eq!(r.1["error"]["code"], status);
        let msg = r.1["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg}");
    };
    async fn parts(r: reqwest::Response) -> (u16, serde_json::Value) {
        (r.status().as_u16(), r.json().await.unwrap())
    }

    let ok = post(
        "/v1/chains/good:moderate",
        br#"{"content":{"contentType":"text/plain","text":"hi"}}"#.to_vec(),
    )
    .await
    .unwrap();
    let (status, body) = parts(ok).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "APPROVE");
    assert_eq!(body["chain"], "good");
    assert_eq!(body["stages"][0]["filters"][0]["outcome"], "OK");

    // The path names the chain; a body may repeat it, not contradict it.
    let same = post(
        "/v1/chains/good:moderate",
        br#"{"chain":"good","content":{"contentType":"text/plain","text":"hi"}}"#.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(same.status(), 200);
    let r = parts(
        post(
            "/v1/chains/good:moderate",
            br#"{"chain":"any","content":{"contentType":"text/plain","text":"hi"}}"#.to_vec(),
        )
        .await
        .unwrap(),
    )
    .await;
    check(
        400,
        "INVALID_ARGUMENT",
        "field `chain` is `any` in the body but `good` in the path",
        r,
    );

    let r = parts(
        post(
            "/v1/chains/nope:moderate",
            br#"{"content":{"contentType":"text/plain","text":"hi"}}"#.to_vec(),
        )
        .await
        .unwrap(),
    )
    .await;
    check(404, "NOT_FOUND", "chain `nope` is not known", r);

    let r = parts(
        post(
            "/v1/chains/good:moderate",
            br#"{"content":{"contentTyp":"text/plain"}}"#.to_vec(),
        )
        .await
        .unwrap(),
    )
    .await;
    check(
        400,
        "INVALID_ARGUMENT",
        "field `content`: unrecognized field name 'contentTyp'",
        r,
    );

    let r = parts(
        post(
            "/v1/chains/good:moderate",
            br#"{"content":{"contentType":"text/plain","data":"not base64!"}}"#.to_vec(),
        )
        .await
        .unwrap(),
    )
    .await;
    check(400, "INVALID_ARGUMENT", "content.data", r);

    let r = parts(
        post("/v1/chains/good:moderate", b"{\"content\": [".to_vec())
            .await
            .unwrap(),
    )
    .await;
    check(400, "INVALID_ARGUMENT", "invalid JSON", r);

    let big = format!(
        r#"{{"content":{{"contentType":"text/plain","text":"{}"}}}}"#,
        "a".repeat(200 * 1024)
    );
    // A body refused unread leaves the connection unusable: the response says so, or the
    // client (which keeps connections alive) sends the next request into a closing
    // socket — seen as a failed request in CI before the header was sent.
    let refused = post("/v1/chains/good:moderate", big.clone().into_bytes())
        .await
        .unwrap();
    assert_eq!(refused.headers()["connection"], "close");
    check(413, "RESOURCE_EXHAUSTED", "limit", parts(refused).await);
    let nowhere = post("/v1/nowhere", big.into_bytes()).await.unwrap();
    assert_eq!(nowhere.headers()["connection"], "close");
    check(404, "NOT_FOUND", "no API", parts(nowhere).await);

    let r = parts(
        http.get(format!("{}/v1/nowhere", gw.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    check(404, "NOT_FOUND", "no API at /v1/nowhere", r);

    let r = parts(
        http.get(format!("{}/v1/chains/good:moderate", gw.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    check(405, "UNIMPLEMENTED", "GET is not allowed", r);

    still_serving(&mut gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_chain_files_are_reported_with_path_and_line_and_skipped() {
    let Served { mut gw, _filters } = serve().await;
    let list = gw
        .client()
        .await
        .list_chains(ListChainsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = list.chains.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["any", "good"]);
    let problem = |file: &str| {
        list.problems
            .iter()
            .find(|p| p.source.ends_with(file))
            .unwrap_or_else(|| panic!("no problem with {file}: {:?}", list.problems))
    };
    let broken = problem("broken.yaml");
    assert_eq!(broken.path, "line 6 column 9", "{broken:?}");
    assert!(
        broken.message.contains("unknown field `usee`"),
        "{broken:?}"
    );
    let cyclic = problem("cyclic.yaml");
    assert_eq!(cyclic.path, "stages[1].branches[0].goto", "{cyclic:?}");
    let deep = problem("deep.yaml");
    assert_eq!(deep.path, "stages[0].branches[0].when", "{deep:?}");
    assert!(
        deep.message
            .contains("nests 2001 levels deep; the limit is 100"),
        "{deep:?}"
    );
    let e = gw.moderate_text("deep", "x").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    still_serving(&mut gw).await;
}
