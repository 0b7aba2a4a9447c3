//! The edge (`sekisho ui`, and the one inside `sekisho dev`) over real HTTP and gRPC:
//! who may do what, sign-in sessions, the cross-site header, the author of a write, the
//! security headers, and gRPC forwarded with a token.

use std::process::Stdio;

use sekisho_proto::filter::v1 as fproto;
use sekisho_proto::gateway::v1::{self as gproto, gateway_client::GatewayClient};
use sekisho_tests::{DevProcess, sekisho_bin, wait_for_listen_line};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const PASSWORD: &str = "edge-test-password";
const SERVICE_TOKEN: &str = "edge-test-service-token";
const VIEWER_TOKEN: &str = "edge-test-viewer-token";

async fn dev() -> DevProcess {
    DevProcess::start(
        &[],
        &[
            ("SEKISHO_DEV_PASSWORD", PASSWORD),
            ("SEKISHO_DEV_TOKEN", SERVICE_TOKEN),
            ("SEKISHO_LOG", "warn"),
        ],
    )
    .await
    .unwrap()
}

/// A standalone `sekisho ui` in front of `dev`'s gateway and chainstore, with a viewer.
async fn standalone(dev: &DevProcess) -> (String, Child, tempfile::TempDir) {
    standalone_with(dev, json!({})).await
}

