//! Sampling an rMQR (rectangular Micro QR) code's grid from its finder pattern: zxing-cpp's
//! `SampleRMQR` as `rxing` ports it (Apache-2.0, as this project), with the far corner
//! found and used differently.
//!
//! An rMQR code is a strip up to 139 modules long and 7 to 17 high, with its finder
//! pattern (7×7) at one end and a smaller one (5×5, the "sub-finder") in the far corner.
//! The port maps the whole strip from the finder pattern's four corners, then looks for
//! the sub-finder only at 9 points around where that map puts it, and when found, maps
//! the strip from lines through both patterns' edges extended across it. Turned by a
//! degree or more, or seen at a slant, the strip's far end drifts by several modules
//! under either map: zxing-cpp 3.1.1 and rxing read 1 or 2 in 6 turned strips and 2 to
//! 4 in 30 slanted ones (BENCHMARKS (h)).
//!
//! Here the sub-finder is looked for in rings around the estimate, out to 12 modules,
//! nearest first, and the strip is mapped by the perspective transform that best fits
//! (least squares) the corners of both patterns: four at the finder's outer ring, four
//! at the sub-finder's inner one, matched to each other by the turn that lies nearest
//! to where a map through the two centres puts them. Where the sub-finder's corners are
//! not found, that map through the centres is used (the finder's column step, with the
//! row step that reaches the sub-finder's centre); where the sub-finder is not found,
//! the finder pattern's own map, as in the port.

use rxing::common::cpp_essentials::{
    AppendBit, BitMatrixCursorTrait, ConcentricPattern, EdgeTracer, FindConcentricPatternCorners,
    Value,
};
use rxing::common::{
    BitMatrix, DefaultGridSampler, GridSampler, PerspectiveTransform, Quadrilateral, SamplerControl,
};
use rxing::qrcode::common::{FormatInformation, Version};
use rxing::qrcode::cpp_port::Type;
use rxing::qrcode::cpp_port::detector::LocateAlignmentPattern;
use rxing::qrcode::detector::QRCodeDetectorResult;
use rxing::{Point, point, point_i};

/// The modules of the top edge's timing pattern next to the finder: dark, light, dark,
/// light.
const EDGE: [(i32, i32); 4] = [(8, 0), (9, 0), (10, 0), (11, 0)];
/// The 18 modules of the format information beside the finder pattern, most significant
/// bit first.
const FORMAT: [(i32, i32); 18] = [
    (11, 3),
    (11, 2),
    (11, 1),
    (10, 5),
    (10, 4),
    (10, 3),
    (10, 2),
    (10, 1),
    (9, 5),
    (9, 4),
    (9, 3),
    (9, 2),
    (9, 1),
    (8, 5),
    (8, 4),
    (8, 3),
    (8, 2),
    (8, 1),
];
/// The sub-finder is looked for this many modules from the estimate at most, on a grid
/// of this step (each look covers about ±3 modules).
const REACH: i32 = 12;
const STEP: i32 = 4;

/// The grid of the rMQR code whose finder pattern is `fp`, or `None` where no format
/// information reads around it or the grid falls outside the image.
pub fn sample(image: &BitMatrix, fp: ConcentricPattern) -> Option<QRCodeDetectorResult> {
    let (corners, mut map, dim) = orient(image, fp)?;
    let (w, h) = (dim.x as f32, dim.y as f32);
    if let Some(sub) = find_sub_finder(image, fp, &map, w, h) {
        // Module (3.5, 3.5) is the finder's centre, (w - 2.5, h - 2.5) the sub-finder's.
        let down =
            (map.transform_point(point(3.5, 6.5)) - map.transform_point(point(3.5, 0.5))) / 6.0;
        let across = (sub - fp.p - down * (h - 6.0)) / (w - 6.0);
        let centres = |x: f32, y: f32| fp.p + across * (x - 3.5) + down * (y - 3.5);
        let fitted = FindConcentricPatternCorners(image, sub, fp.size / 2, 1)
            .and_then(|sub_corners| fit_corners(&corners, &sub_corners, w, h, centres));
        map = match fitted {
            Some(homography) => whole(w, h, |x, y| homography.apply(x, y))?,
            None => whole(w, h, centres)?,
        };
    }
    let (bits, points) = DefaultGridSampler
        .sample_grid(
            image,
            dim.x as u32,
            dim.y as u32,
            &[SamplerControl {
                p0: point_i(0, 0),
                p1: point_i(dim.x, dim.y),
                transform: map,
            }],
        )
        .ok()?;
    Some(QRCodeDetectorResult::new(bits, points.to_vec()))
}

/// The map of a `w`×`h` code's modules that puts its corners where `at` does.
fn whole(w: f32, h: f32, at: impl Fn(f32, f32) -> Point) -> Option<PerspectiveTransform> {
    PerspectiveTransform::quadrilateralToQuadrilateral(
        Quadrilateral::from([point(0.0, 0.0), point(w, 0.0), point(w, h), point(0.0, h)]),
        Quadrilateral::from([at(0.0, 0.0), at(w, 0.0), at(w, h), at(0.0, h)]),
    )
    .ok()
}

