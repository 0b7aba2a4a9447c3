//! The built-in image filters as their own processes (`sekisho filter face-detect |
//! ng-image | qr-code`) behind a real gateway running the design's profile-photo chain,
//! on real photos; and what they do with bad images.

use std::io::Cursor;
use std::path::Path;
use std::time::{Duration, Instant};

use sekisho_proto::filter::v1::{self as fproto, filter_client::FilterClient};
use sekisho_proto::gateway::v1::{Decision, ModerateResponse};
use sekisho_tests::{FilterProcess, TestGateway, request, sample_photos, workspace};
use tonic::Code;

fn image_payload(bytes: Vec<u8>) -> fproto::content::Payload {
    fproto::content::Payload::Data(bytes.into())
}

fn png_bytes(img: &image::RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `photo` with a QR code pasted into its lower right corner.
fn with_qr_code(photo: &Path) -> Vec<u8> {
    let mut img = image::open(photo).unwrap().to_rgb8();
    let code = qrcode::QrCode::new(b"https://spam.example/win").unwrap();
    let (n, colors) = (code.width() as u32, code.to_colors());
    let module = 4;
    let side = (n + 8) * module;
    let (ox, oy) = (img.width() - side - 8, img.height() - side - 8);
    for py in 0..side {
        for px in 0..side {
            let (mx, my) = (px / module, py / module);
            let dark = (4..n + 4).contains(&mx)
                && (4..n + 4).contains(&my)
                && colors[((my - 4) * n + (mx - 4)) as usize] == qrcode::Color::Dark;
            let v = if dark { 0 } else { 255 };
            img.put_pixel(ox + px, oy + py, image::Rgb([v, v, v]));
        }
    }
    png_bytes(&img)
}

fn labels(r: &ModerateResponse, alias: &str) -> std::collections::HashMap<String, f64> {
    r.stages
        .iter()
        .flat_map(|s| &s.filters)
        .find(|f| f.alias == alias)
        .unwrap_or_else(|| panic!("no trace of {alias}: {r:?}"))
        .labels
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_photo_chain_runs_on_the_builtin_filters() {
    let photos = sample_photos().unwrap();
    let face = FilterProcess::start("face-detect", &[]).await.unwrap();
    let ng = FilterProcess::start("ng-image", &[]).await.unwrap();
    let qr = FilterProcess::start("qr-code", &[]).await.unwrap();
    let chain = std::fs::read_to_string(workspace().join("cli/chains/profile-photo.yaml")).unwrap();
    let gw = TestGateway::setup()
        .filter("face-detect", &face.url)
        .filter("ng-image", &ng.url)
        .filter("qr-code", &qr.url)
        .chain(&chain)
        .start()
        .await
        .unwrap();
    gw.wait_described(&["face-detect", "ng-image", "qr-code"])
        .await
        .unwrap();
    let moderate = |bytes: Vec<u8>| {
        let gw = &gw;
        async move {
            gw.moderate(request("profile-photo", "image/png", image_payload(bytes)))
                .await
                .unwrap()
        }
    };
    let read = |name: &str| std::fs::read(photos.path().join(name)).unwrap();

    // One face, nothing NG, no code: approved, with the face's box and landmarks.
    let r = moderate(read("astronaut.png")).await;
    assert_eq!(
        (r.decision(), r.reason.as_str()),
        (Decision::Approve, "default"),
        "{r:?}"
    );
    assert_eq!(labels(&r, "face")["face_count"], 1.0);
    let faces = &r.stages[0].filters[0].regions;
    assert_eq!(faces.len(), 1);
    assert_eq!(faces[0].landmarks.len(), 5);
    assert!(faces[0].x > 150.0 && faces[0].x < 210.0, "{:?}", faces[0]);
    assert!(labels(&r, "ng-image")["nsfw"] < 0.1);

    let r = moderate(read("pair.png")).await;
    assert_eq!(
        (r.decision(), r.reason.as_str()),
        (Decision::Review, "multiple_people")
    );
    assert_eq!(labels(&r, "face")["face_count"], 2.0);

    let r = moderate(read("chelsea.png")).await;
    assert_eq!(
        (r.decision(), r.reason.as_str()),
        (Decision::Review, "no_face")
    );

    // A QR code in a profile photo goes to review.
    let r = moderate(with_qr_code(&photos.path().join("astronaut.png"))).await;
    assert_eq!(
        (r.decision(), r.reason.as_str()),
        (Decision::Review, "ng_content"),
        "{r:?}"
    );
    assert_eq!(labels(&r, "qr-code")["qr_count"], 1.0);

    // A corrupt image is never approved: the filter refuses it and the chain reviews.
    let mut broken = read("astronaut.png");
    broken.truncate(broken.len() / 3);
    let r = moderate(broken).await;
    assert_eq!(r.decision(), Decision::Review, "{r:?}");
    let err = &r.stages[0].filters[0].error;
    assert!(err.contains("corrupt or truncated"), "{err}");

    // The execution provider in use is in Describe (through ListFilters) and in metrics.
    let list = gw
        .client()
        .await
        .list_filters(sekisho_proto::gateway::v1::ListFiltersRequest {})
        .await
        .unwrap()
        .into_inner();
    let face = list
        .filters
        .iter()
        .find(|f| f.name == "face-detect")
        .unwrap();
    let info = &face.descriptor.as_ref().unwrap().info;
    assert_eq!(info["execution_provider"], "cpu", "{info:?}");
    // And per endpoint, as each replica answered (replicas may differ here).
    let [endpoint] = face.endpoints.as_slice() else {
        panic!("one endpoint: {:?}", face.endpoints)
    };
    assert_eq!(
        endpoint.info.get("execution_provider").map(String::as_str),
        Some("cpu"),
        "{endpoint:?}"
    );
    assert!(endpoint.info.contains_key("model"), "{endpoint:?}");
    let metrics = gw.metrics().await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("sekisho_gateway_filter_info") && l.contains("filter=\"face-detect\"")
        })
        .unwrap_or_else(|| panic!("no filter_info for face-detect in\n{metrics}"));
    assert!(line.contains("execution_provider=\"cpu\""), "{line}");
    // Counted per endpoint by provider, so that a fallback to the CPU can be alerted on.
    assert!(
        metrics.lines().any(|l| l
            == "sekisho_gateway_filter_endpoints_by_provider{filter=\"face-detect\",execution_provider=\"cpu\"} 1"),
        "no cpu endpoint of face-detect counted in\n{metrics}"
    );
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A valid PNG header that claims 50,000 × 50,000 pixels (7.5 GB as RGB).
fn png_bomb() -> Vec<u8> {
    let mut p = png_bytes(&image::RgbImage::new(1, 1));
    p[16..20].copy_from_slice(&50_000u32.to_be_bytes());
    p[20..24].copy_from_slice(&50_000u32.to_be_bytes());
    let crc = crc32(&p[12..29]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    p
}

/// Large images arriving together are decoded within the process's decoding budget,
/// not all at once: eight 4-megapixel PNGs (12 MB each once decoded, more on the QR
/// finder's way) sent together to qr-code with a 4-megapixel budget all get their
/// answer, and the process's peak memory grows by about one image's worth, not eight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_images_arriving_together_wait_for_the_decoding_budget() {
    let f = FilterProcess::start("qr-code", &["--decoding-pixels", "4000000"])
        .await
        .unwrap();
    let client = FilterClient::connect(f.url.clone()).await.unwrap();
    let big = png_bytes(&image::RgbImage::from_pixel(
        2000,
        2000,
        image::Rgb([200, 180, 160]),
    ));
    let before = f.peak_rss_kib().unwrap();
    let calls = (0..8).map(|_| {
        let mut client = client.clone();
        let request = fproto::ApplyRequest {
            content: Some(fproto::Content {
                content_type: "image/png".into(),
                payload: Some(image_payload(big.clone())),
            }),
            // Scaled down before the QR finder: decoding is what this is about.
            config: sekisho_proto::json_to_struct(&serde_json::json!({"max_side": 64})),
            ..Default::default()
        };
        async move { client.apply(request).await }
    });
    for r in futures::future::join_all(calls).await {
        let r = r.unwrap().into_inner();
        assert_eq!(r.labels.get("qr_count"), Some(&0.0), "{r:?}");
    }
    let grew = f.peak_rss_kib().unwrap().saturating_sub(before);
    eprintln!(
        "8 × 4 MP together: peak resident memory grew by {} MiB",
        grew / 1024
    );
    assert!(
        grew < 80 * 1024,
        "peak resident memory grew by {} MiB: the images were decoded together",
        grew / 1024
    );
}

/// qr-code under more calls than it can serve, each with a deadline: with one search at
/// a time (`--workers 1`), twelve calls sent together whose deadline leaves room for
/// about three searches are not all started at once (each then taking twelve times as
/// long, and all answered too late): the calls the queue cannot serve in time are
/// refused at once with RESOURCE_EXHAUSTED (counted in
/// `sekisho_filter_deadline_refused_total`), and the ones it can are answered.
/// A JPEG `side` pixels square without a code, busy (stripes and squares) enough that
/// searching it at full size takes long beside the scheduler's noise.
fn jpeg_without_a_code(side: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        let v = ((x * 7 + y * 13) % 251) as u8 / 2 + ((x / 40 + y / 40) % 2) as u8 * 100;
        image::Rgb([v, v / 2 + 60, 255 - v])
    });
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&img)
        .unwrap();
    bytes
}

