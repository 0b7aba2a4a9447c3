//! zxing's two binarizers, bit for bit as `rxing` has them, built a word at a time, and
//! zxing-cpp's newer local one ([`midrange`]), which rxing does not have.
//!
//! rxing's `HybridBinarizer` and `GlobalHistogramBinarizer` set the black matrix one
//! pixel at a time through `BitMatrix::set` (an index and a bounds check each), and take
//! the image as an owned luminance source (which the filter copied for each): on a photo
//! without a code, where the QR search then ran four times, the two were a third of the
//! search's time. Here the same thresholds are computed the same way, a row of
//! comparisons at a time, and the bits gathered into 64-bit words, which become the
//! matrix row by row. The tests compare every bit with rxing's own on photos, noise,
//! flat areas and odd sizes, and `midrange`'s with a loop-for-loop transcription of
//! zxing-cpp's C++.

use rxing::common::{BitArray, BitMatrix};

/// The hybrid binarizer's blocks: 8×8 pixels, each thresholded by the average of the 5×5
/// blocks around it.
const BLOCK: usize = 8;
/// Below 5 blocks a side the hybrid binarizer falls back to the global one.
const MIN_SIDE: usize = BLOCK * 5;
/// A block whose darkest and lightest pixels differ by this or less is flat.
const MIN_DYNAMIC_RANGE: u8 = 24;
/// The global binarizer's histogram: 32 buckets of 8 grey levels.
const LUMINANCE_SHIFT: u32 = 3;
const BUCKETS: usize = 1 << (8 - LUMINANCE_SHIFT);

/// zxing's hybrid binarizer (`HybridBinarizer::get_black_matrix`): a threshold for each
/// 8×8 block from the blocks around it. `None` where rxing's would fail: an empty image,
/// or one under 40 pixels a side whose global threshold cannot be found.
pub fn local(luma: &[u8], w: usize, h: usize) -> Option<BitMatrix> {
    if w < MIN_SIDE || h < MIN_SIDE {
        return global(luma, w, h);
    }
    let luma = luma.get(..w * h)?;
    let (bw, bh) = (w.div_ceil(BLOCK), h.div_ceil(BLOCK));
    let points = black_points(luma, w, h, bw, bh);
    // Each block's threshold, the average of the 5×5 black points around it (around the
    // nearest block 2 in from the edge). The last block of a row or column is moved back
    // to fit inside the image, overlapping the one before it, where rxing sets a pixel if
    // either block's threshold says black; both take their 5×5 from around the same
    // block (the third from the edge), so they agree, and each pixel has one threshold.
    let mut thresholds = vec![0u8; bw * bh];
    for by in 0..bh {
        let top = by.clamp(2, bh - 3);
        for bx in 0..bw {
            let left = bx.clamp(2, bw - 3);
            let sum: u32 = (top - 2..=top + 2)
                .map(|y| {
                    points[y * bw + left - 2..=y * bw + left + 2]
                        .iter()
                        .sum::<u32>()
                })
                .sum();
            // Black points are grey levels, and so is their average.
            thresholds[by * bw + bx] = (sum / 25) as u8;
        }
    }
    threshold_blocks(luma, w, h, &thresholds)
}

/// The matrix of `luma` (`w`×`h`, at least 8 a side), each pixel dark at or below its
/// 8×8 block's threshold (`thresholds`, a block row after another). The last block of a
/// row or column, moved back inside the image over the one before, thresholds the pixels
/// they share, as zxing-cpp writes the blocks in order.
fn threshold_blocks(luma: &[u8], w: usize, h: usize, thresholds: &[u8]) -> Option<BitMatrix> {
    let (bw, bh) = (w.div_ceil(BLOCK), h.div_ceil(BLOCK));
    // Each block row's thresholds laid along its pixels.
    let mut lines = vec![0u8; bh * w];
    for (line, ts) in lines.chunks_exact_mut(w).zip(thresholds.chunks_exact(bw)) {
        for (bx, &t) in ts.iter().enumerate() {
            let x0 = (bx * BLOCK).min(w - BLOCK);
            line[x0..x0 + BLOCK].fill(t);
        }
    }
    let words = w.div_ceil(64);
    let mut bits = vec![0u64; words * h];
    for (y, (row, out)) in luma
        .chunks_exact(w)
        .zip(bits.chunks_exact_mut(words))
        .enumerate()
    {
        let by = if y >= h - BLOCK { bh - 1 } else { y / BLOCK };
        pack_at_most(row, &lines[by * w..(by + 1) * w], out);
    }
    to_matrix(&bits, w, h)
}

