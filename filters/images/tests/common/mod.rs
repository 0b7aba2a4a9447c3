//! What the image filters' integration tests share: the setup's cache (ONNX Runtime and
//! the models) and the reference script.
#![allow(dead_code)] // each test file uses its own share

use std::path::{Path, PathBuf};
use std::process::Command;

use sekisho_filters_images::{ClassifierSpec, ModelOptions};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The setup's cache: `SEKISHO_CACHE`, else the workspace's `.sekisho/cache`.
pub fn cache() -> PathBuf {
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

pub fn options() -> ModelOptions {
    let c = cache();
    let mut o = ModelOptions::default();
    o.runtime.library = c.join("onnxruntime/libonnxruntime.so.1.31.1");
    o.model = Some(c.join("models/centerface.onnx"));
    o
}

pub fn reference(args: &[&str]) -> Vec<serde_json::Value> {
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

/// The spec of `reference.py tiny-model`: NCHW 8 × 8, RGB scaled to 0–1, four classes.
pub fn tiny_spec(model: &Path) -> ClassifierSpec {
    serde_json::from_value(serde_json::json!({
        "name": "tiny 4-class",
        "model": model,
        "layout": "nchw",
        "size": [8, 8],
        "color": "rgb",
        "scale": 1.0 / 255.0,
        "mean": [0.0, 0.0, 0.0],
        "classes": ["e3", "g3", "id", "ok"],
        "ok_class": "ok",
    }))
    .unwrap()
}