/// qr-code's `Apply` on a JPEG searched at up to 2048 px a side, with `timeout` when
/// given.
fn qr_call(
    client: &FilterClient<tonic::transport::Channel>,
    bytes: &[u8],
    timeout: Option<Duration>,
) -> impl std::future::Future<Output = Result<tonic::Response<fproto::ApplyResponse>, tonic::Status>>
+ use<> {
    let mut client = client.clone();
    let mut request = tonic::Request::new(fproto::ApplyRequest {
        content: Some(fproto::Content {
            content_type: "image/jpeg".into(),
            payload: Some(image_payload(bytes.to_vec())),
        }),
        config: sekisho_proto::json_to_struct(&serde_json::json!({"max_side": 2048})),
        ..Default::default()
    });
    if let Some(t) = timeout {
        request.set_timeout(t);
    }
    async move { client.apply(request).await }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_code_refuses_at_once_what_it_cannot_answer_before_the_deadline() {
    let metrics_at = format!("127.0.0.1:{}", sekisho_tests::free_port());
    let args = ["--workers", "1", "--metrics-listen", &metrics_at];
    let f = FilterProcess::start("qr-code", &args).await.unwrap();
    assert_eq!(describe(&f).await.info["workers"], "1");
    let client = FilterClient::connect(f.url.clone()).await.unwrap();
    let bytes = jpeg_without_a_code(1600);
    let call = |timeout| qr_call(&client, &bytes, timeout);
    // What one search takes here, alone (the filter learns it too).
    let mut one = Duration::ZERO;
    for _ in 0..2 {
        let t = Instant::now();
        call(None).await.unwrap();
        one = t.elapsed();
    }
    let deadline = one * 3;
    let results = futures::future::join_all((0..12).map(|_| call(Some(deadline)))).await;
    let codes: Vec<Code> = results
        .iter()
        .map(|r| r.as_ref().map_or_else(|s| s.code(), |_| Code::Ok))
        .collect();
    let count = |c: Code| codes.iter().filter(|x| **x == c).count();
    eprintln!("one search {one:?}, deadline {deadline:?}: {codes:?}");
    assert!(count(Code::Ok) >= 1, "{codes:?}");
    assert!(count(Code::ResourceExhausted) >= 6, "{codes:?}");
    let refused = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .find(|s| s.code() == Code::ResourceExhausted)
        .unwrap();
    assert!(
        refused.message().contains("deadline"),
        "{}",
        refused.message()
    );
    // Refused with the work queued ahead waiting, it says when that should be done
    // (gRPC's retry pushback), which a gateway with `outlier.max_rest` set uses to send
    // its new calls elsewhere meanwhile.
    let pushbacks: Vec<_> = results
        .iter()
        .filter_map(|r| sekisho_proto::retry_pushback(r.as_ref().err()?))
        .collect();
    assert!(
        pushbacks
            .iter()
            .any(|p| *p > Duration::ZERO && *p < one * 24),
        "{pushbacks:?}"
    );
    let metrics = scrape(&metrics_at).await;
    let series = r#"sekisho_filter_deadline_refused_total{model="qr-code"}"#;
    assert!(metric(&metrics, series) >= 1.0, "{metrics}");
    // And it still serves, at its own pace, a call with time for it.
    call(Some(one * 20)).await.unwrap();
}

/// The gateway and two real qr-code replicas: one with a queue of searches sheds a call
/// it cannot answer in time with a retry pushback; the gateway retries it on the other,
/// lists the shedding one as resting (still `ready`, not ejected) and sends it none of
/// the next calls while it rests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_rests_a_replica_that_pushes_back_while_its_sibling_takes_the_calls() {
    let metrics_at = format!("127.0.0.1:{}", sekisho_tests::free_port());
    let args = ["--workers", "1", "--metrics-listen", &metrics_at];
    let busy = FilterProcess::start("qr-code", &args).await.unwrap();
    let calm = FilterProcess::start("qr-code", &["--workers", "1"])
        .await
        .unwrap();
    let to_busy = FilterClient::connect(busy.url.clone()).await.unwrap();
    let to_calm = FilterClient::connect(calm.url.clone()).await.unwrap();
    let bytes = jpeg_without_a_code(1600);
    // What one search takes, the longest seen; both replicas learn it too.
    let mut one = Duration::ZERO;
    for client in [&to_busy, &to_calm] {
        for _ in 0..2 {
            let t = Instant::now();
            qr_call(client, &bytes, None).await.unwrap();
            one = one.max(t.elapsed());
        }
    }
    // Time for the calm replica's search five times over, not for a queue of 24.
    let timeout = one * 6;
    let chain = format!(
        "name: codes\ncontent_types: [image/jpeg]\n\
         defaults: {{timeout: {}ms, retries: 1, on_error: review}}\nstages:\n  - id: s\n    \
         filters: [{{use: qr-code, config: {{max_side: 2048}}}}]\n    branches:\n      \
         - when: \"score > 0.5\"\n        decide: {{decision: REJECT, reason: code}}\n\
         default_decision: APPROVE\n",
        timeout.as_millis()
    );
    let gw = TestGateway::setup()
        .filter_replicas("qr-code", &[&busy.url, &calm.url])
        .config("balance", serde_json::json!("round_robin"))
        .config("outlier", serde_json::json!({"max_rest": "60s"}))
        .chain(&chain)
        .start()
        .await
        .unwrap();
    gw.wait_endpoints("qr-code", Duration::from_secs(10), |eps| {
        sekisho_tests::ready_addresses(eps).len() == 2
    })
    .await
    .unwrap();
    // 24 searches queued at the busy replica, with no deadline: they all wait their turn.
    let queue: Vec<_> = (0..24)
        .map(|_| tokio::spawn(qr_call(&to_busy, &bytes, None)))
        .collect();
    let in_flight = r#"sekisho_filter_requests_in_flight{filter="qr-code"}"#;
    let queued_by = Instant::now() + Duration::from_secs(30);
    while metric(&scrape(&metrics_at).await, in_flight) < 24.0 {
        assert!(
            Instant::now() < queued_by,
            "the 24 calls never all reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let moderate = async || {
        let r = gw
            .moderate(request("codes", "image/jpeg", image_payload(bytes.clone())))
            .await
            .unwrap();
        // Decided on a search, not for want of one.
        assert_eq!(
            (r.decision(), r.reason.as_str()),
            (Decision::Approve, "default"),
            "{r:?}"
        );
    };
    let busy_now = async || gw.endpoint("qr-code", &busy.url).await.unwrap();
    // Round robin sends one of the first two calls to the busy replica, which sheds it.
    let mut rested = None;
    for _ in 0..2 {
        moderate().await;
        let b = busy_now().await;
        if b.resting_for_ms > 0 {
            rested = Some(b);
            break;
        }
    }
    let rested = rested.expect("the busy replica never rested");
    assert_eq!(
        (rested.state.as_str(), rested.ejections),
        ("ready", 0),
        "{rested:?}"
    );
    assert!(rested.last_error.contains("deadline"), "{rested:?}");
    let refused = r#"sekisho_filter_deadline_refused_total{model="qr-code"}"#;
    assert_eq!(metric(&scrape(&metrics_at).await, refused), 1.0);
    let pushbacks = r#"sekisho_gateway_endpoint_pushbacks_total{filter="qr-code"}"#;
    assert_eq!(metric(&gw.metrics().await, pushbacks), 1.0);
    let calm_before = gw.endpoint("qr-code", &calm.url).await.unwrap();
    assert_eq!(calm_before.resting_for_ms, 0, "{calm_before:?}");
    // While it rests, round robin's turns pass it over.
    for _ in 0..3 {
        moderate().await;
    }
    let after = busy_now().await;
    assert!(
        after.resting_for_ms > 0,
        "the rest ran out too soon to tell: {after:?}"
    );
    assert_eq!(after.calls, rested.calls, "{after:?}");
    let calm_after = gw.endpoint("qr-code", &calm.url).await.unwrap();
    assert_eq!(calm_after.calls, calm_before.calls + 3, "{calm_after:?}");
    for q in queue {
        q.abort();
    }
}

/// A 1280×960 JPEG holding a slightly blurred QR code of 3 px modules at (700, 500):
/// qr-code with `max_side` 640 decodes it at 1/2, where the code's modules are 1.5 px
/// and cannot be read (so found for eight texts like this one; a blur of 1.2 px left
/// some readable at half size).
fn jpeg_with_a_code_too_small_at_half_size(text: &str) -> Vec<u8> {
    let code = qrcode::QrCode::new(text.as_bytes()).unwrap();
    let (n, colors) = (code.width() as u32, code.to_colors());
    let mut img = image::RgbImage::from_fn(1280, 960, |x, y| {
        let (mx, my) = ((x.wrapping_sub(700)) / 3, (y.wrapping_sub(500)) / 3);
        let dark = (4..n + 4).contains(&mx)
            && (4..n + 4).contains(&my)
            && colors[((my - 4) * n + (mx - 4)) as usize] == qrcode::Color::Dark;
        image::Rgb(if dark { [0; 3] } else { [230, 220, 200] })
    });
    img = image::imageops::blur(&img, 1.4);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .encode_image(&img)
        .unwrap();
    out
}

/// qr-code reads a code too small to read in the JPEG it decoded at half size by
/// decoding the code's region again at full size, and counts that in its metrics; with
/// a decoding budget the half-size image fills, the region is not decoded (counted as
/// no room), and the code still counts, unread. Real processes, real gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_code_looks_closer_at_a_large_jpeg_within_the_decoding_budget() {
    let text = "https://spam.example/a-closer-look?id=0123456789";
    let jpeg = jpeg_with_a_code_too_small_at_half_size(text);
    // 640×480 pixels decoded: all of a budget of that size.
    for (budget, outcome, read) in [("64000000", "decoded", true), ("307200", "no_room", false)] {
        let metrics_at = format!("127.0.0.1:{}", sekisho_tests::free_port());
        let args = ["--metrics-listen", &metrics_at, "--decoding-pixels", budget];
        let f = FilterProcess::start("qr-code", &args).await.unwrap();
        let mut client = FilterClient::connect(f.url.clone()).await.unwrap();
        let r = client
            .apply(fproto::ApplyRequest {
                content: Some(fproto::Content {
                    content_type: "image/jpeg".into(),
                    payload: Some(image_payload(jpeg.clone())),
                }),
                config: sekisho_proto::json_to_struct(&serde_json::json!({"max_side": 640})),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.labels.get("qr_count"), Some(&1.0), "{r:?}");
        let details = r.details.as_ref().map(sekisho_proto::struct_to_json);
        let details = serde_json::to_string(&details).unwrap();
        assert_eq!(details.contains(text), read, "budget {budget}: {details}");
        let metrics = scrape(metrics_at).await;
        let series = format!(r#"sekisho_filter_region_decodes_total{{outcome="{outcome}"}}"#);
        assert_eq!(
            metric(&metrics, &series),
            1.0,
            "budget {budget}, {details}: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_are_refused_with_the_reason_and_the_filter_keeps_serving() {
    let photos = sample_photos().unwrap();
    let good = std::fs::read(photos.path().join("astronaut.png")).unwrap();
    for name in ["face-detect", "ng-image", "qr-code"] {
        let mut f = FilterProcess::start(name, &[]).await.unwrap();
        let mut client = FilterClient::connect(f.url.clone()).await.unwrap();
        let apply = |ct: &str, payload: fproto::content::Payload| fproto::ApplyRequest {
            content: Some(fproto::Content {
                content_type: ct.into(),
                payload: Some(payload),
            }),
            ..Default::default()
        };
        let mut truncated = good.clone();
        truncated.truncate(good.len() / 2);
        let mut bmp = b"BM".to_vec();
        bmp.resize(64, 0);
        let cases: Vec<(&str, fproto::content::Payload, &str)> = vec![
            ("image/png", image_payload(vec![]), "empty"),
            (
                "image/png",
                image_payload(truncated),
                "corrupt or truncated",
            ),
            (
                "image/png",
                image_payload(b"<html>nope</html>".to_vec()),
                "not an image",
            ),
            ("image/png", image_payload(bmp), "not read here"),
            ("image/png", image_payload(png_bomb()), "50000"),
            (
                "image/png",
                fproto::content::Payload::Text("a photo".into()),
                "",
            ),
        ];
        for (ct, payload, reason) in cases {
            let e = client.apply(apply(ct, payload)).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{name}: {}", e.message());
            assert!(e.message().contains(reason), "{name}: {}", e.message());
        }
        // A text item under a text content type is refused by the SDK before the filter.
        let e = client
            .apply(apply(
                "text/plain",
                fproto::content::Payload::Text("hi".into()),
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {}", e.message());

        // Many bombs later, memory is still that of a small process, and it still works.
        for _ in 0..100 {
            let e = client
                .apply(apply("image/png", image_payload(png_bomb())))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
        }
        let rss = f.rss_kib().unwrap();
        assert!(
            rss < 1024 * 1024,
            "{name}: {rss} KiB resident after the bombs"
        );
        let ok = client
            .apply(apply("image/png", image_payload(good.clone())))
            .await
            .unwrap()
            .into_inner();
        assert!((0.0..=1.0).contains(&ok.score), "{name}: {ok:?}");
        assert!(f.is_alive());
        eprintln!(
            "{name}: {} MiB resident after 100 decompression bombs",
            rss / 1024
        );
    }
}

/// This machine's ONNX Runtime has no CUDA: asked for CUDA, the filter refuses to start
/// or falls back to CPU, as configured, and says so; never silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_asked_for_but_absent_refuses_or_falls_back_loudly() {
    let err = refused_at_start(&[
        "face-detect",
        "--provider",
        "cuda",
        "--device-id",
        "1,0",
        "--on-missing-cuda",
        "refuse",
    ])
    .await;
    assert!(
        err.contains("CUDA was asked for (device 1) but cannot be used"),
        "{err}"
    );

    let f = FilterProcess::start(
        "face-detect",
        &[
            "--provider",
            "cuda",
            "--device-id",
            "0,1",
            "--gpu-mem-limit",
            "1GiB",
            "--cuda-tf32",
        ],
    )
    .await
    .unwrap();
    let d = describe(&f).await;
    assert_eq!(d.info["execution_provider"], "cpu", "{:?}", d.info);
    // A session per GPU listed, each fallen back; and batches of every size, as on the
    // CPU (padding to CUDA's powers of two would only cost there).
    assert_eq!(d.info["workers"], "2", "{:?}", d.info);
    assert_eq!(d.info["batch_sizes"], "every", "{:?}", d.info);
    // The CUDA settings asked for are not said to be in force on the CPU it fell back to.
    assert!(
        [
            "cuda_devices",
            "gpu_mem_limit_per_gpu",
            "cudnn_conv_search",
            "cuda_tf32"
        ]
        .iter()
        .all(|k| !d.info.contains_key(*k)),
        "{:?}",
        d.info
    );
}

/// A classifier spec that does not match its model (open_nsfw described as NCHW, a
/// common slip) stops `sekisho filter ng-image` at start with both shapes in the
/// message, instead of a filter that says SERVING and fails every call. `--warm-up all`
/// shows in `Describe`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_that_does_not_fit_its_model_stops_the_filter_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("nchw.yaml");
    std::fs::write(
        &spec,
        "name: open_nsfw as NCHW\nmodel: open-nsfw.onnx\nlayout: nchw\nsize: [224, 224]\n\
         resize_to: 256\ncolor: bgr\nmean: [104, 117, 123]\nclasses: [sfw, nsfw]\n\
         ok_class: sfw\n",
    )
    .unwrap();
    let err = refused_at_start(&["ng-image", "--spec", spec.to_str().unwrap()]).await;
    assert!(
        err.contains("input `input:0` is [?, 224, 224, 3], the filter gives it [?, 3, 224, 224]"),
        "{err}"
    );

    let f = FilterProcess::start("ng-image", &["--warm-up", "all", "--max-batch", "2"])
        .await
        .unwrap();
    let d = describe(&f).await;
    assert_eq!(d.info["warm_up"], "all", "{:?}", d.info);
    assert_eq!(d.max_batch_size, 2);
}

/// `sekisho filter ARGS… --listen 127.0.0.1:0`, which must exit with an error: its stderr.
async fn refused_at_start(args: &[&str]) -> String {
    let out = tokio::process::Command::new(sekisho_tests::sekisho_bin())
        .arg("filter")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env("SEKISHO_CACHE", sekisho_tests::cache_dir())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "{args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What filter process `f` answers to `Apply` with the file at `path`.
async fn apply_file(
    f: &FilterProcess,
    path: &std::path::Path,
    content_type: &str,
) -> fproto::ApplyResponse {
    let mut client = FilterClient::connect(f.url.clone()).await.unwrap();
    client
        .apply(fproto::ApplyRequest {
            content: Some(fproto::Content {
                content_type: content_type.into(),
                payload: Some(image_payload(std::fs::read(path).unwrap())),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// What a filter process answers to `Describe`.
async fn describe(f: &FilterProcess) -> fproto::FilterDescriptor {
    FilterClient::connect(f.url.clone())
        .await
        .unwrap()
        .describe(fproto::DescribeRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The text of a filter process's `/metrics`, served at `at`.
async fn scrape(at: impl std::fmt::Display) -> String {
    let r = reqwest::get(format!("http://{at}/metrics")).await.unwrap();
    r.text().await.unwrap()
}

/// The number on the line of `/metrics` that starts with `series` (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `sekisho filter --metrics-listen` serves the filter's own metrics: calls by code,
/// the execution provider, the wait for the decoding budget, and the batcher's batch
/// sizes, queue wait, inference time and time estimate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_process_serves_its_metrics() {
    let photos = sample_photos().unwrap();
    let port = sekisho_tests::free_port();
    let metrics_at = format!("127.0.0.1:{port}");
    let ng = FilterProcess::start(
        "ng-image",
        &[
            "--metrics-listen",
            &metrics_at,
            "--workers",
            "1",
            "--max-batch",
            "4",
            "--max-wait",
            "20ms",
        ],
    )
    .await
    .unwrap();
    let client = FilterClient::connect(ng.url.clone()).await.unwrap();
    let photo = std::fs::read(photos.path().join("chelsea.png")).unwrap();
    let apply = |payload: fproto::content::Payload, content_type: &str| {
        let mut c = client.clone();
        let req = fproto::ApplyRequest {
            content: Some(fproto::Content {
                content_type: content_type.into(),
                payload: Some(payload),
            }),
            ..Default::default()
        };
        async move { c.apply(req).await }
    };
    let calls: Vec<_> = (0..8)
        .map(|_| apply(image_payload(photo.clone()), "image/png"))
        .collect();
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    let e = apply(image_payload(b"not an image".to_vec()), "image/png")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let text = scrape(metrics_at).await;
    let ok = r#"sekisho_filter_requests_total{filter="ng-image",code="ok"}"#;
    let bad = r#"sekisho_filter_requests_total{filter="ng-image",code="invalid_argument"}"#;
    assert_eq!(metric(&text, ok), 8.0, "{text}");
    assert_eq!(metric(&text, bad), 1.0, "{text}");
    assert!(
        text.contains(r#"execution_provider="cpu""#) && text.contains("sekisho_filter_info{"),
        "{text}"
    );
    // Every good image took its share of the decoding budget once; the bad one never
    // got that far.
    assert_eq!(
        metric(&text, "sekisho_filter_decoding_wait_seconds_count"),
        8.0,
        "{text}"
    );
    // Every good image went through the batcher once, in batches of 1 to 4.
    let items = metric(&text, r#"sekisho_filter_batch_size_sum{model="open-nsfw"}"#);
    let batches = metric(
        &text,
        r#"sekisho_filter_batch_size_count{model="open-nsfw"}"#,
    );
    assert_eq!(items, 8.0, "{text}");
    assert!((2.0..=8.0).contains(&batches), "{batches} batches: {text}");
    assert_eq!(
        metric(
            &text,
            r#"sekisho_filter_queue_wait_seconds_count{model="open-nsfw"}"#
        ),
        8.0
    );
    assert_eq!(
        metric(
            &text,
            r#"sekisho_filter_inference_seconds_count{model="open-nsfw"}"#
        ),
        batches
    );
    // The estimate admission uses, fitted to the batches run: both parts published.
    let per_value = r#"sekisho_filter_run_cost_seconds{model="open-nsfw",part="per_value"}"#;
    let fixed = r#"sekisho_filter_run_cost_seconds{model="open-nsfw",part="fixed"}"#;
    assert!(metric(&text, per_value) > 0.0, "{text}");
    assert!(text.contains(fixed), "{text}");
    assert_eq!(
        metric(
            &text,
            r#"sekisho_filter_request_duration_seconds_count{filter="ng-image"}"#
        ),
        9.0
    );
    assert_eq!(
        metric(
            &text,
            r#"sekisho_filter_requests_in_flight{filter="ng-image"}"#
        ),
        0.0
    );
}

/// `sekisho dev` runs face-detect and ng-image in one process: each takes its own model
/// flag, and the shared `--model` is refused rather than handed to both.
#[tokio::test]
async fn dev_takes_a_model_per_onnx_filter() {
    let out = tokio::process::Command::new(sekisho_tests::sekisho_bin())
        .args(["dev", "--model", "x.onnx", "--listen", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use --face-model and --ng-model"), "{err}");

    // ng-image on a model file of the operator's choosing (here open_nsfw under another
    // name); face-detect keeps the cache's CenterFace.
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("my-classifier.onnx");
    std::fs::copy(
        sekisho_tests::cache_dir().join("models/open-nsfw.onnx"),
        &mine,
    )
    .unwrap();
    let cache = sekisho_tests::cache_dir();
    let dev = sekisho_tests::DevProcess::start(
        &["--ng-model".as_ref(), mine.as_os_str()],
        &[
            ("SEKISHO_CACHE", cache.to_str().unwrap()),
            ("SEKISHO_LOG", "warn,ort=error"),
        ],
    )
    .await
    .unwrap();
    // What each filter's Describe said, once the gateway has asked both.
    let mut filters = serde_json::Value::Null;
    let info = |filters: &serde_json::Value, name: &str| {
        filters["filters"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["name"] == name))
            .map(|f| f["descriptor"]["info"].clone())
            .unwrap_or_default()
    };
    for _ in 0..100 {
        filters = reqwest::get(format!("{}/v1/filters", dev.gateway))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ["ng-image", "face-detect"]
            .iter()
            .all(|n| info(&filters, n)["model_path"].is_string())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let info = |name: &str| info(&filters, name);
    assert_eq!(info("ng-image")["model_path"], mine.display().to_string());
    let face = info("face-detect")["model_path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(face.ends_with("centerface.onnx"), "{face}");
}

/// face-detect's `--max-side` reaches the chainstore through discovery: a chain asking
/// its model for a larger input is refused when written, at the config's path, and one
/// within is taken (a call asking for more is refused too: the reference tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_asking_face_detect_for_more_than_its_max_side_is_refused() {
    use sekisho_proto::chainstore::v1 as cs;
    let face = FilterProcess::start("face-detect", &["--max-side", "512"])
        .await
        .unwrap();
    let gw = TestGateway::setup()
        .filter("face-detect", &face.url)
        .start()
        .await
        .unwrap();
    gw.wait_described(&["face-detect"]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = sekisho_tests::TestChainstore::start_checking(&dir.path().join("c.db"), &gw.url)
        .await
        .unwrap();
    let mut c = store.client().await;
    let create = |side: u32| cs::CreateChainRequest {
        document: format!(
            "name: faces-{side}\ncontent_types: [image/png]\nstages:\n  - id: s\n    filters: [{{use: face-detect, config: {{max_side: {side}}}}}]\n    branches:\n      - when: \"score > 0.5\"\n        decide: {{decision: REVIEW, reason: r}}\ndefault_decision: APPROVE\n"
        ),
        author: "ops".into(),
        comment: String::new(),
    };
    c.create_chain(create(512)).await.unwrap();
    let e = c.create_chain(create(1024)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message()
            .contains("stages[0].filters[0].config.max_side: "),
        "{}",
        e.message()
    );
}

/// `sekisho bench images --scores` prints each image's answer as a line of JSON (what
/// `scripts/bench-gpu.sh` compares between the CPU and CUDA): the score and labels the
/// filter's `Apply` gives for that file; a file the filter cannot read stops it with the
/// file's name and the filter's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_images_scores_prints_each_images_answer() {
    let photos = sample_photos().unwrap();
    let f = FilterProcess::start("ng-image", &[]).await.unwrap();
    let run = |paths: Vec<std::path::PathBuf>| {
        let url = f.url.clone();
        async move {
            tokio::process::Command::new(sekisho_tests::sekisho_bin())
                .args(["bench", "images", "--filter", &url, "--scores"])
                .args(paths)
                .output()
                .await
                .unwrap()
        }
    };
    let files = [("chelsea.png", "image/png"), ("rocket.jpg", "image/jpeg")];
    let out = run(files.iter().map(|(n, _)| photos.path().join(n)).collect()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for ((name, content_type), line) in files.iter().zip(&lines) {
        let got = apply_file(&f, &photos.path().join(name), content_type).await;
        assert!(line["image"].as_str().unwrap().ends_with(name), "{line}");
        assert_eq!(line["score"].as_f64(), Some(got.score), "{line}");
        assert_eq!(line["labels"].as_object().unwrap().len(), got.labels.len());
        for (k, v) in &got.labels {
            assert_eq!(line["labels"][k].as_f64(), Some(*v), "{k}: {line}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not a picture").unwrap();
    let out = run(vec![photos.path().join("chelsea.png"), text]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("notes.png") && err.contains("not an image this filter reads"),
        "{err}"
    );
}

/// onnxruntime-gpu's own library (`scripts/fetch-models.sh --gpu`; `scripts/test.sh`
/// fetches it and sets `SEKISHO_REQUIRE_ORT_GPU=1`, without which a missing one skips
/// this), on this machine with neither a GPU nor CUDA: asked for CUDA and told to refuse,
/// the filter stops naming the CUDA provider library it could not load and where ONNX
/// Runtime came from; told to fall back, its CPU sessions give the scores the CPU
/// wheel's library gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnxruntime_gpu_without_a_gpu_says_what_is_missing_and_serves_on_the_cpu() {
    let gpu = sekisho_tests::cache_dir().join("onnxruntime-gpu/libonnxruntime.so.1.31.1");
    if !gpu.is_file() {
        assert!(
            std::env::var_os("SEKISHO_REQUIRE_ORT_GPU").is_none(),
            "SEKISHO_REQUIRE_ORT_GPU is set but {} is missing: scripts/fetch-models.sh --gpu",
            gpu.display()
        );
        eprintln!("skipped: no {}", gpu.display());
        return;
    }
    let lib = gpu.to_str().unwrap();
    let err = refused_at_start(&[
        "ng-image",
        "--provider",
        "cuda",
        "--on-missing-cuda",
        "refuse",
        "--onnxruntime",
        lib,
    ])
    .await;
    assert!(
        err.contains("CUDA was asked for (device 0) but cannot be used")
            && err.contains("libonnxruntime_providers_cuda.so")
            && err.contains(&format!("ONNX Runtime from {lib}")),
        "{err}"
    );

    let photos = sample_photos().unwrap();
    let fallen = FilterProcess::start("ng-image", &["--provider", "cuda", "--onnxruntime", lib])
        .await
        .unwrap();
    assert_eq!(describe(&fallen).await.info["execution_provider"], "cpu");
    let cpu = FilterProcess::start("ng-image", &[]).await.unwrap();
    for (name, content_type) in [
        ("chelsea.png", "image/png"),
        ("rocket.jpg", "image/jpeg"),
        ("astronaut.png", "image/png"),
    ] {
        let mut scores = Vec::new();
        for f in [&fallen, &cpu] {
            scores.push(
                apply_file(f, &photos.path().join(name), content_type)
                    .await
                    .score,
            );
        }
        assert!(
            (scores[0] - scores[1]).abs() < 1e-6,
            "{name}: {} with onnxruntime-gpu's library, {} with the CPU one",
            scores[0],
            scores[1]
        );
    }
}
