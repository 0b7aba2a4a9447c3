//! Finder patterns (the 7×7 squares at a QR code's corners, a Micro QR code's one, an rMQR
//! strip's corner) in a binarised image, and the groups of three that may be a QR code's.
//!
//! [`finder_patterns`] is rxing's `FindFinderPatterns` (zxing-cpp's, trying harder: every
//! third row scanned for dark:light:dark runs of 1:1:3:1:1, each hit then checked across and
//! located by rxing's `LocateConcentricPattern`), giving the same patterns in the same
//! order. What differs is how a scanned row becomes runs: rxing copies the row out of the
//! matrix and reads it a pixel at a time through `BitArray::get`, which was the largest
//! single part of a search (BENCHMARKS (h)); here the runs come from the row's words, one
//! colour change at a time, found as the set bits of the word XORed with itself shifted by
//! one.
//!
//! [`finder_sets`] is zxing-cpp's `GenerateFinderPatternSets` as its current source has it.
//! rxing's port of it takes the two partners of a pattern in the order its spatial bins
//! yield them, where the geometry that follows wants the smaller one first: a code seen at
//! a slant, whose three patterns differ in size, was then measured with the wrong size
//! ratio and rejected as not square enough (BENCHMARKS (h): codes zxing-cpp read and this
//! filter did not even find). zxing-cpp also applies its size, leg and angle filters only
//! when more than five patterns are about; rxing always does.

use std::cmp::Reverse;

use rxing::common::cpp_essentials::{
    ConcentricPattern, FindLeftGuardBy, FixedPattern, IsPattern, LocateConcentricPattern,
    PatternType, PatternView,
};
use rxing::common::{BitFieldBaseType, BitMatrix};
use rxing::qrcode::cpp_port::detector::FinderPatternSet;
use rxing::{Point, point};

const PATTERN: FixedPattern<5, 7, false> = FixedPattern::new([1, 1, 3, 1, 1]);

/// rxing's `detector::FindFinderPatterns(bits, true, 0)`, to the pattern.
pub fn finder_patterns(bits: &BitMatrix) -> Vec<ConcentricPattern> {
    let width = bits.getWidth() as usize;
    let mut found = Found::new(bits.getWidth(), bits.getHeight());
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
            if !found.covers(p) {
                // Three times the run's width: room for very skewed patterns.
                let range = i32::from(next.sum(None)) * 3;
                let located =
                    LocateConcentricPattern::<true, 5, 7>(bits, &PATTERN.into(), p, range);
                if let Some(pattern) = located {
                    found.add(pattern);
                }
            }
            next.skipPair();
            next.skipPair();
            next.extend();
        }
    }
    found.patterns
}

/// The side in pixels of the cells of [`Found`] and [`ByPlace`].
const CELL: f32 = 32.0;

/// The columns and rows of cells over an image of `width`×`height` (at least one each).
fn cells_over(width: u32, height: u32) -> (usize, usize) {
    let n = |side: u32| (side as f32 / CELL).ceil().max(1.0) as usize;
    (n(width), n(height))
}

/// The patterns found so far, and a grid of cells over the image, each listing the
/// patterns whose inside (the points less than half their size from their centre) reaches
/// into it. Whether a point is inside a pattern found is then a look at its cell's few
/// patterns, not at every one: a sheet of finder look-alikes, 2048×2048 pixels of them
/// eight modules of 1 px apart, holds 65,536 patterns, and comparing each hit with all
/// those before it took about 8 s a search, 25 s an image.
struct Found {
    patterns: Vec<ConcentricPattern>,
    cells: Vec<Vec<u32>>,
    cols: usize,
    rows: usize,
}

impl Found {
    fn new(width: u32, height: u32) -> Found {
        let (cols, rows) = cells_over(width, height);
        Found {
            patterns: Vec::new(),
            cells: vec![Vec::new(); cols * rows],
            cols,
            rows,
        }
    }

    /// The column or row of the cell holding `v` (`n` of them), those beyond the grid
    /// taken as its edge: monotonic, so a point between two others has its cell between
    /// theirs.
    fn cell(v: f32, n: usize) -> usize {
        // A float to usize cast saturates (NaN and negatives to 0).
        ((v / CELL).floor() as usize).min(n - 1)
    }

    /// Whether `p` is inside a pattern found: less than half its size from its centre.
    fn covers(&self, p: Point) -> bool {
        let at = Self::cell(p.y, self.rows) * self.cols + Self::cell(p.x, self.cols);
        self.cells[at].iter().any(|&i| {
            let old = &self.patterns[i as usize];
            Point::distance(p, old.p) < old.size as f32 / 2.0
        })
    }