/// A standalone edge with `extra`'s keys added to its configuration.
async fn standalone_with(dev: &DevProcess, extra: Value) -> (String, Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ui.yaml");
    let mut config = json!({
        "listen": "127.0.0.1:0",
        "gateway": dev.gateway,
        "chainstore": dev.chainstore,
        "max_body_bytes": 65536,
        "tokens": [
            {"name": "viewer-bot", "sha256": sekisho_edge::auth::sha256_hex(VIEWER_TOKEN), "role": "viewer"},
            {"name": "svc", "sha256": sekisho_edge::auth::sha256_hex(SERVICE_TOKEN), "role": "service"},
        ],
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    // JSON is YAML.
    std::fs::write(&cfg, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let mut child = Command::new(sekisho_bin())
        .arg("ui")
        .arg("--config")
        .arg(&cfg)
        .env("SEKISHO_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = wait_for_listen_line(&mut child, "sekisho ui")
        .await
        .unwrap();
    (url, child, dir)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn status_of(r: reqwest::Response) -> (u16, Value) {
    let code = r.status().as_u16();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (code, body)
}

/// `method url` with a bearer token and an optional JSON body: the status and the answer.
async fn bearer(
    c: &reqwest::Client,
    method: &str,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut r = c.request(method.parse().unwrap(), url).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(b);
    }
    status_of(r.send().await.unwrap()).await
}

fn moderate_body() -> Value {
    json!({"content": {"contentType": "text/plain", "text": "click here for free money"}})
}

#[tokio::test]
async fn the_edge_enforces_who_may_do_what() {
    let dev = dev().await;
    let c = http();
    let api = |p: &str| format!("{}/api/{p}", dev.ui);

    // Nobody: refused with a JSON error saying how to get in.
    let (code, body) = status_of(c.get(api("chainstore/v1/chains")).send().await.unwrap()).await;
    assert_eq!(code, 401);
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    let (code, _) = status_of(
        c.post(api("gateway/v1/chains/comment-text:moderate"))
            .json(&moderate_body())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 401, "moderate needs a token");
    // A token nobody issued.
    let (code, body) = bearer(&c, "GET", &api("chainstore/v1/chains"), "made-up", None).await;
    assert_eq!(code, 401);
    assert!(body["error"]["message"].as_str().unwrap().contains("token"));

    // The service token moderates, and only that.
    let (code, body) = bearer(
        &c,
        "POST",
        &api("gateway/v1/chains/comment-text:moderate"),
        SERVICE_TOKEN,
        Some(&moderate_body()),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["decision"], "REJECT");
    for (method, path) in [
        ("GET", "chainstore/v1/chains"),
        ("PUT", "chainstore/v1/chains/comment-text"),
        ("GET", "live"),
    ] {
        let (code, body) = bearer(&c, method, &api(path), SERVICE_TOKEN, Some(&json!({}))).await;
        assert_eq!(code, 403, "{method} {path}: {body}");
        assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
    }
    // Paths the edge does not forward stay closed, whoever asks: no API there.
    let (code, body) = bearer(&c, "GET", &api("gateway/metrics"), SERVICE_TOKEN, None).await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"]["status"], "NOT_FOUND");
    // A method no API takes is answered as the upstream answers it, whoever asks: 405
    // naming the methods (it was 403, "may not use", as if some role could).
    for (method, path, allow) in [
        ("TRACE", "gateway/v1/filters", "GET"),
        (
            "PATCH",
            "chainstore/v1/chains/comment-text",
            "DELETE, GET, PUT",
        ),
        ("POST", "chainstore/openapi.json", "GET, HEAD"),
    ] {
        let r = c
            .request(method.parse().unwrap(), api(path))
            .bearer_auth(SERVICE_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers().get("allow").unwrap(), allow, "{method} {path}");
        let (code, body) = status_of(r).await;
        assert_eq!(code, 405, "{method} {path}: {body}");
        assert_eq!(body["error"]["status"], "UNIMPLEMENTED");
    }

    // Signing in needs the cross-site header; a wrong password is refused.
    let sign_in = |password: &str, header: bool| {
        let mut r = c
            .post(api("session"))
            .json(&json!({"name": "operator", "password": password}));
        if header {
            r = r.header("x-sekisho-csrf", "1");
        }
        r.send()
    };
    assert_eq!(sign_in(PASSWORD, false).await.unwrap().status(), 403);
    assert_eq!(sign_in("wrong", true).await.unwrap().status(), 401);
    let r = sign_in(PASSWORD, true).await.unwrap();
    assert_eq!(r.status(), 200);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let who: Value = c
        .get(api("session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["principal"]["name"], "operator");
    assert_eq!(who["principal"]["role"], "operator");

    // The operator reads and writes; a write without the header is refused.
    let chain: Value = c
        .get(api("chainstore/v1/chains/comment-text"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let update = json!({
        "document": chain["document"].as_str().unwrap().replace("Short user comments.", "Short user comments (edited)."),
        "expectedVersion": chain["version"],
        "author": "mallory",
        "comment": "from the edge test",
    });
    let put = |csrf: bool| {
        let mut r = c
            .put(api("chainstore/v1/chains/comment-text"))
            .header("cookie", &cookie)
            .json(&update);
        if csrf {
            r = r.header("x-sekisho-csrf", "1");
        }
        r.send()
    };
    let (code, body) = status_of(put(false).await.unwrap()).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = status_of(put(true).await.unwrap()).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["author"], "operator",
        "the author is who signed in, not what the body says"
    );
    // A stale write is still a conflict through the edge.
    let (code, body) = status_of(put(true).await.unwrap()).await;
    assert_eq!(code, 409, "{body}");

    // Signed out, the cookie is worth nothing.
    let r = c
        .delete(api("session"))
        .header("cookie", &cookie)
        .header("x-sekisho-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (code, _) = status_of(
        c.get(api("chainstore/v1/chains"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 401);

    // Every answer carries the security headers, the page included.
    let r = c.get(&dev.ui).send().await.unwrap();
    let h = r.headers();
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    let r = c.get(api("chainstore/v1/chains")).send().await.unwrap();
    assert!(r.headers().contains_key("content-security-policy"));
}

#[tokio::test]
async fn a_standalone_edge_serves_viewers_and_grpc_callers() {
    let dev = dev().await;
    let (ui, _child, _dir) = standalone(&dev).await;
    let c = http();
    let api = |p: &str| format!("{ui}/api/{p}");

    // A viewer reads but neither writes nor moderates.
    let (code, body) = bearer(&c, "GET", &api("chainstore/v1/chains"), VIEWER_TOKEN, None).await;
    assert_eq!(code, 200);
    assert!(body["chains"].as_array().unwrap().len() >= 2);
    let (code, _) = bearer(&c, "GET", &api("gateway/v1/filters"), VIEWER_TOKEN, None).await;
    assert_eq!(code, 200);
    let (code, _) = bearer(
        &c,
        "DELETE",
        &api("chainstore/v1/chains/comment-text"),
        VIEWER_TOKEN,
        None,
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = bearer(
        &c,
        "POST",
        &api("gateway/v1/chains/comment-text:moderate"),
        VIEWER_TOKEN,
        Some(&moderate_body()),
    )
    .await;
    assert_eq!(code, 403);

    // Too large a body is refused at the edge (a little over the limit, so that the
    // unread rest fits in the socket buffers and the client reads the answer).
    let r = c
        .post(api("gateway/v1/chains/comment-text:moderate"))
        .bearer_auth(SERVICE_TOKEN)
        .json(&json!({"content": {"contentType": "text/plain", "text": "x".repeat(80_000)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let (code, body) = status_of(r).await;
    assert_eq!(
        (code, body["error"]["status"].as_str()),
        (413, Some("RESOURCE_EXHAUSTED"))
    );

    // gRPC through the edge: the token travels in the metadata.
    let mut client = GatewayClient::connect(ui.clone()).await.unwrap();
    let request = |token: Option<&str>| {
        let mut r = tonic::Request::new(gproto::ModerateRequest {
            chain: "comment-text".into(),
            content: Some(fproto::Content {
                content_type: "text/plain".into(),
                payload: Some(fproto::content::Payload::Text("hello there".into())),
            }),
            ..Default::default()
        });
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    };
    let e = client.moderate(request(None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = client
        .moderate(request(Some(VIEWER_TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let r = client
        .moderate(request(Some(SERVICE_TOKEN)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision(), gproto::Decision::Approve);
    assert_eq!(r.chain, "comment-text");
    // Methods the edge does not list are not forwarded.
    let channel = tonic::transport::Endpoint::from_shared(ui.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {SERVICE_TOKEN}").parse().unwrap(),
    );
    let e = health.check(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn repeated_failed_sign_ins_lock_the_name_for_a_while() {
    let dev = dev().await;
    let (ui, _child, _dir) = standalone_with(
        &dev,
        json!({
            "secure_cookies": false,
            "users": [
                {"name": "ana", "password_hash": sekisho_edge::auth::hash_password("ana-password").unwrap(), "role": "operator"},
            ],
            "sign_in_limit": {"failures": 3, "lockout": "2s", "max_lockout": "2s"},
        }),
    )
    .await;
    let c = http();
    let sign_in = |name: &str, password: &str| {
        c.post(format!("{ui}/api/session"))
            .header("x-sekisho-csrf", "1")
            .json(&json!({"name": name, "password": password}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(sign_in("ana", "guess").await.unwrap().status(), 401);
    }
    // Locked: even the right password is refused, with when to come back.
    let r = sign_in("ana", "ana-password").await.unwrap();
    assert_eq!(r.status(), 429);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&after), "retry-after {after}");
    let (_, body) = status_of(r).await;
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too many failed sign-ins"),
        "{body}"
    );
    // Another name is not held back, and the edge keeps serving.
    assert_eq!(sign_in("bob", "guess").await.unwrap().status(), 401);
    // Once the lockout has passed, the right password works and clears the count.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(sign_in("ana", "ana-password").await.unwrap().status(), 200);
    assert_eq!(sign_in("ana", "guess").await.unwrap().status(), 401);
    assert_eq!(
        sign_in("ana", "ana-password").await.unwrap().status(),
        200,
        "one failure after a success does not lock"
    );
}

#[tokio::test]
async fn grpc_chain_writes_through_the_edge_carry_the_callers_name() {
    use sekisho_proto::chainstore::v1::{self as cs, chain_store_client::ChainStoreClient};
    const OPS_TOKEN: &str = "edge-test-operator-token";
    let dev = dev().await;
    let (ui, _child, _dir) = standalone_with(
        &dev,
        json!({"tokens": [
            {"name": "ops-bot", "sha256": sekisho_edge::auth::sha256_hex(OPS_TOKEN), "role": "operator"},
            {"name": "viewer-bot", "sha256": sekisho_edge::auth::sha256_hex(VIEWER_TOKEN), "role": "viewer"},
        ]}),
    )
    .await;
    let mut client = ChainStoreClient::connect(ui.clone()).await.unwrap();
    fn with<M>(token: &str, m: M) -> tonic::Request<M> {
        let mut r = tonic::Request::new(m);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }
    let current = client
        .get_chain(with(
            OPS_TOKEN,
            cs::GetChainRequest {
                name: "comment-text".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let update = cs::UpdateChainRequest {
        name: "comment-text".into(),
        document: current.document.replace("free money", "free cash"),
        expected_version: current.version,
        author: "mallory".into(),
        comment: "through the edge".into(),
    };
    let e = client
        .update_chain(with(VIEWER_TOKEN, update.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let saved = client
        .update_chain(with(OPS_TOKEN, update.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(saved.version, current.version + 1);
    assert_eq!(
        saved.author, "ops-bot",
        "the author is the token's name, not what the call said"
    );
    // The chainstore itself agrees.
    let mut direct = ChainStoreClient::connect(dev.chainstore.clone())
        .await
        .unwrap();
    let stored = direct
        .get_chain(cs::GetChainRequest {
            name: "comment-text".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (stored.version, stored.author.as_str()),
        (saved.version, "ops-bot")
    );
    assert_eq!(stored.comment, "through the edge");

    let rolled = client
        .rollback(with(
            OPS_TOKEN,
            cs::RollbackRequest {
                name: "comment-text".into(),
                to_version: current.version,
                expected_version: saved.version,
                author: "mallory".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.author, "ops-bot");
    // A stale write is still refused by the chainstore, with its own answer.
    let e = client
        .update_chain(with(OPS_TOKEN, update))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
}

#[tokio::test]
async fn dev_shows_its_filters_metrics_on_the_gateways_metrics() {
    let dev = dev().await;
    let c = http();
    // Straight to the gateway: the edge does not forward `/metrics`.
    let r = c
        .post(format!("{}/v1/chains/comment-text:moderate", dev.gateway))
        .json(&moderate_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let text = c
        .get(format!("{}/metrics", dev.gateway))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |prefix: &str, needles: &[&str]| {
        text.lines().any(|l| {
            l.starts_with(prefix) && needles.iter().all(|n| l.contains(n)) && !l.ends_with(" 0")
        })
    };
    // Set once when each in-process filter starts serving, before any call.
    for f in ["noop", "keywords", "qr-code"] {
        let filter = format!("filter=\"{f}\"");
        assert!(
            line(
                "sekisho_filter_info{",
                &[&filter, "execution_provider=\"none\""]
            ),
            "no sekisho_filter_info for {f} in\n{text}"
        );
    }
    // The filter's own count of the call, next to the gateway's.
    assert!(
        line(
            "sekisho_filter_requests_total{",
            &["filter=\"keywords\"", "code=\"ok\""]
        ),
        "no filter-side count of the keywords call in\n{text}"
    );
    assert!(
        text.contains("sekisho_gateway_"),
        "no gateway series in\n{text}"
    );
}