/// The perspective map that best fits the finder's `corners` (the centres of its outer
/// ring's corner modules, already turned to the code's orientation) and the sub-finder's
/// (its inner ring's, 2 modules apart around its centre), the latter turned to lie
/// nearest to where the map through both centres, `centres`, puts them.
fn fit_corners(
    corners: &Quadrilateral,
    sub_corners: &Quadrilateral,
    w: f32,
    h: f32,
    centres: impl Fn(f32, f32) -> Point,
) -> Option<Homography> {
    let finder = [(0.5, 0.5), (6.5, 0.5), (6.5, 6.5), (0.5, 6.5)];
    let sub = [
        (w - 3.5, h - 3.5),
        (w - 1.5, h - 3.5),
        (w - 1.5, h - 1.5),
        (w - 3.5, h - 1.5),
    ];
    let off = |turn: i32| -> f32 {
        let q = sub_corners.rotated_corners(Some(turn), None);
        q.points()
            .iter()
            .zip(sub)
            .map(|(p, (x, y))| Point::distance(*p, centres(x, y)))
            .sum()
    };
    let turn = (0..4).min_by(|&a, &b| off(a).total_cmp(&off(b)))?;
    let sub_corners = sub_corners.rotated_corners(Some(turn), None);
    let pairs: Vec<_> = finder
        .into_iter()
        .zip(corners.points())
        .chain(sub.into_iter().zip(sub_corners.points()))
        .map(|((x, y), p)| {
            (
                [f64::from(x), f64::from(y)],
                [f64::from(p.x), f64::from(p.y)],
            )
        })
        .collect();
    Homography::fit(&pairs)
}

/// A perspective transform from module to pixel coordinates, fitted by least squares to
/// pairs of points (the direct linear transform with its last coefficient 1, on points
/// moved to their centroid and scaled to an average distance of √2 on each side, which
/// keeps the normal equations well conditioned).
struct Homography {
    h: [f64; 8],
    from: Scale,
    to: Scale,
}

/// A centroid and a scale: `(p - centre) * scale`.
#[derive(Clone, Copy)]
struct Scale {
    centre: [f64; 2],
    scale: f64,
}

impl Scale {
    fn of(points: impl Iterator<Item = [f64; 2]> + Clone) -> Scale {
        let n = points.clone().count().max(1) as f64;
        let (sx, sy) = points
            .clone()
            .fold((0.0, 0.0), |(x, y), p| (x + p[0], y + p[1]));
        let centre = [sx / n, sy / n];
        let mean = points
            .map(|p| (p[0] - centre[0]).hypot(p[1] - centre[1]))
            .sum::<f64>()
            / n;
        let scale = if mean > 0.0 {
            std::f64::consts::SQRT_2 / mean
        } else {
            1.0
        };
        Scale { centre, scale }
    }

    fn apply(self, p: [f64; 2]) -> [f64; 2] {
        [
            (p[0] - self.centre[0]) * self.scale,
            (p[1] - self.centre[1]) * self.scale,
        ]
    }
}

impl Homography {
    /// The fit to `pairs` of (module, pixel) points; `None` when they do not determine
    /// one (fewer than four, or in a line).
    fn fit(pairs: &[([f64; 2], [f64; 2])]) -> Option<Homography> {
        let from = Scale::of(pairs.iter().map(|p| p.0));
        let to = Scale::of(pairs.iter().map(|p| p.1));
        // The normal equations of the 2 rows each pair gives.
        let mut a = [[0f64; 9]; 8];
        for (m, p) in pairs {
            let ([x, y], [u, v]) = (from.apply(*m), to.apply(*p));
            let rows = [
                [x, y, 1.0, 0.0, 0.0, 0.0, -x * u, -y * u, u],
                [0.0, 0.0, 0.0, x, y, 1.0, -x * v, -y * v, v],
            ];
            for row in rows {
                for (ai, ri) in a.iter_mut().zip(row) {
                    for (aij, rj) in ai.iter_mut().zip(row) {
                        *aij += ri * rj;
                    }
                }
            }
        }
        // Gauss-Jordan elimination with partial pivoting.
        for c in 0..8 {
            let pivot = (c..8).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
            if a[pivot][c].abs() < 1e-9 {
                return None;
            }
            a.swap(c, pivot);
            let top = a[c];
            for (_, row) in a.iter_mut().enumerate().filter(|(r, _)| *r != c) {
                let f = row[c] / top[c];
                for (v, t) in row.iter_mut().zip(top).skip(c) {
                    *v -= f * t;
                }
            }
        }
        let h = std::array::from_fn(|i| a[i][8] / a[i][i]);
        Some(Homography { h, from, to })
    }