    /// `pattern` found, listed in each cell of the square around its inside.
    fn add(&mut self, pattern: ConcentricPattern) {
        let (p, r) = (pattern.p, pattern.size as f32 / 2.0);
        let i = self.patterns.len() as u32;
        let (x0, x1) = (
            Self::cell(p.x - r, self.cols),
            Self::cell(p.x + r, self.cols),
        );
        let (y0, y1) = (
            Self::cell(p.y - r, self.rows),
            Self::cell(p.y + r, self.rows),
        );
        for y in y0..=y1 {
            for cell in &mut self.cells[y * self.cols + x0..=y * self.cols + x1] {
                cell.push(i);
            }
        }
        self.patterns.push(pattern);
    }
}

/// At most this many groups are kept, the most plausible first (zxing-cpp's bound: a sheet
/// of finder look-alikes, 1000×800 pixels, made 114,000 groups in rxing's port, which keeps
/// them all, and 8.6 s of sampling them).
pub const MAX_SETS: usize = 256;
/// Each pattern is grouped with at most about this many of its nearest (by spatial bins)
/// smaller patterns.
const MAX_CANDIDATES: usize = 15;
/// A QR code is at most 177 modules a side; with the slack zxing-cpp allows for slant.
const MAX_MODULES: f64 = 177.0 * 1.5;

/// The groups [`finder_sets`] gives, and how many it left out.
#[derive(Debug, Default)]
pub struct Sets {
    pub sets: Vec<FinderPatternSet>,
    /// Groups with no other pattern inside that did not make the [`MAX_SETS`]: a code's
    /// group may be among them.
    pub left_out: usize,
}

/// zxing-cpp's `GenerateFinderPatternSets`: groups of three of `patterns` (sorted here,
/// largest first) that may be one QR code's corners, most plausible first (legs short and
/// alike), at most [`MAX_SETS`]; but a group with another of `all` (every pattern found)
/// inside it ([`holds_another`]) comes after every group without. A code's three patterns
/// have nothing inside, while a sheet of look-alikes makes groups by the thousand, the
/// smallest of which rank first: among 200 look-alikes around it, a code's group was not
/// among the 256 kept, and the code went unread (zxing-cpp misses it too).
pub fn finder_sets(patterns: &mut [ConcentricPattern], all: &ByPlace) -> Sets {
    let n = patterns.len();
    if n < 3 {
        return Sets::default();
    }
    patterns.sort_by_key(|p| Reverse(p.size));
    // Patterns binned by where they are, so that each is grouped with its near ones only.
    let xs = patterns.iter().map(|p| f64::from(p.p.x));
    let ys = patterns.iter().map(|p| f64::from(p.p.y));
    let (min_x, max_x) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (min_y, max_y) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // A bin is at least the side of the smallest code of a pattern of the median size.
    let bin = f64::from(32.max(patterns[n / 2].size * 3));
    let bins_w = ((max_x - min_x + 1.0) / bin).ceil().max(1.0) as i32;
    let bins_h = ((max_y - min_y + 1.0) / bin).ceil().max(1.0) as i32;
    let bin_of = |p: &ConcentricPattern| {
        let bx = (((f64::from(p.p.x) - min_x) / bin) as i32).clamp(0, bins_w - 1);
        let by = (((f64::from(p.p.y) - min_y) / bin) as i32).clamp(0, bins_h - 1);
        (bx, by)
    };
    let mut bins = vec![Vec::new(); (bins_w * bins_h) as usize];
    for (i, p) in patterns.iter().enumerate() {
        let (bx, by) = bin_of(p);
        bins[(by * bins_w + bx) as usize].push(i);
    }
    // With few patterns about, every group is looked at; with more, groups of very
    // different sizes, legs or angles are not.
    let filter = n > 5;
    // By (a pattern inside, score): the most plausible first.
    let mut sets: Vec<((bool, f64), FinderPatternSet)> = Vec::new();
    let mut left_out = 0;
    let mut candidates = Vec::with_capacity(2 * MAX_CANDIDATES);
    for (i, &c0) in patterns.iter().enumerate().take(n - 2) {
        let reach = f64::from(c0.size) / 7.0 * MAX_MODULES;
        // Rings of bins beyond the grid hold nothing.
        let rings = ((reach / bin).ceil() as i32).min(bins_w.max(bins_h));
        let (cx, cy) = bin_of(&c0);
        candidates.clear();
        'rings: for r in 0..=rings {
            for (dx, dy) in ring(r) {
                let (bx, by) = (cx + dx, cy + dy);
                if bx < 0 || bx >= bins_w || by < 0 || by >= bins_h {
                    continue;
                }
                for &k in &bins[(by * bins_w + bx) as usize] {
                    if k > i && !(filter && c0.size > patterns[k].size * 2 + 2) {
                        candidates.push(k);
                    }
                }
                if candidates.len() >= MAX_CANDIDATES {
                    break 'rings;
                }
            }
        }
        for (u, &j) in candidates.iter().enumerate() {
            for &k in &candidates[u + 1..] {
                // Smallest first: the later in `patterns`, the smaller.
                let (a, b) = (patterns[j.max(k)], patterns[j.min(k)]);
                let Some((score, set, modules)) = group(a, b, c0, filter) else {
                    continue;
                };
                let key = (holds_another(&set, modules, all), score);
                if sets.len() < MAX_SETS || sets.last().is_some_and(|l| l.0 > key) {
                    let at = sets.partition_point(|s| s.0 <= key);
                    sets.insert(at, (key, set));
                    if sets.len() > MAX_SETS {
                        let dropped = sets.pop().map(|s| s.0.0);
                        left_out += usize::from(dropped == Some(false));
                    }
                } else {
                    left_out += usize::from(!key.0);
                }
            }
        }
    }
    Sets {
        sets: sets.into_iter().map(|(_, set)| set).collect(),
        left_out,
    }
}