/// Each block's black point, as rxing's `calculateBlackPoints`: its average, or for a
/// flat block half its darkest pixel, raised to its already-computed neighbours' average
/// where that is darker than the block's darkest pixel (a flat block inside a dark area
/// stays dark).
fn black_points(luma: &[u8], w: usize, h: usize, bw: usize, bh: usize) -> Vec<u32> {
    let mut points = vec![0u32; bw * bh];
    // Per column, over the block row's 8 pixel rows: the sum, the darkest, the lightest.
    let (mut sum, mut min, mut max) = (vec![0u16; w], vec![0u8; w], vec![0u8; w]);
    for by in 0..bh {
        let y0 = (by * BLOCK).min(h - BLOCK);
        sum.fill(0);
        min.fill(u8::MAX);
        max.fill(u8::MIN);
        for row in luma[y0 * w..(y0 + BLOCK) * w].chunks_exact(w) {
            for (((&p, s), lo), hi) in row.iter().zip(&mut sum).zip(&mut min).zip(&mut max) {
                *s += u16::from(p);
                *lo = (*lo).min(p);
                *hi = (*hi).max(p);
            }
        }
        for bx in 0..bw {
            let x0 = (bx * BLOCK).min(w - BLOCK);
            let cols = x0..x0 + BLOCK;
            let total: u32 = sum[cols.clone()].iter().map(|&s| u32::from(s)).sum();
            let lo = min[cols.clone()].iter().copied().min().unwrap_or(0);
            let hi = max[cols].iter().copied().max().unwrap_or(0);
            // rxing stops taking the min and max once they differ by more than the
            // range, and only asks whether they do: the whole block's answer is the same.
            let mut point = total >> 6;
            if hi - lo <= MIN_DYNAMIC_RANGE {
                point = u32::from(lo) / 2;
                if by > 0 && bx > 0 {
                    let near = (points[(by - 1) * bw + bx]
                        + 2 * points[by * bw + bx - 1]
                        + points[(by - 1) * bw + bx - 1])
                        / 4;
                    if u32::from(lo) < near {
                        point = near;
                    }
                }
            }
            points[by * bw + bx] = point;
        }
    }
    points
}

/// zxing-cpp's own hybrid binarizer (`USE_NEW_ALGORITHM` in its source; rxing ports the
/// older one): each 8×8 block's threshold is halfway between its darkest and lightest
/// pixels where those differ by more than 24, then averaged over the 5×5 blocks around
/// it (the block itself counted three times, flat blocks not at all), and a pixel is
/// dark at or below its block's. Blocks with no such neighbour take the next threshold
/// along the block rows (the last one, after the last). Where rxing's averages every
/// pixel of a block, this one sets the threshold at the middle of the contrast that is
/// there, which keeps the modules of a faint or blurred code apart. Images under 40
/// pixels a side go to [`global`].
pub fn midrange(luma: &[u8], w: usize, h: usize) -> Option<BitMatrix> {
    if w < MIN_SIDE || h < MIN_SIDE {
        return global(luma, w, h);
    }
    let luma = luma.get(..w * h)?;
    let (bw, bh) = (w.div_ceil(BLOCK), h.div_ceil(BLOCK));
    let own = midpoints(luma, w, h, bw, bh);
    // Each block row's sums over 5 blocks across (and how many of them have a
    // threshold), around each block 2 or more in from the ends; then 5 of those down.
    let mut across = vec![(0u32, 0u32); bw * bh];
    for (row, out) in own.chunks_exact(bw).zip(across.chunks_exact_mut(bw)) {
        for (five, o) in row.windows(5).zip(&mut out[2..]) {
            *o = five.iter().fold((0, 0), |(s, n), &t| {
                (s + u32::from(t), n + u32::from(t > 0))
            });
        }
    }
    let mut smooth = vec![0u8; bw * bh];
    for by in 0..bh {
        let top = by.clamp(2, bh - 3);
        for bx in 0..bw {
            let left = bx.clamp(2, bw - 3);
            let t = u32::from(own[by * bw + bx]);
            let (mut sum, mut n) = (2 * t, 2 * u32::from(t > 0));
            for y in top - 2..=top + 2 {
                let (s, k) = across[y * bw + left];
                sum += s;
                n += k;
            }
            smooth[by * bw + bx] = sum.checked_div(n).unwrap_or(0) as u8;
        }
    }
    // Flat stretches take the threshold after them; the end takes the last one.
    let mut next = smooth.iter().rev().copied().find(|&t| t > 0).unwrap_or(0);
    for t in smooth.iter_mut().rev() {
        if *t == 0 {
            *t = next;
        } else {
            next = *t;
        }
    }
    threshold_blocks(luma, w, h, &smooth)
}

