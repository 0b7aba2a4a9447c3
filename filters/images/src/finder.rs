//! Finder patterns (the 7×7 squares at a QR code's corners, a Micro QR code's one, an rMQR
//! strip's corner) in a binarised image: rxing's `FindFinderPatterns` (zxing-cpp's, trying
//! harder: every third row scanned for dark:light:dark runs of 1:1:3:1:1, each hit then
//! checked across and located by rxing's `LocateConcentricPattern`), giving the same
//! patterns in the same order. What differs is how a scanned row becomes runs: rxing copies
//! the row out of the matrix and reads it a pixel at a time through `BitArray::get`, which
//! was the largest single part of a search (BENCHMARKS (h)); here the runs come from the
//! row's words, one colour change at a time, found as the set bits of the word XORed with
//! itself shifted by one.

use rxing::common::cpp_essentials::{
    ConcentricPattern, FindLeftGuardBy, FixedPattern, IsPattern, LocateConcentricPattern,
    PatternType, PatternView,
};
use rxing::common::{BitFieldBaseType, BitMatrix};
use rxing::{Point, point};

const PATTERN: FixedPattern<5, 7, false> = FixedPattern::new([1, 1, 3, 1, 1]);

/// rxing's `detector::FindFinderPatterns(bits, true, 0)`, to the pattern.
pub fn finder_patterns(bits: &BitMatrix) -> Vec<ConcentricPattern> {
    let width = bits.getWidth() as usize;
    let mut found: Vec<ConcentricPattern> = Vec::new();
    let mut runs = Vec::new();
    for y in (2..bits.getHeight()).step_by(3) {
        row_runs(bits.getRow(y).getBitArray(), width, &mut runs);
        let mut next = PatternView::from_slice(&runs);
        loop {
            match find_pattern(next) {
                Ok(view) if view.isValid() => next = view,
                _ => break,
            }
            let front = next.pixelsInFront() as f32;
            let run = |i: usize| f32::from(next[i]);
            let x = front + run(0) + run(1) + run(2) / 2.0;
            let p = point(x, y as f32 + 0.5);
            // Not inside a pattern already found.
            if !found
                .iter()
                .any(|old| Point::distance(p, old.p) < old.size as f32 / 2.0)
            {
                // Three times the run's width: room for very skewed patterns.
                let range = i32::from(next.sum(None)) * 3;
                let located =
                    LocateConcentricPattern::<true, 5, 7>(bits, &PATTERN.into(), p, range);
                found.extend(located);
            }
            next.skipPair();
            next.skipPair();
            next.extend();
        }
    }
    found
}