/// Whether a pattern of `all` other than `set`'s three lies inside the grid of `modules`
/// they span: its centre within the parallelogram of their centres, with a module and a
/// half of slack. A QR code has finder patterns at three corners and nowhere else (its
/// mask is chosen to make even 1:1:3:1:1 runs rare in the rest, and a pattern is found
/// only where such runs cross both ways), while three of a tiled sheet of look-alikes
/// span a grid with more inside, one at its fourth corner at least (looked at first). A
/// pattern less than half its size from one of the three is taken for that one.
pub fn holds_another(set: &FinderPatternSet, modules: f64, all: &ByPlace) -> bool {
    let (o, a, b) = (set.tl.p, set.tr.p - set.tl.p, set.bl.p - set.tl.p);
    let det = a.x * b.y - a.y * b.x;
    if !det.is_normal() {
        return false;
    }
    // The centres are `modules` − 7 apart (each half a pattern in from the edge): a
    // module and a half in the units of `a` and `b`.
    let slack = (1.5 / (modules - 7.0).max(1.0)) as f32;
    let (lo, hi) = (-slack, 1.0 + slack);
    let inside = |q: &ConcentricPattern| {
        let d = q.p - o;
        let u = (d.x * b.y - d.y * b.x) / det;
        let v = (a.x * d.y - a.y * d.x) / det;
        (lo..=hi).contains(&u)
            && (lo..=hi).contains(&v)
            && [set.tl, set.tr, set.bl]
                .iter()
                .all(|c| Point::distance(q.p, c.p) >= c.size as f32 / 2.0)
    };
    let corners = [
        o + a * lo + b * lo,
        o + a * hi + b * lo,
        o + a * lo + b * hi,
        o + a * hi + b * hi,
    ];
    let fourth = o + a + b;
    let near_fourth = [fourth.x, fourth.y, fourth.x, fourth.y];
    let bounds = corners.iter().fold(
        [f32::MAX, f32::MAX, f32::MIN, f32::MIN],
        |[x0, y0, x1, y1], c| [x0.min(c.x), y0.min(c.y), x1.max(c.x), y1.max(c.y)],
    );
    all.any_in(near_fourth, inside) || all.any_in(bounds, inside)
}

/// Finder patterns by place: each listed in the cell of [`CELL`] pixels that holds its
/// centre, so that those within a rectangle are found without a look at every one.
pub struct ByPlace {
    cells: Vec<Vec<ConcentricPattern>>,
    cols: usize,
    rows: usize,
}

impl ByPlace {
    /// `patterns` found in an image of `width`×`height` (those beyond it at its edge).
    pub fn new(patterns: &[ConcentricPattern], width: u32, height: u32) -> ByPlace {
        let (cols, rows) = cells_over(width, height);
        let mut cells = vec![Vec::new(); cols * rows];
        for p in patterns {
            cells[Found::cell(p.p.y, rows) * cols + Found::cell(p.p.x, cols)].push(*p);
        }
        ByPlace { cells, cols, rows }
    }