/// Each block's midpoint between its darkest and lightest pixel, 0 for a flat block.
fn midpoints(luma: &[u8], w: usize, h: usize, bw: usize, bh: usize) -> Vec<u8> {
    let mut points = vec![0u8; bw * bh];
    let (mut min, mut max) = (vec![0u8; w], vec![0u8; w]);
    for (by, out) in points.chunks_exact_mut(bw).enumerate() {
        let y0 = (by * BLOCK).min(h - BLOCK);
        min.fill(u8::MAX);
        max.fill(u8::MIN);
        for row in luma[y0 * w..(y0 + BLOCK) * w].chunks_exact(w) {
            for ((&p, lo), hi) in row.iter().zip(&mut min).zip(&mut max) {
                *lo = (*lo).min(p);
                *hi = (*hi).max(p);
            }
        }
        for (bx, t) in out.iter_mut().enumerate() {
            let x0 = (bx * BLOCK).min(w - BLOCK);
            let lo = min[x0..x0 + BLOCK].iter().copied().min().unwrap_or(0);
            let hi = max[x0..x0 + BLOCK].iter().copied().max().unwrap_or(0);
            if hi - lo > MIN_DYNAMIC_RANGE {
                *t = ((u16::from(hi) + u16::from(lo)) / 2) as u8;
            }
        }
    }
    points
}

/// zxing's global histogram binarizer (`GlobalHistogramBinarizer::get_black_matrix`):
/// one threshold for the whole image, the valley between the two peaks of a histogram
/// of the middle three fifths of four rows. `None` where there is no such valley (too
/// little contrast) or no image.
pub fn global(luma: &[u8], w: usize, h: usize) -> Option<BitMatrix> {
    if w == 0 || h == 0 {
        return None;
    }
    let luma = luma.get(..w * h)?;
    let mut buckets = [0u32; BUCKETS];
    for y in 1..5 {
        let row = &luma[h * y / 5 * w..][..w];
        for &p in &row[w / 5..w * 4 / 5] {
            buckets[usize::from(p >> LUMINANCE_SHIFT)] += 1;
        }
    }
    let black = black_point(&buckets)?;
    // Black below the point: at most one grey level under it (the point is at least 8).
    let line = vec![(black - 1) as u8; w];
    let words = w.div_ceil(64);
    let mut bits = vec![0u64; words * h];
    for (row, out) in luma.chunks_exact(w).zip(bits.chunks_exact_mut(words)) {
        pack_at_most(row, &line, out);
    }
    to_matrix(&bits, w, h)
}

/// rxing's `estimateBlackPoint`, step for step (its integer types and casts included).
fn black_point(buckets: &[u32; BUCKETS]) -> Option<u32> {
    let (mut first, mut first_size, mut max_count) = (0usize, 0u32, 0u32);
    for (x, &b) in buckets.iter().enumerate() {
        if b > first_size {
            first = x;
            first_size = b;
        }
        max_count = max_count.max(b);
    }
    // The second peak: far from the first, by the square of the distance.
    let (mut second, mut second_score) = (0usize, 0u32);
    for (x, &b) in buckets.iter().enumerate() {
        let d = (x as i32 - first as i32).unsigned_abs();
        let score = b * d * d;
        if score > second_score {
            second = x;
            second_score = score;
        }
    }
    if first > second {
        std::mem::swap(&mut first, &mut second);
    }
    if second - first <= BUCKETS / 16 {
        return None;
    }
    // The valley between them, low and nearer the light peak.
    let (mut valley, mut valley_score) = (second as isize - 1, -1i32);
    for x in (first as isize + 1..=second as isize).rev() {
        let from_first = x - first as isize;
        let score = from_first
            * from_first
            * (second as isize - x)
            * (max_count - buckets[x as usize]) as isize;
        if score as i32 > valley_score {
            valley = x;
            valley_score = score as i32;
        }
    }
    Some((valley as u32) << LUMINANCE_SHIFT)
}