    fn apply(&self, x: f32, y: f32) -> Point {
        let [x, y] = self.from.apply([f64::from(x), f64::from(y)]);
        let h = &self.h;
        let d = h[6] * x + h[7] * y + 1.0;
        let (u, v) = (
            (h[0] * x + h[1] * y + h[2]) / d,
            (h[3] * x + h[4] * y + h[5]) / d,
        );
        let (c, s) = (self.to.centre, self.to.scale);
        point((u / s + c[0]) as f32, (v / s + c[1]) as f32)
    }
}

/// The finder's corners, the map of its modules (turned so that the format information
/// reads with the fewest bits wrong) and the code's size, where that information reads.
fn orient(
    image: &BitMatrix,
    fp: ConcentricPattern,
) -> Option<(Quadrilateral, PerspectiveTransform, rxing::PointI)> {
    let corners = FindConcentricPatternCorners(image, fp.p, fp.size, 2)?;
    let finder = Quadrilateral::rectangle(7, 7, Some(0.5));
    let cur = EdgeTracer::new(image, Point::default(), Point::default());
    // The finder's orientation: the turn of its corners whose format information reads
    // with the fewest bits wrong.
    let mut best: Option<(FormatInformation, PerspectiveTransform, i32)> = None;
    for turn in 0..4 {
        let map = PerspectiveTransform::quadrilateralToQuadrilateral(
            finder,
            corners.rotated_corners(Some(turn), None),
        )
        .ok()?;
        let at = |(x, y): (i32, i32)| map.transform_point(Point::centered(point_i(x, y)));
        let edge = EDGE
            .iter()
            .zip([true, false, true, false])
            .all(|(m, dark)| cur.testAt(at(*m)) == Value::from(dark));
        if !edge {
            continue;
        }
        let mut bits = 0;
        for m in FORMAT {
            AppendBit(&mut bits, cur.blackAt(at(m)));
        }
        let fi = FormatInformation::DecodeRMQR(bits as u32, 0);
        if best
            .as_ref()
            .is_none_or(|(b, _, _)| fi.hammingDistance < b.hammingDistance)
        {
            best = Some((fi, map, turn));
        }
    }
    let (fi, map, turn) = best.filter(|(fi, _, _)| fi.isValid())?;
    let dim = Version::SymbolSize(fi.microVersion, Type::RectMicro);
    Some((corners.rotated_corners(Some(turn), None), map, dim))
}

/// The centre of the sub-finder pattern of a `w`×`h` code, looked for around where the
/// finder's own `map` puts it, in rings out to `REACH` modules, nearest first.
fn find_sub_finder(
    image: &BitMatrix,
    fp: ConcentricPattern,
    map: &PerspectiveTransform,
    w: f32,
    h: f32,
) -> Option<Point> {
    let module = fp.size / 7;
    for ring in 0..=REACH / STEP {
        for dy in -ring..=ring {
            for dx in -ring..=ring {
                if dx.abs().max(dy.abs()) != ring {
                    continue;
                }
                let m = point(w - 2.5 + (dx * STEP) as f32, h - 2.5 + (dy * STEP) as f32);
                if let Some(found) = LocateAlignmentPattern(image, module, map.transform_point(m)) {
                    return Some(found);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A perspective map, as `Homography` writes one: (u, v) = ((a, b, c)·(x, y, 1),
    /// (d, e, f)·(x, y, 1)) / (g, h, 1)·(x, y, 1).
    fn project(x: f64, y: f64) -> [f64; 2] {
        let d = 0.0021 * x - 0.0013 * y + 1.0;
        [
            (5.2 * x + 0.7 * y + 310.0) / d,
            (-0.4 * x + 6.1 * y + 95.0) / d,
        ]
    }

    #[test]
    fn the_fit_recovers_a_perspective_map_from_two_ends_of_a_strip() {
        // As the sampler has them: 4 points around one end of a 77×11 strip, 4 around
        // the other.
        let modules = [
            [0.5, 0.5],
            [6.5, 0.5],
            [6.5, 6.5],
            [0.5, 6.5],
            [73.5, 7.5],
            [75.5, 7.5],
            [75.5, 9.5],
            [73.5, 9.5],
        ];
        let pairs: Vec<_> = modules.iter().map(|m| (*m, project(m[0], m[1]))).collect();
        let fit = Homography::fit(&pairs).unwrap();
        // Everywhere on the strip, corners and middle included, not only at the points.
        for (x, y) in [
            (0.0, 0.0),
            (77.0, 0.0),
            (77.0, 11.0),
            (0.0, 11.0),
            (38.5, 5.5),
        ] {
            let got = fit.apply(x as f32, y as f32);
            let [u, v] = project(x, y);
            assert!(
                (f64::from(got.x) - u).abs() < 0.01 && (f64::from(got.y) - v).abs() < 0.01,
                "({x}, {y}): {got:?}, want ({u}, {v})"
            );
        }
    }

    #[test]
    fn points_in_a_line_fit_nothing() {
        let pairs: Vec<_> = (0..8)
            .map(|i| ([f64::from(i), 0.0], [10.0 * f64::from(i), 5.0]))
            .collect();
        assert!(Homography::fit(&pairs).is_none());
    }
}