    /// Whether a pattern in a cell that `[x0, y0, x1, y1]` reaches passes `f` (every
    /// pattern whose centre lies in the rectangle is among those looked at).
    fn any_in(&self, [x0, y0, x1, y1]: [f32; 4], f: impl Fn(&ConcentricPattern) -> bool) -> bool {
        let (c0, c1) = (Found::cell(x0, self.cols), Found::cell(x1, self.cols));
        (Found::cell(y0, self.rows)..=Found::cell(y1, self.rows)).any(|row| {
            let cells = &self.cells[row * self.cols + c0..=row * self.cols + c1];
            cells.iter().flatten().any(&f)
        })
    }
}

/// The patterns `a`, `b`, `c` (`a` the smallest, `c` the largest) as a QR code's
/// bottom-left, top-left and top-right corners, with the group's score (lower is more
/// plausible) and its estimated side in modules, if they can be: the corner between the
/// two shorter legs, 19 to 265 modules across, and with `filter` legs within 2× of each
/// other and at 60–120°.
fn group(
    a: ConcentricPattern,
    b: ConcentricPattern,
    c: ConcentricPattern,
    filter: bool,
) -> Option<(f64, FinderPatternSet, f64)> {
    // Squared distances stretched by the size ratio: a pattern further from the camera is
    // smaller, and so are the distances near it.
    let d2 = |a: ConcentricPattern, b: ConcentricPattern| {
        let (dx, dy) = (f64::from(a.p.x - b.p.x), f64::from(a.p.y - b.p.y));
        (dx * dx + dy * dy) * f64::from(b.size) / f64::from(a.size)
    };
    let (mut a, mut b, mut c) = (a, b, c);
    let (mut ab2, mut bc2, mut ac2) = (d2(a, b), d2(b, c), d2(a, c));
    // B is the corner: AC the longest side.
    if bc2 >= ab2 && bc2 >= ac2 {
        std::mem::swap(&mut a, &mut b);
        std::mem::swap(&mut bc2, &mut ac2);
    } else if ab2 >= ac2 && ab2 >= bc2 {
        std::mem::swap(&mut b, &mut c);
        std::mem::swap(&mut ab2, &mut ac2);
    }
    if filter && (ab2 > 4.0 * bc2 || bc2 > 4.0 * ab2) {
        return None;
    }
    let (ab, bc) = (ab2.sqrt(), bc2.sqrt());
    let module = 2.0 * f64::from(a.size + b.size + c.size) / 21.0;
    let modules = (ab + bc) / module + 7.0;
    if !(21.0 * 0.9..=MAX_MODULES).contains(&modules) {
        return None;
    }
    let cos = (ab2 + bc2 - ac2) / (2.0 * ab * bc);
    // cos 60° and cos 120°.
    if filter && (cos.is_nan() || !(-0.5..=0.5).contains(&cos)) {
        return None;
    }
    let cross =
        |u: Point, v: Point| f64::from(u.x) * f64::from(v.y) - f64::from(u.y) * f64::from(v.x);
    if cross(c.p - b.p, a.p - b.p) < 0.0 {
        std::mem::swap(&mut a, &mut c);
    }
    let score = ab + bc + (ab - bc).abs();
    Some((
        score,
        FinderPatternSet {
            bl: a,
            tl: b,
            tr: c,
        },
        modules,
    ))
}

