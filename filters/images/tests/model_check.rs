//! A model is checked before its filter serves: one that cannot take what the filter
//! gives it, or gives back what the filter cannot read, is refused at start with the
//! reason, instead of failing every call (or, for a graph that fixes its batch size,
//! only the calls that happen to be batched together, under load).
//!
//! The models are `reference.py tiny-model --variant …`, built by the test; needs what
//! `scripts/setup.sh` installs.

use std::path::{Path, PathBuf};

use sekisho_filter_sdk::Filter;
use sekisho_filters_images::{
    BatchSizes, ClassifierSpec, FaceDetect, ModelOptions, NgImage, WarmUp,
};

mod common;
use common::{cache, options, reference, tiny_spec};

/// `reference.py tiny-model --variant VARIANT`, written into `dir`.
fn tiny(dir: &Path, variant: &str) -> PathBuf {
    let path = dir.join(format!("tiny-{variant}.onnx"));
    reference(&["tiny-model", path.to_str().unwrap(), "--variant", variant]);
    path
}

fn ng_options(max_batch: usize) -> ModelOptions {
    let mut o = options();
    o.model = None;
    o.batch.max_batch = max_batch;
    o
}

/// Why loading `spec` with `o` fails (panics when it loads).
fn refusal(spec: ClassifierSpec, o: &ModelOptions) -> String {
    match NgImage::load(spec, o) {
        Ok(_) => panic!("the model was accepted"),
        Err(e) => e.to_string(),
    }
}

fn with(spec: &ClassifierSpec, change: serde_json::Value) -> ClassifierSpec {
    let mut v = serde_json::to_value(spec).unwrap();
    for (k, x) in change.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

/// A spec that does not match its model (size, layout, classes, input or output name),
/// a model that gives integers, one whose input fixes a batch of 4 and one whose graph
/// reshapes to a batch of one: each refused at load, the message saying why and, where
/// there is one, what to change.
#[test]
fn a_model_that_cannot_take_what_the_filter_gives_it_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let good = tiny_spec(&tiny(dir.path(), "good"));
    let o = ng_options(8);
    let cases: Vec<(&str, ClassifierSpec, Vec<&str>)> = vec![
        (
            "size",
            with(&good, serde_json::json!({"size": [16, 16]})),
            vec![
                "input `x` is [?, 3, 8, 8]",
                "gives it [?, 3, 16, 16]",
                "layout and size",
            ],
        ),
        (
            "layout",
            with(&good, serde_json::json!({"layout": "nhwc"})),
            vec!["input `x` is [?, 3, 8, 8]", "gives it [?, 8, 8, 3]"],
        ),
        (
            "classes",
            with(
                &good,
                serde_json::json!({"classes": ["nsfw", "ok"], "ok_class": "ok"}),
            ),
            vec!["output `probs` gives 4 values", "reads 2", "nsfw, ok"],
        ),
        (
            "input name",
            with(&good, serde_json::json!({"input": "image"})),
            vec!["no input `image` (its inputs: `x`)"],
        ),
        (
            "output name",
            with(&good, serde_json::json!({"output": "scores"})),
            vec!["no output `scores` (its outputs: `probs`)"],
        ),
        (
            "integer output",
            tiny_spec(&tiny(dir.path(), "argmax")),
            vec!["`probs` is a tensor of i64", "32-bit floats"],
        ),
        (
            "fixed batch of 4",
            tiny_spec(&tiny(dir.path(), "batch-4")),
            vec!["batches of exactly 4 items", "symbolic batch dimension"],
        ),
        (
            "graph fixes a batch of 1",
            tiny_spec(&tiny(dir.path(), "reshape-batch-1")),
            vec!["runs one item but not a batch of 8", "smaller --max-batch"],
        ),
    ];
    for (what, spec, says) in cases {
        let model = spec.model.clone();
        let err = refusal(spec, &o);
        assert!(err.contains(&model), "{what}: {err}");
        for s in says {
            assert!(err.contains(s), "{what}: {err:?} does not say {s:?}");
        }
    }
    // The model whose graph fixes a batch of 1 serves when told to run one at a time.
    let mut one = ng_options(1);
    one.workers = 1;
    NgImage::load(tiny_spec(&tiny(dir.path(), "reshape-batch-1")), &one).unwrap();
}

