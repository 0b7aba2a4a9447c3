//! Sampling an rMQR (rectangular Micro QR) code's grid from its finder pattern: zxing-cpp's
//! `SampleRMQR` as `rxing` ports it (Apache-2.0, as this project), with the far corner
//! found and used differently.
//!
//! An rMQR code is a strip up to 139 modules long and 7 to 17 high, with its finder
//! pattern (7×7) at one end and a smaller one (5×5, the "sub-finder") in the far corner.
//! The port maps the whole strip from the finder pattern's four corners, then looks for
//! the sub-finder only at 9 points around where that map puts it, and when found, maps
//! the strip from lines through both patterns' edges extended across it. Turned by a
//! degree or more, the strip's far end drifts by several modules under either map:
//! zxing-cpp 3.1.1 and rxing read 1 or 2 in 6 such codes (measured, see BENCHMARKS (h)).
//!
//! Here the sub-finder is looked for in rings around the estimate, out to 12 modules,
//! nearest first, and the map is the one that puts both patterns' centres exactly where
//! they are: the finder's column step (measured across its 7 modules, short against the
//! strip's height) with the row step that then reaches the sub-finder's centre. A strip
//! is short enough that perspective bends it little; where the sub-finder is not found,
//! the finder pattern's own map is used, as in the port.

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
    let corners = FindConcentricPatternCorners(image, fp.p, fp.size, 2)?;
    let finder = Quadrilateral::rectangle(7, 7, Some(0.5));
    let cur = EdgeTracer::new(image, Point::default(), Point::default());
    // The finder's orientation: the turn of its corners whose format information reads
    // with the fewest bits wrong.
    let mut best: Option<(FormatInformation, PerspectiveTransform)> = None;
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
            .is_none_or(|(b, _)| fi.hammingDistance < b.hammingDistance)
        {
            best = Some((fi, map));
        }
    }
    let (fi, mut map) = best.filter(|(fi, _)| fi.isValid())?;
    let dim = Version::SymbolSize(fi.microVersion, Type::RectMicro);
    let (w, h) = (dim.x as f32, dim.y as f32);
    if let Some(sub) = find_sub_finder(image, fp, &map, w, h) {
        // Module (3.5, 3.5) is the finder's centre, (w - 2.5, h - 2.5) the sub-finder's.
        let down =
            (map.transform_point(point(3.5, 6.5)) - map.transform_point(point(3.5, 0.5))) / 6.0;
        let across = (sub - fp.p - down * (h - 6.0)) / (w - 6.0);
        let at = |x: f32, y: f32| fp.p + across * (x - 3.5) + down * (y - 3.5);
        map = PerspectiveTransform::quadrilateralToQuadrilateral(
            Quadrilateral::from([point(0.0, 0.0), point(w, 0.0), point(w, h), point(0.0, h)]),
            Quadrilateral::from([at(0.0, 0.0), at(w, 0.0), at(w, h), at(0.0, h)]),
        )
        .ok()?;
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