/// Bit x of `out` (64 to a word, lowest first) set where `row[x] <= line[x]`: the
/// comparisons a whole row at a time, then each 8 of them (bytes of 0 or 1) gathered into
/// one byte by a multiplication that moves byte i's low bit to bit 56 + i.
fn pack_at_most(row: &[u8], line: &[u8], out: &mut [u64]) {
    const GATHER: u64 = 0x0102_0408_1020_4080;
    let mut ones = [0u8; 64];
    for ((px, th), word) in row.chunks(64).zip(line.chunks(64)).zip(out) {
        for ((o, &p), &t) in ones.iter_mut().zip(px).zip(th) {
            *o = u8::from(p <= t);
        }
        ones[px.len()..].fill(0);
        let mut bytes = [0u8; 8];
        for (b, eight) in bytes.iter_mut().zip(ones.chunks_exact(8)) {
            let lanes = u64::from_le_bytes(eight.try_into().unwrap_or_default());
            *b = (lanes.wrapping_mul(GATHER) >> 56) as u8;
        }
        *word = u64::from_le_bytes(bytes);
    }
}

/// The matrix of `w`×`h` bits held row by row in 64-bit words, lowest bit leftmost (as
/// `BitMatrix` holds them; it takes rows, not words).
fn to_matrix(bits: &[u64], w: usize, h: usize) -> Option<BitMatrix> {
    let words = w.div_ceil(64);
    let mut matrix = BitMatrix::new(w as u32, h as u32).ok()?;
    let mut row = BitArray::with_size(w);
    for (y, ws) in bits.chunks_exact(words).enumerate() {
        for (i, &word) in ws.iter().enumerate() {
            row.setBulk(i * 64, word as usize);
        }
        matrix.setRow(y as u32, &row);
    }
    Some(matrix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rxing::common::{GlobalHistogramBinarizer, HybridBinarizer};
    use rxing::{Binarizer, Luma8LuminanceSource};

    fn rxing_local(luma: &[u8], w: usize, h: usize) -> Option<BitMatrix> {
        let source = Luma8LuminanceSource::new(luma.to_vec(), w as u32, h as u32).ok()?;
        HybridBinarizer::new(source)
            .get_black_matrix()
            .ok()
            .cloned()
    }

    fn rxing_global(luma: &[u8], w: usize, h: usize) -> Option<BitMatrix> {
        let source = Luma8LuminanceSource::new(luma.to_vec(), w as u32, h as u32).ok()?;
        GlobalHistogramBinarizer::new(source)
            .get_black_matrix()
            .ok()
            .cloned()
    }

    /// Grey images of many kinds and sizes: noise, gradients, flat areas with a dark
    /// patch (where a flat block takes its neighbours' point), stripes, sizes around the
    /// block, the 40-pixel fallback and 64-bit word boundaries.
    fn images() -> Vec<(Vec<u8>, usize, usize)> {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut out = Vec::new();
        let sizes = [
            (1, 1),
            (7, 50),
            (39, 39),
            (40, 40),
            (41, 47),
            (63, 64),
            (65, 71),
            (127, 129),
            (200, 150),
            (321, 203),
        ];
        for (w, h) in sizes {
            let noise: Vec<u8> = (0..w * h).map(|_| next() as u8).collect();
            let gradient: Vec<u8> = (0..w * h)
                .map(|i| ((i % w) * 255 / w.max(1)) as u8 / 2 + ((i / w) % 97) as u8)
                .collect();
            let patch: Vec<u8> = (0..w * h)
                .map(|i| {
                    let (x, y) = (i % w, i / w);
                    if x > w / 3 && x < w * 2 / 3 && y > h / 4 {
                        12
                    } else {
                        200
                    }
                })
                .collect();
            let stripes: Vec<u8> = (0..w * h)
                .map(|i| {
                    if (i % w / 3 + i / w / 5) % 2 == 0 {
                        30
                    } else {
                        220
                    }
                })
                .collect();
            let speckle: Vec<u8> = (0..w * h)
                .map(|i| {
                    let base = 90 + (i % w) as u32 * 60 / w.max(1) as u32;
                    (base + (next() % 16) as u32) as u8
                })
                .collect();
            // Flat but for a few contrasty spots: most thresholds come from far away.
            let spots: Vec<u8> = (0..w * h)
                .map(|i| {
                    let (x, y) = (i % w, i / w);
                    let spot = (x / 9 * 7 + y / 9 * 13) % 23 == 0;
                    if spot && (x + y) % 2 == 0 { 60 } else { 170 }
                })
                .collect();
            for img in [noise, gradient, patch, stripes, speckle, spots] {
                out.push((img, w, h));
            }
        }
        out
    }

    /// zxing-cpp's `HybridBinarizer` (`USE_NEW_ALGORITHM`) transcribed loop for loop:
    /// `BlockThresholds`, `SmoothThresholds` (25 reads a block, then the gaps filled
    /// forward) and `ThresholdBlock` writing each block in turn, later blocks over earlier.
    fn zxing_cpp_midrange(luma: &[u8], w: usize, h: usize) -> Vec<bool> {
        let (sw, sh) = (w.div_ceil(8), h.div_ceil(8));
        let mut own = vec![0i32; sw * sh];
        for y in 0..sh {
            let y0 = (y * 8).min(h - 8);
            for x in 0..sw {
                let x0 = (x * 8).min(w - 8);
                let (mut lo, mut hi) = (255, 0);
                for yy in 0..8 {
                    for xx in 0..8 {
                        let p = i32::from(luma[(y0 + yy) * w + x0 + xx]);
                        (lo, hi) = (lo.min(p), hi.max(p));
                    }
                }
                own[y * sw + x] = if hi - lo > 24 { (hi + lo) / 2 } else { 0 };
            }
        }
        let mut out = vec![0i32; sw * sh];
        for y in 0..sh {
            for x in 0..sw {
                let (left, top) = (x.clamp(2, sw - 3), y.clamp(2, sh - 3));
                let mut sum = own[y * sw + x] * 2;
                let mut n = if sum > 0 { 2 } else { 0 };
                for yy in top - 2..=top + 2 {
                    for xx in left - 2..=left + 2 {
                        let t = own[yy * sw + xx];
                        sum += t;
                        n += i32::from(t > 0);
                    }
                }
                out[y * sw + x] = if n > 0 { sum / n } else { 0 };
            }
        }
        let mut last: Option<usize> = None;
        for i in 0..out.len() {
            if out[i] != 0 {
                let from = last.map_or(0, |l| l + 1);
                let t = out[i];
                out[from..i].fill(t);
                last = Some(i);
            }
        }
        let tail = out[last.unwrap_or(0)];
        out[last.map_or(0, |l| l + 1)..].fill(tail);
        let mut dark = vec![false; w * h];
        for y in 0..sh {
            let y0 = (y * 8).min(h - 8);
            for x in 0..sw {
                let x0 = (x * 8).min(w - 8);
                for yy in y0..y0 + 8 {
                    for xx in x0..x0 + 8 {
                        dark[yy * w + xx] = i32::from(luma[yy * w + xx]) <= out[y * sw + x];
                    }
                }
            }
        }
        dark
    }

    fn bools(bits: &BitMatrix) -> Vec<bool> {
        let (w, h) = (bits.getWidth(), bits.getHeight());
        (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| bits.get(x, y))
            .collect()
    }

    #[test]
    fn midrange_sets_zxing_cpps_bits() {
        for (luma, w, h) in images() {
            let ours = midrange(&luma, w, h);
            if w < MIN_SIDE || h < MIN_SIDE {
                assert_eq!(ours, global(&luma, w, h), "{w}×{h}");
                continue;
            }
            let ours = bools(&ours.expect("an image of 40 a side or more"));
            assert!(ours == zxing_cpp_midrange(&luma, w, h), "{w}×{h}");
        }
    }

    /// One contrasty block in a flat image: its midpoint (150) reaches the blocks whose
    /// 5×5 take it in, the rest take it from those, and only its dark pixels are dark.
    #[test]
    fn one_contrasty_block_thresholds_the_whole_image() {
        let (w, h) = (48, 48);
        let luma: Vec<u8> = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                if x < 8 && y < 8 && (x + y) % 2 == 0 {
                    100
                } else {
                    200
                }
            })
            .collect();
        let dark = bools(&midrange(&luma, w, h).unwrap());
        let expected: Vec<bool> = luma.iter().map(|&p| p == 100).collect();
        assert!(dark == expected);
        // A flat image has no threshold anywhere: nothing is dark but black.
        let flat = vec![90u8; w * h];
        assert!(!bools(&midrange(&flat, w, h).unwrap()).contains(&true));
    }

    #[test]
    fn both_binarizers_give_rxings_bits() {
        for (luma, w, h) in images() {
            assert_eq!(
                local(&luma, w, h),
                rxing_local(&luma, w, h),
                "local {w}×{h}"
            );
            assert_eq!(
                global(&luma, w, h),
                rxing_global(&luma, w, h),
                "global {w}×{h}"
            );
        }
    }
}