/// A model whose input declares a batch of exactly 1 serves one item at a time whatever
/// `max_batch` says (and `Describe` says 1): sixteen items sent at once each get the
/// answer the model with a symbolic batch gives them. Without the cap, the items that
/// met in a batch would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_declares_a_batch_of_one_serves_one_item_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = ng_options(8);
    o.batch.max_wait = std::time::Duration::from_millis(20);
    let fixed =
        std::sync::Arc::new(NgImage::load(tiny_spec(&tiny(dir.path(), "batch-1")), &o).unwrap());
    let good = NgImage::load(tiny_spec(&tiny(dir.path(), "good")), &o).unwrap();
    assert_eq!(fixed.max_batch_size(), 1);
    assert_eq!(good.max_batch_size(), 8);
    let colour = |i: u8| image::Rgb([i.wrapping_mul(37), 255 - i * 3, i.wrapping_mul(11)]);
    let together = futures::future::join_all((0..16u8).map(|i| {
        let fixed = fixed.clone();
        async move {
            let img = image::RgbImage::from_pixel(8, 8, colour(i));
            fixed.probabilities(&img).await
        }
    }))
    .await;
    for (i, got) in together.into_iter().enumerate() {
        let img = image::RgbImage::from_pixel(8, 8, colour(i as u8));
        let want = good.probabilities(&img).await.unwrap();
        let got = got.unwrap_or_else(|e| panic!("item {i}: {e}"));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "item {i}: {got:?} vs {want:?}");
        }
    }
    assert_eq!(fixed.batches(), 16, "one batch per item");
}

/// `Describe` says how the model was warmed, and how long that took from reading the
/// file: `check` on the CPU unless told `all`;
/// face-detect, whose input follows each photo's aspect ratio, has no one shape to warm
/// and says `check` even when told `all`. A face-detect process given a classifier's
/// model is refused (it has none of CenterFace's inputs and outputs).
#[test]
fn describe_says_how_the_model_was_warmed_and_face_detect_refuses_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "good");
    let mut o = ng_options(4);
    o.workers = 2;
    let auto = NgImage::load(tiny_spec(&model), &o).unwrap();
    assert_eq!(auto.info()["warm_up"], "check");
    // On the CPU every batch size runs: no padding.
    assert_eq!(auto.info()["batch_sizes"], "every");
    o.warm_up = WarmUp::All;
    o.batch.sizes = BatchSizes::Only(vec![16]);
    let over = NgImage::load(tiny_spec(&model), &o)
        .err()
        .expect("16 is over 4");
    assert!(
        over.to_string()
            .contains("--batch-sizes: batch size 16 is over the most a batch holds (4"),
        "{over}"
    );
    o.batch.sizes = BatchSizes::Only(vec![2]);
    let all = NgImage::load(tiny_spec(&model), &o).unwrap();
    assert_eq!(all.info()["warm_up"], "all");
    assert_eq!(all.info()["batch_sizes"], "2,4");
    // And how long the model took to be ready: loading, check and warm-up.
    for served in [&auto, &all] {
        let secs: f64 = served.info()["model_ready_seconds"].parse().unwrap();
        assert!(secs > 0.0 && secs.is_finite(), "{secs}");
    }

    let mut f = options();
    f.warm_up = WarmUp::All;
    let face = FaceDetect::load(&f).unwrap();
    assert_eq!(face.info()["warm_up"], "check");
    f.model = Some(cache().join("models/open-nsfw.onnx"));
    let err = FaceDetect::load(&f)
        .err()
        .expect("open_nsfw is not CenterFace");
    assert!(
        err.to_string()
            .contains("found 0 of the 5 inputs and outputs named"),
        "{err}"
    );
}