/// rxing's `FindPattern`: the next window of five runs, from `view`, that passes a quick
/// 1:1:3:1:1 test and then `IsPattern`.
fn find_pattern(view: PatternView<'_>) -> rxing::common::Result<PatternView<'_>> {
    FindLeftGuardBy::<5, _>(view, 5, |view: &PatternView, space: Option<f32>| {
        let run = |i: usize| view[i];
        let wide = run(0).max(run(4)).wrapping_mul(2);
        if run(2) < 3 || run(2) < wide || run(2) < run(1).max(run(3)) {
            return false;
        }
        IsPattern::<true, 5, 7, false>(view, &PATTERN, space, 0.1, 0.0, 0.0) != 0.0
    })
}

/// The runs of one row of `width` bits (held in `words`, lowest bit leftmost, set bits
/// dark) as rxing's `PatternRow` holds them: light first (0 when the row starts dark), then
/// alternating, and ending light (a 0 after a last dark run).
fn row_runs(words: &[BitFieldBaseType], width: usize, runs: &mut Vec<PatternType>) {
    const BITS: usize = BitFieldBaseType::BITS as usize;
    runs.clear();
    if width == 0 {
        return;
    }
    let (mut start, mut dark, mut before) = (0, false, 0);
    for (k, &word) in words.iter().enumerate().take(width.div_ceil(BITS)) {
        let base = k * BITS;
        // Bit i set where pixel i differs from the one to its left (light before the row).
        let mut changes = word ^ (word << 1 | before);
        before = word >> (BITS - 1);
        if width - base < BITS {
            changes &= (1 << (width - base)) - 1;
        }
        while changes != 0 {
            let at = base + changes.trailing_zeros() as usize;
            runs.push((at - start) as PatternType);
            (start, dark) = (at, !dark);
            changes &= changes - 1;
        }
    }
    runs.push((width - start) as PatternType);
    if dark {
        runs.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rxing::common::cpp_essentials::{GetPatternRowTP, PatternRow};
    use rxing::qrcode::cpp_port::detector;

    /// A seeded xorshift: rows and images of every kind without a dependency.
    fn noise(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed.max(1);
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    /// A matrix of `w`×`h` whose runs are 1 to `longest` pixels long.
    fn runs_of(w: u32, h: u32, longest: u64, seed: u64) -> BitMatrix {
        let mut next = noise(seed);
        let mut bits = BitMatrix::new(w, h).unwrap();
        for y in 0..h {
            let (mut x, mut dark) = (0, next().is_multiple_of(2));
            while x < w {
                let run = 1 + (next() % longest) as u32;
                for i in x..(x + run).min(w) {
                    if dark {
                        bits.set(i, y);
                    }
                }
                (x, dark) = (x + run, !dark);
            }
        }
        bits
    }

    fn rxing_runs(bits: &BitMatrix, y: u32) -> Vec<PatternType> {
        let mut row = PatternRow::default();
        GetPatternRowTP(bits, y, &mut row, false);
        row.into_iter().collect()
    }

    #[test]
    fn runs_are_rxings_at_any_width_and_after_a_flip() {
        let mut runs = Vec::new();
        for (i, w) in [1, 2, 63, 64, 65, 127, 128, 129, 300, 1000]
            .into_iter()
            .enumerate()
        {
            for longest in [1, 3, 70] {
                let mut bits = runs_of(w, 6, longest, 7 + i as u64 * 31 + longest);
                for flipped in [false, true] {
                    if flipped {
                        bits.flip_self();
                    }
                    for y in 0..6 {
                        row_runs(bits.getRow(y).getBitArray(), w as usize, &mut runs);
                        assert_eq!(runs, rxing_runs(&bits, y), "width {w}, row {y}, {flipped}");
                    }
                }
            }
        }
        let mut all_dark = BitMatrix::new(130, 1).unwrap();
        all_dark.flip_self();
        row_runs(all_dark.getRow(0).getBitArray(), 130, &mut runs);
        assert_eq!(runs, [0, 130, 0]);
        assert_eq!(runs, rxing_runs(&all_dark, 0));
    }

    /// The same patterns as rxing's scan, in the same order, on matrices with finder
    /// patterns in them (codes of every size, at several scales, turned, inverted) and
    /// on noise.
    #[test]
    fn the_patterns_are_rxings() {
        for (i, text) in [
            "a",
            "https://example.com/a/longer/path?q=1",
            &"z".repeat(300),
        ]
        .into_iter()
        .enumerate()
        {
            let code = qrcode::QrCode::new(text.as_bytes()).unwrap();
            let n = code.width() as u32;
            for module in [1, 2, 3, 5] {
                let side = (n + 8) * module + 17;
                let mut bits = BitMatrix::new(side + 40, side).unwrap();
                for y in 0..side {
                    for x in 0..side + 40 {
                        // Turned slightly: a shear of one pixel in 11.
                        let (cx, cy) = ((x + y / 11) / module, y / module);
                        let dark = cx >= 4
                            && cy >= 4
                            && cx < n + 4
                            && cy < n + 4
                            && code[((cx - 4) as usize, (cy - 4) as usize)] == qrcode::Color::Dark;
                        if dark {
                            bits.set(x, y);
                        }
                    }
                }
                for flipped in [false, true] {
                    if flipped {
                        bits.flip_self();
                    }
                    let ours = finder_patterns(&bits);
                    let theirs = detector::FindFinderPatterns(&bits, true, 0);
                    assert_eq!(ours, theirs, "code {i}, module {module}, {flipped}");
                    if !flipped {
                        // Not an empty comparison: two or three of the code's patterns
                        // (the inverse has none: its squares are light).
                        assert!(ours.len() >= 2, "code {i}, module {module}: {ours:?}");
                    }
                }
            }
        }
        for seed in 1..6 {
            let bits = runs_of(517, 301, 9, seed);
            let theirs = detector::FindFinderPatterns(&bits, true, 0);
            assert_eq!(finder_patterns(&bits), theirs, "noise {seed}");
        }
    }
}
