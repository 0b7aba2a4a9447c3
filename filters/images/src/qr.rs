//! `qr-code`: finds and reads QR codes with `rqrr` (no model). Score 1 when at least one
//! code is found; label `qr_count`; a region per code (its bounding box); the decoded
//! text of each readable code in `details`, cut to 256 characters.

use std::collections::BTreeMap;

use async_trait::async_trait;
use image::RgbImage;
use schemars::JsonSchema;
use sekisho_filter_sdk::{Filter, FilterError, Input, Verdict, proto};
use serde::{Deserialize, Serialize};

use crate::intake::{self, Intake};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QrConfig {
    /// Images with a longer side are scaled down first (QR finding is linear in pixels).
    #[schemars(range(min = 64))]
    pub max_side: u32,
    /// Count a found grid even when its content cannot be read.
    pub count_unreadable: bool,
}

impl Default for QrConfig {
    fn default() -> Self {
        QrConfig {
            max_side: 2048,
            count_unreadable: true,
        }
    }
}

/// One code found: its bounding box in original pixels, and its text when readable.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub b: [f32; 4],
    pub text: Option<String>,
}

pub fn find(img: &RgbImage, cfg: &QrConfig) -> Vec<Found> {
    let (w, h) = img.dimensions();
    let shrink = if w.max(h) > cfg.max_side.max(64) {
        cfg.max_side.max(64) as f32 / w.max(h) as f32
    } else {
        1.0
    };
    let gray = if shrink < 1.0 {
        let (sw, sh) = ((w as f32 * shrink) as u32, (h as f32 * shrink) as u32);
        match crate::resize::antialiased(img, sw.max(1), sh.max(1)) {
            Ok(small) => image::imageops::grayscale(&small),
            // Not for an RgbImage's own buffer; the full size would be read correctly too.
            Err(_) => image::imageops::grayscale(img),
        }
    } else {
        image::imageops::grayscale(img)
    };
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(
        gray.width() as usize,
        gray.height() as usize,
        |x, y| gray.get_pixel(x as u32, y as u32).0[0],
    );
    prepared
        .detect_grids()
        .into_iter()
        .filter_map(|g| {
            let xs = g.bounds.iter().map(|p| p.x as f32);
            let ys = g.bounds.iter().map(|p| p.y as f32);
            let b = [
                xs.clone().fold(f32::MAX, f32::min) / shrink,
                ys.clone().fold(f32::MAX, f32::min) / shrink,
                xs.fold(f32::MIN, f32::max) / shrink,
                ys.fold(f32::MIN, f32::max) / shrink,
            ];
            let text = g.decode().ok().map(|(_, t)| t.chars().take(256).collect());
            (text.is_some() || cfg.count_unreadable).then_some(Found { b, text })
        })
        .collect()
}

#[derive(Default)]
pub struct QrCode {
    intake: Intake,
}

impl QrCode {
    /// Takes images through `intake` (its limits and decoding budget, which several
    /// filters in one process may share).
    pub fn with_intake(mut self, intake: Intake) -> Self {
        self.intake = intake;
        self
    }
}

#[async_trait]
impl Filter for QrCode {
    type Config = QrConfig;

    fn name(&self) -> &str {
        "qr-code"
    }

    fn content_types(&self) -> Vec<String> {
        intake::image_types()
    }

    fn labels(&self) -> Vec<String> {
        vec!["qr_count".into()]
    }

    fn info(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("decoder".into(), "rqrr 0.11".into())])
    }

    async fn apply(&self, input: Input, cfg: QrConfig) -> Result<Verdict, FilterError> {
        let found = self
            .intake
            .with_image(input, move |img| Ok(find(&img, &cfg)))
            .await?;
        let mut v = Verdict::score(if found.is_empty() { 0.0 } else { 1.0 })
            .label("qr_count", found.len() as f64);
        let texts: Vec<_> = found.iter().map(|f| f.text.clone()).collect();
        for f in found {
            v = v.region(proto::Region {
                x: f.b[0],
                y: f.b[1],
                width: f.b[2] - f.b[0],
                height: f.b[3] - f.b[1],
                score: 1.0,
                label: "qr".into(),
                landmarks: vec![],
            });
        }
        if !texts.is_empty() {
            v = v.details(serde_json::json!({ "texts": texts }));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A QR code drawn into a photo-sized canvas at (x, y), `module` pixels per module.
    fn canvas_with_qr(text: &str, x: u32, y: u32, module: u32) -> RgbImage {
        let code = qrcode::QrCode::new(text.as_bytes()).unwrap();
        let n = code.width() as u32;
        let colors = code.to_colors();
        let mut img = RgbImage::from_pixel(640, 480, image::Rgb([230, 220, 200]));
        // A quiet zone of 4 modules, white.
        for py in 0..(n + 8) * module {
            for px in 0..(n + 8) * module {
                let (mx, my) = (px / module, py / module);
                let dark = mx >= 4
                    && my >= 4
                    && mx < n + 4
                    && my < n + 4
                    && colors[((my - 4) * n + (mx - 4)) as usize] == qrcode::Color::Dark;
                let v = if dark { 0 } else { 255 };
                img.put_pixel(x + px, y + py, image::Rgb([v, v, v]));
            }
        }
        img
    }

    #[test]
    fn finds_reads_and_places_a_code() {
        let img = canvas_with_qr("https://example.com/spam", 100, 50, 6);
        let found = find(&img, &QrConfig::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].text.as_deref(), Some("https://example.com/spam"));
        // The code's modules start 4 modules (24 px) inside the quiet zone.
        let b = found[0].b;
        assert!(
            (b[0] - 124.0).abs() <= 6.0 && (b[1] - 74.0).abs() <= 6.0,
            "{b:?}"
        );
    }

    #[test]
    fn a_plain_photo_has_none_and_large_images_are_scaled() {
        let img = RgbImage::from_fn(800, 600, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        assert!(find(&img, &QrConfig::default()).is_empty());
        let img = canvas_with_qr("scaled", 0, 0, 8);
        let small = QrConfig {
            max_side: 320,
            ..QrConfig::default()
        };
        let found = find(&img, &small);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].b[2] > 200.0,
            "boxes are in original pixels: {:?}",
            found[0].b
        );
    }
}