/// The offsets of the square ring of bins `r` from a centre (the centre itself for 0);
/// rings 0 to R cover the square of side 2R + 1 once.
fn ring(r: i32) -> impl Iterator<Item = (i32, i32)> {
    let centre = (r == 0).then_some((0, 0));
    let top = (-r..r).map(move |x| (x, -r));
    let right = (-r..r).map(move |y| (r, y));
    let bottom = (-r + 1..=r).rev().map(move |x| (x, r));
    let left = (-r + 1..=r).rev().map(move |y| (-r, y));
    centre
        .into_iter()
        .chain(top)
        .chain(right)
        .chain(bottom)
        .chain(left)
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

    fn pattern(x: f32, y: f32, size: i32) -> ConcentricPattern {
        ConcentricPattern {
            p: point(x, y),
            size,
        }
    }

    /// A code seen at a slant (from a photo, `reference.py qr-samples` perspective 26): its
    /// top-right pattern nearest the camera and largest, its bottom-left smallest.
    const SLANTED: [(f32, f32, i32); 3] =
        [(810.1, 428.6, 43), (669.3, 451.8, 30), (689.2, 552.8, 23)];

    #[test]
    fn a_slanted_codes_patterns_are_grouped_smallest_first() {
        let mut patterns: Vec<_> = SLANTED.iter().map(|&(x, y, s)| pattern(x, y, s)).collect();
        let sets = finder_sets(&mut patterns, &ByPlace::new(&[], 1, 1)).sets;
        assert_eq!(sets.len(), 1, "{sets:?}");
        let corner = |p: ConcentricPattern| (p.p.x, p.p.y);
        assert_eq!(corner(sets[0].tl), (669.3, 451.8));
        assert_eq!(corner(sets[0].tr), (810.1, 428.6));
        assert_eq!(corner(sets[0].bl), (689.2, 552.8));
        // The same among more patterns, where the size, leg and angle filters apply.
        assert_eq!(groups(&SLANTED), (1, 1));
        // rxing's port pairs the largest with the other two in the order its bins give
        // them (here the smallest first), measures with the wrong size ratio and finds the
        // corner too open.
        let mut patterns: Vec<_> = SLANTED.iter().map(|&(x, y, s)| pattern(x, y, s)).collect();
        assert!(detector::GenerateFinderPatternSets(&mut patterns).is_empty());
    }

    /// How many groups `patterns` make, alone and with three more far away (in a line,
    /// so that they make none themselves), which makes more than five about.
    fn groups(patterns: &[(f32, f32, i32)]) -> (usize, usize) {
        let mut alone: Vec<_> = patterns.iter().map(|&(x, y, s)| pattern(x, y, s)).collect();
        let mut crowd = alone.clone();
        crowd.extend((0..3).map(|i| pattern(4000.0 + 100.0 * i as f32, 4000.0, 21)));
        let none = ByPlace::new(&[], 1, 1);
        let count = |p: &mut Vec<ConcentricPattern>| finder_sets(p, &none).sets.len();
        (count(&mut alone), count(&mut crowd))
    }

    /// Three patterns at the corners of a square make one group; with more than five
    /// patterns about, not when their sizes differ by more than 2× (and 2), their legs by
    /// more than 2×, or their corner is further than 30° from square. With few about,
    /// each of those still makes its group.
    #[test]
    fn among_many_patterns_only_plausible_groups_are_formed() {
        let square = |a: f32, b: f32, turn: f32, sizes: [i32; 3]| {
            let (s, c) = turn.to_radians().sin_cos();
            [
                (300.0 + a, 300.0, sizes[0]),
                (300.0, 300.0, sizes[1]),
                (300.0 + b * c, 300.0 + b * s, sizes[2]),
            ]
        };
        assert_eq!(groups(&square(100.0, 100.0, 90.0, [21, 21, 21])), (1, 1));
        assert_eq!(groups(&square(100.0, 100.0, 90.0, [21, 21, 44])), (1, 1));
        assert_eq!(groups(&square(100.0, 100.0, 90.0, [21, 21, 45])), (1, 0));
        assert_eq!(groups(&square(100.0, 190.0, 90.0, [21, 21, 21])), (1, 1));
        assert_eq!(groups(&square(100.0, 210.0, 90.0, [21, 21, 21])), (1, 0));
        assert_eq!(groups(&square(100.0, 100.0, 115.0, [21, 21, 21])), (1, 1));
        assert_eq!(groups(&square(100.0, 100.0, 125.0, [21, 21, 21])), (1, 0));
        // In a line: grouped only with few about (sampling then finds no code there).
        assert_eq!(groups(&square(100.0, 100.0, 180.0, [21, 21, 21])), (1, 0));
        // Too small a code for the patterns' size (under 19 modules across).
        assert_eq!(groups(&square(30.0, 30.0, 90.0, [21, 21, 21])), (0, 0));
    }

    #[test]
    fn groups_are_bounded_most_plausible_first() {
        // A grid of 30×30 patterns: thousands of right-angled groups.
        let mut patterns: Vec<_> = (0..900)
            .map(|i| pattern((i % 30) as f32 * 40.0, (i / 30) as f32 * 40.0, 21))
            .collect();
        let sets = finder_sets(&mut patterns, &ByPlace::new(&[], 1, 1)).sets;
        assert_eq!(sets.len(), MAX_SETS);
        let legs = |s: &FinderPatternSet| {
            let (ab, bc) = (s.bl.distance(s.tl), s.tl.distance(s.tr));
            ab + bc + (ab - bc).abs()
        };
        assert!(sets.windows(2).all(|w| legs(&w[0]) <= legs(&w[1]) + 1e-3));
        // The grid's smallest squares (legs of 40) are the most plausible.
        assert!((legs(&sets[0]) - 80.0).abs() < 1e-3, "{}", legs(&sets[0]));
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
        // A sheet of look-alikes: many patterns to a cell of the index, and patterns
        // across the cells' edges.
        for (pitch, module) in [(8, 1), (9, 2), (16, 2)] {
            let bits = look_alikes(331, 297, pitch, module);
            let ours = finder_patterns(&bits);
            assert!(ours.len() > 80, "{}", ours.len());
            let theirs = detector::FindFinderPatterns(&bits, true, 0);
            assert_eq!(ours, theirs, "sheet of pitch {pitch}, module {module}");
        }
    }

    /// Finder-pattern look-alikes `pitch` modules of `module` pixels apart, dark set.
    fn look_alikes(w: u32, h: u32, pitch: u32, module: u32) -> BitMatrix {
        let mut bits = BitMatrix::new(w, h).unwrap();
        for y in 0..h {
            for x in 0..w {
                let (mx, my) = ((x / module) % pitch, (y / module) % pitch);
                let ring = mx.min(my).min(6 - mx.min(6)).min(6 - my.min(6));
                if mx < 7 && my < 7 && ring != 1 {
                    bits.set(x, y);
                }
            }
        }
        bits
    }

    /// Whether a point is inside a pattern found is answered by the index as by a look at
    /// every pattern, for points anywhere (beyond the image too) and patterns of any size
    /// (two reaching far beyond the image), and so is whether a pattern's centre lies in a
    /// rectangle ([`ByPlace`]); and a cell lists only the patterns near it: on a
    /// 2048×2048 sheet of 65,536 look-alikes (8 s a search when each hit was compared with
    /// every pattern before it), 16: the 4×4 whose centres lie in it.
    #[test]
    fn the_index_of_patterns_found_answers_as_a_look_at_all_of_them() {
        let mut next = noise(7);
        let mut unit = move || (next() % 10_000) as f32 / 10_000.0;
        let (w, h) = (517, 301);
        let mut found = Found::new(w, h);
        let mut inside = 0;
        for i in 0..4_000 {
            // Two patterns larger than the image's corners, late, that many points fall in.
            match i {
                2_000 => found.add(pattern(-20.0, -10.0, 300)),
                3_000 => found.add(pattern(600.0, 320.0, 500)),
                _ => {}
            }
            let p = point(
                unit() * 1.2 * w as f32 - 40.0,
                unit() * 1.2 * h as f32 - 30.0,
            );
            let all = found
                .patterns
                .iter()
                .any(|old| Point::distance(p, old.p) < old.size as f32 / 2.0);
            assert_eq!(found.covers(p), all, "{p:?}");
            inside += usize::from(all);
            if !all {
                let size = 3.0 + 40.0 * unit();
                found.add(pattern(p.x + 3.0 * unit(), p.y - 3.0 * unit(), size as i32));
            }
        }
        // Both answers were tested, many times each.
        assert!(inside > 500 && found.patterns.len() > 500, "{inside}");

        // The patterns by place find every centre in a rectangle, as a look at all does.
        let all: Vec<_> = found.patterns.clone();
        let by_place = ByPlace::new(&all, w, h);
        let mut hits = 0;
        for _ in 0..2_000 {
            let (x, y) = (
                unit() * 1.2 * w as f32 - 40.0,
                unit() * 1.2 * h as f32 - 30.0,
            );
            let r = [x, y, x + 100.0 * unit(), y + 100.0 * unit()];
            let within = |q: &ConcentricPattern| {
                (r[0]..=r[2]).contains(&q.p.x) && (r[1]..=r[3]).contains(&q.p.y)
            };
            assert_eq!(by_place.any_in(r, within), all.iter().any(within), "{r:?}");
            hits += usize::from(all.iter().any(within));
        }
        assert!((200..1_800).contains(&hits), "{hits}");

        let mut sheet = Found::new(2048, 2048);
        for y in 0..256 {
            for x in 0..256 {
                let at = |v: i32| 8.0 * v as f32 + 3.5;
                sheet.add(pattern(at(x), at(y), 7));
            }
        }
        let most = sheet.cells.iter().map(Vec::len).max();
        assert_eq!(most, Some(16));
    }
}
