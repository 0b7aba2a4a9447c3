//! `qr-code`: finds and reads QR codes without a model, with `rxing`'s port of zxing-cpp's
//! QR detector and decoder: QR codes (model 2), Micro QR codes and rMQR (rectangular
//! Micro QR) codes. Score 1 when at least one code is found; label `qr_count`; a region
//! per code (its bounding box, labelled `qr`, `micro-qr` or `rmqr`); the decoded text of
//! each readable code in `details`, cut to 256 characters, with each code's format.
//!
//! The image is binarised by zxing's hybrid binarizer (a local threshold from 8×8
//! blocks, so uneven light and low contrast survive), finder patterns are looked for on
//! every third row, grouped in threes that could be a code's corners ([`crate::finder`]),
//! and each group is sampled to a grid and decoded. When no code is read, the same bits
//! are searched again inverted, for light-on-dark codes, then binarised by one threshold
//! for all of it (zxing's global histogram), then by zxing-cpp's own local threshold
//! (the middle of each block's contrast: faint and blurred codes), then at half size (as
//! zxing-cpp's `tryDownscale` does): where one threshold breaks up a code's corners,
//! another often keeps them whole. A group that samples to a grid but cannot be read
//! (damaged, half hidden) still counts when `count_unreadable` is on: a phone may read
//! what this reader cannot; but not a grid smaller than any QR code, nor one with another
//! finder pattern inside (three of a tiled sheet of look-alikes). An image with more
//! patterns or groups than a search takes ([`MAX_PATTERNS`], [`finder::MAX_SETS`]) where
//! nothing is found is refused, not answered "no code". An image larger than
//! `max_side` is searched scaled down; where that finds a grid it cannot read, the
//! grid's part of the image is searched again at full size (a JPEG decoded smaller has
//! that part decoded again from the file), since modules of 3 px become 1.5 px in a
//! 12-megapixel photo searched at half size.
//! Where a grid unread has modules under 2.5 px at full size, its part is also searched
//! enlarged to twice its size (bilinear): modules of 1.1–1.5 px, which the sampling
//! cannot tell apart, become 2.2–3 px.
//!
//! A Micro QR or rMQR code has one finder pattern (an rMQR code a smaller second one in
//! the far corner), so each finder pattern that no QR code read used is also tried as
//! the corner of one of these: its format information read around it, the grid sampled
//! and decoded (an rMQR strip sampled by [`crate::rmqr`], which reads turned and slanted
//! strips that the port's sampler does not). These count only when read: one pattern whose
//! neighbourhood samples to a grid is too little to call a code.
//!
//! Each call's decoding and search take a core: they run on one of `--workers` slots (two
//! per core by default) and the other calls wait their turn, refused at once
//! (RESOURCE_EXHAUSTED) when that turn would come too late for their deadline
//! ([`crate::work`]).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use async_trait::async_trait;
use image::{GrayImage, RgbImage};
use rxing::common::cpp_essentials::ConcentricPattern;
use rxing::common::{BitMatrix, DetectorRXingResult};
use rxing::qrcode::cpp_port::{decoder, detector};
use rxing::qrcode::detector::QRCodeDetectorResult;
use schemars::JsonSchema;
use sekisho_filter_sdk::{Filter, FilterError, Input, Verdict, proto};
use serde::{Deserialize, Serialize};

use crate::intake::{self, Intake};
use crate::work::{self, WorkQueue};
use crate::{binarize, finder};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QrConfig {
    /// Images with a longer side are scaled down first, by the smallest whole factor that
    /// brings them to this or less (QR finding is linear in pixels).
    #[schemars(range(min = 64))]
    pub max_side: u32,
    /// Count a code whose corners and grid are found even when its content cannot be read.
    pub count_unreadable: bool,
    /// When no code is read, look again for light-on-dark (inverted) codes.
    pub inverted: bool,
    /// The kinds of code looked for: `qr`, `micro-qr`, `rmqr`.
    #[schemars(length(min = 1))]
    pub formats: Vec<QrFormat>,
}

/// A kind of code in the QR family: `qr` (model 2, 21×21 to 177×177 modules, three
/// finder patterns), `micro-qr` (11×11 to 17×17 modules, one finder pattern, up to 35
/// digits or 21 characters), `rmqr` (rectangular Micro QR, ISO/IEC 23941: 7 to 17 modules
/// high and up to 139 long, room for a web address in a strip).
// No doc comments on the variants: with them, schemars describes each variant apart
// and the UI's config form can no longer offer the list as strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum QrFormat {
    Qr,
    MicroQr,
    Rmqr,
}

impl QrFormat {
    /// The format's name in region labels, as in config.
    pub fn name(self) -> &'static str {
        match self {
            QrFormat::Qr => "qr",
            QrFormat::MicroQr => "micro-qr",
            QrFormat::Rmqr => "rmqr",
        }
    }
}

impl Default for QrConfig {
    fn default() -> Self {
        QrConfig {
            max_side: 2048,
            count_unreadable: true,
            inverted: true,
            formats: vec![QrFormat::Qr, QrFormat::MicroQr, QrFormat::Rmqr],
        }
    }
}

/// One code found: its bounding box in original pixels, its format, and its text when
/// readable.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub b: [f32; 4],
    pub format: QrFormat,
    pub text: Option<String>,
}

/// The size the search runs at for an image of `w`×`h`: scaled down by the smallest
/// whole factor that brings its longer side to `max_side` or less (sides rounded up),
/// which a JPEG of twice that or more is decoded at directly (libjpeg's DCT scaling).
pub fn search_size(w: u32, h: u32, cfg: &QrConfig) -> (u32, u32) {
    let k = w.max(h).div_ceil(cfg.max_side.max(64)).max(1);
    (w.div_ceil(k), h.div_ceil(k))
}

/// The codes in `img`, a grey image whose own size is `size` (`img` may have been
/// decoded smaller), with boxes in the image's own pixels. An `Err` is the reader failing
/// on this image (a panic inside it, caught): the caller says so rather than report "no
/// code".
///
/// When the search ran on the image made smaller and found a grid it could not read, it
/// looks again at that part of the image at full size (up to [`CLOSER_LOOKS`] parts):
/// from `img` when it is full size, else from `original` (the region's grey pixels at
/// full size, or `None` when they cannot be had now). A code of 3 px modules in a
/// 12-megapixel photo has 1.5 px ones where the whole photo is searched. A grid of
/// modules under 2.5 px at full size is looked at enlarged to twice the
/// size too, whatever size the search ran at.
pub fn find(
    img: &GrayImage,
    size: (u32, u32),
    cfg: &QrConfig,
    original: impl FnMut([u32; 4]) -> Option<GrayImage>,
) -> Result<Vec<Found>, FilterError> {
    let (sw, sh) = search_size(size.0, size.1, cfg);
    let (w, h) = img.dimensions();
    let small = (w > sw || h > sh)
        .then(|| shrink_grey(img, sw, sh))
        .flatten();
    // The resize refuses only buffers an image cannot have; the pixels as they are would
    // be read correctly too.
    let searched = small.as_ref().unwrap_or(img);
    let (gw, gh) = searched.dimensions();
    let mut pass = read_guarded(searched, cfg)?;
    let (x, y) = (size.0 as f32 / gw as f32, size.1 as f32 / gh as f32);
    pass.scale(x, y);
    let whole = (img.dimensions() == size).then_some(img);
    look_closer(&mut pass, size, (gw, gh) != size, cfg, whole, original)?;
    let (unsearched, left_out) = (pass.unsearched, pass.left_out);
    let found = pass.into_found(cfg.count_unreadable);
    // Nothing found is "no code" only where everything that could be one was looked at.
    if found.is_empty() && (unsearched > 0 || left_out > 0) {
        return Err(FilterError::InvalidInput(format!(
            "too many finder-pattern look-alikes to search them all ({unsearched} patterns \
             beyond the {MAX_PATTERNS} largest, {left_out} groups beyond the {} sampled, \
             over all searches): a QR code among them could be missed",
            finder::MAX_SETS
        )));
    }
    Ok(found)
}

/// At most this many unreadable grids an image are looked at again (at full size, or
/// enlarged to twice the size).
pub const CLOSER_LOOKS: usize = 4;

/// The searches of [`read_codes`] on `img`, a panic inside the reader caught.
fn read_guarded(img: &GrayImage, cfg: &QrConfig) -> Result<Pass, FilterError> {
    let (w, h) = img.dimensions();
    guarded(|| read_codes(img.as_raw(), w, h, cfg))
}

/// `searches` run, a panic inside the reader caught and answered as an error.
fn guarded(searches: impl FnOnce() -> Pass) -> Result<Pass, FilterError> {
    catch_unwind(AssertUnwindSafe(searches)).map_err(|_| {
        FilterError::Internal("the QR reader failed on this image (a panic, caught)".into())
    })
}

/// Each unreadable grid of `pass` (boxes in the image's own pixels, `size`) that no code
/// read overlaps, searched again: its part of the image, the grid's box with half its
/// longer side around it (the quiet zone, and room for a box misjudged by a wrong grid),
/// when that holds at most `max_side`² pixels. Where the search ran on the image made
/// smaller (`searched_smaller`), that part is searched at full size; where the grid's
/// modules are under [`ENLARGE_BELOW`] px at full size, the part is then searched at
/// twice its size too (bilinear, [`enlarged`]), when that holds at most `max_side`²
/// pixels: modules of 1.1–1.5 px, too few pixels for the sampling to tell apart, are
/// 2.2–3 px there. The codes read are added to `pass` (the grid they overlap is then no
/// longer counted as unreadable). Overlapping grids (one code found by several
/// searches) are looked at once.
fn look_closer(
    pass: &mut Pass,
    size: (u32, u32),
    searched_smaller: bool,
    cfg: &QrConfig,
    whole: Option<&GrayImage>,
    mut original: impl FnMut([u32; 4]) -> Option<GrayImage>,
) -> Result<(), FilterError> {
    let most = u64::from(cfg.max_side) * u64::from(cfg.max_side);
    let mut looked: Vec<[f32; 4]> = Vec::new();
    let grids = pass.unreadable.clone();
    for grid in grids {
        let Grid { b, modules } = grid;
        if looked.len() == CLOSER_LOOKS {
            break;
        }
        if !grid.could_be_a_code()
            || pass.read.iter().any(|f| overlap(f.b, b))
            || looked.iter().any(|l| overlap(*l, b))
        {
            continue;
        }
        let m = 0.5 * (b[2] - b[0]).max(b[3] - b[1]);
        let rect = [
            (b[0] - m).floor().clamp(0.0, size.0 as f32) as u32,
            (b[1] - m).floor().clamp(0.0, size.1 as f32) as u32,
            (b[2] + m).ceil().clamp(0.0, size.0 as f32) as u32,
            (b[3] + m).ceil().clamp(0.0, size.1 as f32) as u32,
        ];
        let [x0, y0, x1, y1] = rect;
        let area = u64::from(x1.saturating_sub(x0)) * u64::from(y1.saturating_sub(y0));
        if area == 0 || area > most {
            continue;
        }
        // The box of a turned grid is up to √2 times its side: a module estimated too
        // large, never too small.
        let module = 2.0 * m / modules.max(1) as f32;
        let enlarge = module < ENLARGE_BELOW && 4 * area <= most;
        if !searched_smaller && !enlarge {
            continue;
        }
        looked.push([x0 as f32, y0 as f32, x1 as f32, y1 as f32]);
        let part = match whole {
            Some(img) => Some(image::imageops::crop_imm(img, x0, y0, x1 - x0, y1 - y0).to_image()),
            None => original(rect),
        };
        let Some(part) = part.filter(|p| p.dimensions() == (x1 - x0, y1 - y0)) else {
            continue;
        };
        let mut closer = if searched_smaller {
            read_guarded(&part, cfg)?
        } else {
            Pass::default()
        };
        if closer.read.is_empty()
            && enlarge
            && let Some(big) = enlarged(&part)
        {
            let mut twice = read_enlarged(&big, cfg)?;
            twice.scale(0.5, 0.5);
            closer.read.extend(twice.read);
        }
        for f in &mut closer.read {
            f.b = [
                f.b[0] + x0 as f32,
                f.b[1] + y0 as f32,
                f.b[2] + x0 as f32,
                f.b[3] + y0 as f32,
            ];
        }
        pass.read.extend(closer.read);
    }
    Ok(())
}

/// A grid whose modules are estimated under this many pixels (its box's longer side over
/// its side in modules) is searched again at twice the size. The search reads codes of
/// 1.6 px modules and over as they are (the `small` photos of BENCHMARKS (h), 1.6–3 px);
/// the margin is for the estimate, up to √2 times the module of a turned grid.
const ENLARGE_BELOW: f32 = 2.5;

/// The search of an enlarged part (a panic inside the reader caught): binarised by
/// zxing-cpp's local threshold ([`binarize::midrange`]), whose middle of the contrast
/// keeps apart the modules that the enlarging blurs, then those bits inverted (when
/// `cfg.inverted`). The other searches of [`read_codes`] read none of the codes this
/// does not on the small codes of BENCHMARKS (h) and cost more on a sheet of finder
/// look-alikes; its half size would be the part as it was.
fn read_enlarged(img: &GrayImage, cfg: &QrConfig) -> Result<Pass, FilterError> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    guarded(|| {
        let mut pass = Pass::default();
        if let Some(mut bits) = binarize::midrange(img.as_raw(), w, h) {
            pass.add(search(&bits, cfg), 1.0);
            if cfg.inverted && pass.read.is_empty() {
                bits.flip_self();
                pass.add(search(&bits, cfg), 1.0);
            }
        }
        pass
    })
}

/// `img` at twice its size, bilinear (pixel centres kept where they are: each new pixel
/// 3/4 of its nearest and 1/4 of the next, across and down).
fn enlarged(img: &GrayImage) -> Option<GrayImage> {
    let (w, h) = img.dimensions();
    let (uw, uh) = (w as usize, h as usize);
    let src = img.as_raw();
    // Across: each row to twice its width, kept in quarters (0..=1020).
    let mut wide = vec![0u16; 2 * uw * uh];
    for (row, out) in src.chunks_exact(uw).zip(wide.chunks_exact_mut(2 * uw)) {
        for x in 0..uw {
            let c = 3 * u16::from(row[x]);
            out[2 * x] = c + u16::from(row[x.saturating_sub(1)]);
            out[2 * x + 1] = c + u16::from(row[(x + 1).min(uw - 1)]);
        }
    }
    let mut out = vec![0u8; 4 * uw * uh];
    let w2 = 2 * uw;
    for y in 0..uh {
        let (up, here, down) = (y.saturating_sub(1), y, (y + 1).min(uh - 1));
        for x in 0..w2 {
            let c = 3 * u32::from(wide[here * w2 + x]);
            out[(2 * y) * w2 + x] = ((c + u32::from(wide[up * w2 + x]) + 8) / 16) as u8;
            out[(2 * y + 1) * w2 + x] = ((c + u32::from(wide[down * w2 + x]) + 8) / 16) as u8;
        }
    }
    GrayImage::from_raw(2 * w, 2 * h, out)
}

/// `img` resized to `w`×`h` by Pillow's antialiased bilinear filter, run on the grey
/// repeated into three channels (the resize is written for RGB), whose first is taken:
/// each channel is resized alike. Only an image that was not decoded to the search's size
/// (a PNG over `max_side`, a JPEG not a power of two larger) comes this way.
fn shrink_grey(img: &GrayImage, w: u32, h: u32) -> Option<GrayImage> {
    let rgb = RgbImage::from_raw(
        img.width(),
        img.height(),
        img.as_raw().iter().flat_map(|&v| [v; 3]).collect(),
    )?;
    let small = crate::resize::antialiased(&rgb, w, h).ok()?;
    GrayImage::from_raw(w, h, small.as_raw().iter().step_by(3).copied().collect())
}

/// The searches, each only while no code has been read: the image binarised by a local
/// threshold (zxing's, an average of the pixels around); the same bits inverted (when
/// `cfg.inverted`); the image binarised by one threshold for all of it; by zxing-cpp's
/// local threshold (the middle of the contrast around), which reads faint and blurred
/// codes the first misses; the image at half size (2×2 pixels averaged), binarised by
/// the first again, whose blocks then span twice as many pixels (large modules).
fn read_codes(luma: &[u8], w: u32, h: u32, cfg: &QrConfig) -> Pass {
    let mut pass = Pass::default();
    let (uw, uh) = (w as usize, h as usize);
    if let Some(mut bits) = binarize::local(luma, uw, uh) {
        pass.add(search(&bits, cfg), 1.0);
        if cfg.inverted && pass.read.is_empty() {
            bits.flip_self();
            pass.add(search(&bits, cfg), 1.0);
        }
    }
    if pass.read.is_empty() {
        // No threshold for a flat image: nothing to read there.
        if let Some(bits) = binarize::global(luma, uw, uh) {
            pass.add(search(&bits, cfg), 1.0);
        }
    }
    if pass.read.is_empty()
        && let Some(bits) = binarize::midrange(luma, uw, uh)
    {
        pass.add(search(&bits, cfg), 1.0);
    }
    if pass.read.is_empty() && w >= 2 && h >= 2 {
        let (half, hw, hh) = half_size(luma, w, h);
        if let Some(bits) = binarize::local(&half, hw as usize, hh as usize) {
            pass.add(search(&bits, cfg), 2.0);
        }
    }
    pass
}

/// Each 2×2 pixels of `luma` averaged (an odd last row or column dropped).
fn half_size(luma: &[u8], w: u32, h: u32) -> (Vec<u8>, u32, u32) {
    let (hw, hh) = (w / 2, h / 2);
    let mut out = vec![0u8; hw as usize * hh as usize];
    if hw == 0 {
        return (out, hw, hh);
    }
    let rows = luma.chunks_exact(2 * w as usize);
    for (half, two) in out.chunks_exact_mut(hw as usize).zip(rows) {
        let (top, bottom) = two.split_at(w as usize);
        let pairs = top.chunks_exact(2).zip(bottom.chunks_exact(2));
        for (o, (t, b)) in half.iter_mut().zip(pairs) {
            let sum = u16::from(t[0]) + u16::from(t[1]) + u16::from(b[0]) + u16::from(b[1]);
            *o = ((sum + 2) / 4) as u8;
        }
    }
    (out, hw, hh)
}

/// What one search of a binarised image found, in the image's own pixels.
#[derive(Default)]
struct Pass {
    read: Vec<Found>,
    unreadable: Vec<Grid>,
    /// Patterns found beyond the [`MAX_PATTERNS`] largest, which were not grouped.
    unsearched: usize,
    /// Groups with no other pattern inside beyond the [`finder::MAX_SETS`] sampled.
    left_out: usize,
}

/// A QR code's grid sampled and not read: its box, and its side in modules.
#[derive(Clone, Copy)]
struct Grid {
    b: [f32; 4],
    modules: u32,
}

/// The fewest modules a QR code has on a side (version 1). The sampler takes its side
/// from the distance between the corners, and three finder-pattern look-alikes nine
/// modules apart (a tiled sheet) sample to 17: such a grid is counted as no code and not
/// looked at again.
const QR_MIN_MODULES: u32 = 21;

impl Grid {
    fn could_be_a_code(&self) -> bool {
        self.modules >= QR_MIN_MODULES
    }
}

impl Pass {
    /// Each box's x times `x`, y times `y`.
    fn scale(&mut self, x: f32, y: f32) {
        let boxes = self.read.iter_mut().map(|f| &mut f.b);
        for b in boxes.chain(self.unreadable.iter_mut().map(|g| &mut g.b)) {
            *b = [b[0] * x, b[1] * y, b[2] * x, b[3] * y];
        }
    }

    /// Adds what a search of the image scaled by 1/`scale` found.
    fn add(&mut self, mut other: Pass, scale: f32) {
        other.scale(scale, scale);
        self.read.extend(other.read);
        self.unreadable.extend(other.unreadable);
        self.unsearched += other.unsearched;
        self.left_out += other.left_out;
    }

    /// The codes read, then each unreadable grid that overlaps no code counted before it
    /// (a group of finder patterns from two codes, or one code seen twice, counts once).
    fn into_found(self, count_unreadable: bool) -> Vec<Found> {
        let mut found = self.read;
        if count_unreadable {
            for u in self.unreadable.into_iter().filter(Grid::could_be_a_code) {
                if !found.iter().any(|f| overlap(f.b, u.b)) {
                    found.push(Found {
                        b: u.b,
                        format: QrFormat::Qr,
                        text: None,
                    });
                }
            }
        }
        found
    }
}

fn overlap(a: [f32; 4], b: [f32; 4]) -> bool {
    a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]
}

/// At most this many finder patterns are grouped, the largest first: a photo holds a few
/// (three a code), while a sheet of look-alikes (a test below) holds thousands, each of
/// which is grouped with up to 15 neighbours (and at most [`finder::MAX_SETS`] groups
/// are sampled). Where patterns were left out and nothing is found, [`find`] refuses the
/// image; photos hold at most about a dozen (BENCHMARKS (h)).
const MAX_PATTERNS: usize = 300;

/// zxing-cpp's `QRCode::Reader::decode`: QR codes from groups of three finder patterns,
/// keeping the groups that sample to a grid without decoding; then Micro QR and rMQR
/// codes from each finder pattern that no code read so far used, keeping only those read.
fn search(bits: &BitMatrix, cfg: &QrConfig) -> Pass {
    let mut patterns = finder::finder_patterns(bits);
    // All of them, by place, for the look inside each group.
    let by_place = finder::ByPlace::new(&patterns, bits.getWidth(), bits.getHeight());
    let mut pass = Pass {
        unsearched: patterns.len().saturating_sub(MAX_PATTERNS),
        ..Pass::default()
    };
    if patterns.len() > MAX_PATTERNS {
        patterns.sort_by_key(|p| std::cmp::Reverse(p.size));
        patterns.truncate(MAX_PATTERNS);
    }
    let mut used = Vec::new();
    if cfg.formats.contains(&QrFormat::Qr) {
        search_qr(bits, &mut patterns, &by_place, &mut used, &mut pass);
    }
    for format in [QrFormat::MicroQr, QrFormat::Rmqr] {
        if !cfg.formats.contains(&format) {
            continue;
        }
        for p in &patterns {
            if used.contains(p) {
                continue;
            }
            let found = match format {
                QrFormat::MicroQr => detector::SampleMQR(bits, *p)
                    .ok()
                    .and_then(|s| decode(&s, format)),
                // This crate's sampler: rxing's reads no strip it does not (BENCHMARKS (h)).
                _ => crate::rmqr::sample(bits, *p).and_then(|s| decode(&s, format)),
            };
            if let Some(found) = found {
                used.push(*p);
                pass.read.push(found);
            }
        }
    }
    pass
}

/// The QR codes of `patterns` grouped in threes, the finder patterns of those read
/// added to `used`. A group that samples to a grid but is not read counts as unreadable
/// unless another of the patterns found (`all`) lies inside it.
fn search_qr(
    bits: &BitMatrix,
    patterns: &mut detector::FinderPatterns,
    all: &finder::ByPlace,
    used: &mut Vec<ConcentricPattern>,
    pass: &mut Pass,
) {
    let groups = finder::finder_sets(patterns, all);
    pass.left_out += groups.left_out;
    for set in groups.sets {
        if [set.bl, set.tl, set.tr].iter().any(|p| used.contains(p)) {
            continue;
        }
        let Ok(sampled) = detector::SampleQR(bits, &set) else {
            continue;
        };
        if sampled.getPoints().is_empty() {
            continue;
        }
        match decode(&sampled, QrFormat::Qr) {
            Some(found) => {
                used.extend([set.bl, set.tl, set.tr]);
                pass.read.push(found);
            }
            None => {
                let modules = sampled.getBits().width();
                if timing_holds(sampled.getBits())
                    || !finder::holds_another(&set, f64::from(modules), all)
                {
                    pass.unreadable.push(Grid {
                        b: bounds(sampled.getPoints()),
                        modules,
                    });
                }
            }
        }
    }
}

/// The share of a sampled grid's timing-pattern modules (row and column 6 between the
/// finder patterns, dark on even modules) that must be right for an unread grid to
/// count whatever lies inside it. A QR code's are all right, a damaged code's mostly;
/// every grid of the tiled look-alike sheets tested (pitch 9 to 30, where the gaps
/// between look-alikes are light) falls short of it, or they would count.
const TIMING_HOLDS: f64 = 0.8;

/// Whether a sampled grid has a QR code's timing patterns (at least [`TIMING_HOLDS`] of
/// their modules right): such a grid counts, unread, even with a finder-pattern
/// look-alike inside (a logo in a code damaged past reading).
fn timing_holds(bits: &BitMatrix) -> bool {
    let dim = bits.width();
    if dim < QR_MIN_MODULES {
        return false;
    }
    let line = 8..dim - 8;
    let right = line
        .clone()
        .map(|i| {
            u32::from(bits.get(i, 6) == (i % 2 == 0)) + u32::from(bits.get(6, i) == (i % 2 == 0))
        })
        .sum::<u32>();
    f64::from(right) >= TIMING_HOLDS * f64::from(2 * line.len() as u32)
}

/// The code in a sampled grid, when its content decodes.
fn decode(sampled: &QRCodeDetectorResult, format: QrFormat) -> Option<Found> {
    let points = sampled.getPoints();
    if points.is_empty() {
        return None;
    }
    let d = decoder::Decode(sampled.getBits()).ok()?;
    d.isValid().then(|| Found {
        b: bounds(points),
        format,
        text: Some(d.text().chars().take(256).collect()),
    })
}

fn bounds(points: &[rxing::Point]) -> [f32; 4] {
    points.iter().fold(
        [f32::MAX, f32::MAX, f32::MIN, f32::MIN],
        |[x0, y0, x1, y1], p| [x0.min(p.x), y0.min(p.y), x1.max(p.x), y1.max(p.y)],
    )
}

/// The QR-code filter: each call's search runs on one of `workers` slots ([`WorkQueue`]:
/// two per core by default), with the calls that wait refused or dropped by their
/// deadlines.
pub struct QrCode {
    intake: Intake,
    work: Arc<WorkQueue>,
}

impl Default for QrCode {
    fn default() -> Self {
        QrCode {
            intake: Intake::default(),
            work: Arc::new(WorkQueue::new(
                "qr-code",
                work::default_workers(),
                work::DEFAULT_QUEUE,
            )),
        }
    }
}

impl QrCode {
    /// Runs at most `workers` searches at once (the rest wait their turn).
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.work = Arc::new(WorkQueue::new("qr-code", workers, work::DEFAULT_QUEUE));
        self
    }

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
        BTreeMap::from([
            (
                "decoder".into(),
                "rxing 0.9 (zxing-cpp's QR, Micro QR and rMQR reader, ported)".into(),
            ),
            ("workers".into(), self.work.workers().to_string()),
        ])
    }

    async fn apply(&self, input: Input, cfg: QrConfig) -> Result<Verdict, FilterError> {
        // The pixels decoded measure the work: a call waits its turn for a slot, or is
        // refused when the turn would come too late for its deadline, before decoding.
        let pixels = self
            .intake
            .pixels_to_fit(&input, |w, h| search_size(w, h, &cfg))?;
        let slot = self
            .work
            .enter(sekisho_filter_sdk::deadline(), pixels as usize)
            .await?;
        let fit = cfg.clone();
        let found = self
            .intake
            .with_grey_to_fit(
                input,
                move |w, h| search_size(w, h, &fit),
                move |img, size, original| {
                    // Held until the search ends, in its thread: a caller that goes
                    // does not free the core its search still takes.
                    let _slot = slot;
                    // A region that cannot be decoded now is not looked at again; the
                    // grid found still counts as unreadable.
                    find(&img, size, &cfg, |rect| {
                        original.grey_region(rect).ok().flatten()
                    })
                },
            )
            .await?;
        let mut v = Verdict::score(if found.is_empty() { 0.0 } else { 1.0 })
            .label("qr_count", found.len() as f64);
        let texts: Vec<_> = found.iter().map(|f| f.text.clone()).collect();
        let formats: Vec<_> = found.iter().map(|f| f.format.name()).collect();
        for f in found {
            v = v.region(proto::Region {
                x: f.b[0],
                y: f.b[1],
                width: f.b[2] - f.b[0],
                height: f.b[3] - f.b[1],
                score: 1.0,
                label: f.format.name().into(),
                landmarks: vec![],
            });
        }
        if !texts.is_empty() {
            v = v.details(serde_json::json!({ "texts": texts, "formats": formats }));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A QR code drawn into a photo-sized canvas at (x, y), `module` pixels per module,
    /// dark modules `dark` on a quiet zone of 4 modules `255 - dark`.
    fn code_on(canvas: &mut RgbImage, text: &str, at: (u32, u32), module: u32, dark: u8) {
        let code = qrcode::QrCode::new(text.as_bytes()).unwrap();
        modules_on(canvas, &rows_of(&code), at, module, dark);
    }

    /// The modules of `code`, row by row, `true` where dark.
    fn rows_of(code: &qrcode::QrCode) -> Vec<Vec<bool>> {
        let colors = code.to_colors();
        colors
            .chunks(code.width())
            .map(|row| row.iter().map(|c| *c == qrcode::Color::Dark).collect())
            .collect()
    }

    /// `rows` of modules drawn at (x, y) inside a quiet zone of 4 modules.
    fn modules_on(
        canvas: &mut RgbImage,
        rows: &[Vec<bool>],
        (x, y): (u32, u32),
        module: u32,
        dark: u8,
    ) {
        let (w, h) = (rows[0].len() as u32, rows.len() as u32);
        for py in 0..(h + 8) * module {
            for px in 0..(w + 8) * module {
                let (mx, my) = ((px / module).wrapping_sub(4), (py / module).wrapping_sub(4));
                let is_dark = mx < w && my < h && rows[my as usize][mx as usize];
                let v = if is_dark { dark } else { 255 - dark };
                canvas.put_pixel(x + px, y + py, image::Rgb([v, v, v]));
            }
        }
    }

    /// Modules drawn as text, `#` dark.
    fn drawn(rows: &[&str]) -> Vec<Vec<bool>> {
        rows.iter()
            .map(|r| r.bytes().map(|b| b == b'#').collect())
            .collect()
    }

    /// A Micro QR code (M3, error correction L) of "MICRO-123", as zxing-cpp 3.1.1 writes it
    /// (the `qrcode` crate's Micro QR codes are read by neither zxing-cpp nor rxing).
    const MICRO_QR: [&str; 15] = [
        "#######.#.#.#.#",
        "#.....#.....###",
        "#.###.#..####.#",
        "#.###.#..#.####",
        "#.###.#.#######",
        "#.....#.##....#",
        "#######.####.##",
        "........#......",
        "####.##....###.",
        "..##....#.#####",
        "#...####...##..",
        ".##.###....#.#.",
        "#....#...##..#.",
        ".#...#......##.",
        "#.#.###.###...#",
    ];

    /// An rMQR code (R13×43, error correction M) of "https://x.example/rmqr", as
    /// zxing-cpp 3.1.1 writes it (`zxingcpp.create_barcode(.., BarcodeFormat.RMQRCode)`).
    const RMQR: [&str; 13] = [
        "#######.#.#.#.#.#.#.###.#.#.#.#.#.#.#.#.###",
        "#.....#.#####.#######.#...##.#...#....##..#",
        "#.###.#.###.###.##..###...#..#....###..#..#",
        "#.###.#.##..###..###..#.#.......#..#..####.",
        "#.###.#.#.#####.###.##.##.#..#.#..##.#.####",
        "#.....#..####..#.#..#.##..#....#.........#.",
        "#######.......#......##..##.####....#..#..#",
        ".........###...###....######....#.#.##.###.",
        "##.#....#.##.#..#..#.#.#.###.......#.######",
        ".#..##...#.#..##..###.##.##...##..##.##...#",
        "##.##...#....###..#.###..##....#.#....#.#.#",
        "#.##.###.###..###.###.##.#.#...###..#.#...#",
        "###.#.#.#.#.#.#.#.#.###.#.#.#.#.#.#.#.#####",
    ];

    /// The filter's verdict on `img` sent as a JPEG of `quality`.
    async fn apply_to_jpeg(img: &RgbImage, quality: u8) -> Verdict {
        let mut jpeg = Vec::new();
        let (w, h) = (img.width() as u16, img.height() as u16);
        jpeg_encoder::Encoder::new(&mut jpeg, quality)
            .encode(img.as_raw(), w, h, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let input = Input {
            content_type: "image/jpeg".into(),
            payload: sekisho_filter_sdk::Payload::Data(jpeg.into()),
            context: Default::default(),
        };
        QrCode::default()
            .apply(input, QrConfig::default())
            .await
            .unwrap()
    }

    /// The codes in `img`, searched as a whole image.
    fn codes_in(img: &RgbImage, cfg: &QrConfig) -> Vec<Found> {
        find(&intake::luma(img), img.dimensions(), cfg, |_| None).unwrap()
    }

    fn canvas() -> RgbImage {
        RgbImage::from_pixel(640, 480, image::Rgb([230, 220, 200]))
    }

    fn canvas_with_qr(text: &str, x: u32, y: u32, module: u32) -> RgbImage {
        let mut img = canvas();
        code_on(&mut img, text, (x, y), module, 0);
        img
    }

    #[test]
    fn finds_reads_and_places_a_code() {
        let img = canvas_with_qr("https://example.com/spam", 100, 50, 6);
        let found = codes_in(&img, &QrConfig::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].text.as_deref(), Some("https://example.com/spam"));
        // The code's modules start 4 modules (24 px) inside the quiet zone; a version 2
        // code is 25 modules (150 px) a side.
        let b = found[0].b;
        for (got, want) in b.iter().zip([124.0, 74.0, 274.0, 224.0]) {
            assert!((got - want).abs() <= 6.0, "{b:?}");
        }
    }

    #[test]
    fn a_plain_photo_has_none_and_large_images_are_scaled() {
        let img = RgbImage::from_fn(800, 600, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        assert!(codes_in(&img, &QrConfig::default()).is_empty());
        let img = canvas_with_qr("scaled", 0, 0, 8);
        let small = QrConfig {
            max_side: 320,
            ..QrConfig::default()
        };
        let found = codes_in(&img, &small);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].b[2] > 200.0,
            "boxes are in original pixels: {:?}",
            found[0].b
        );
    }

    /// A 12-megapixel JPEG is decoded at 1/2 and searched at 1/3 of its size (the
    /// default `max_side`, 2,048): the code is read, its box in the photo's own pixels.
    #[tokio::test]
    async fn a_large_jpeg_is_searched_smaller_and_placed_in_its_own_pixels() {
        let mut img = RgbImage::from_pixel(4200, 2800, image::Rgb([200, 190, 170]));
        code_on(&mut img, "a phone photo", (2500, 300), 12, 0);
        assert_eq!(search_size(4200, 2800, &QrConfig::default()), (1400, 934));
        let v = apply_to_jpeg(&img, 90).await;
        assert_eq!(v.details.unwrap()["texts"][0], "a phone photo");
        // Version 1: 21 modules of 12 px, inside a quiet zone of 4.
        let r = &v.regions[0];
        let got = [r.x, r.y, r.x + r.width, r.y + r.height];
        for (g, want) in got.iter().zip([2548.0, 348.0, 2800.0, 600.0]) {
            assert!((g - want).abs() <= 12.0, "{got:?}");
        }
    }

    #[test]
    fn light_on_dark_codes_are_read_when_asked() {
        let mut img = RgbImage::from_pixel(640, 480, image::Rgb([20, 30, 40]));
        code_on(&mut img, "inverted", (100, 50), 6, 235);
        let found = codes_in(&img, &QrConfig::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].text.as_deref(), Some("inverted"));
        let cfg = QrConfig {
            inverted: false,
            ..QrConfig::default()
        };
        assert!(codes_in(&img, &cfg).is_empty(), "dark on light only");
    }

    #[test]
    fn two_codes_are_two() {
        let mut img = RgbImage::from_pixel(900, 400, image::Rgb([230, 220, 200]));
        code_on(&mut img, "left", (40, 60), 7, 0);
        code_on(&mut img, "right", (520, 60), 7, 0);
        let mut texts: Vec<_> = codes_in(&img, &QrConfig::default())
            .into_iter()
            .map(|f| f.text)
            .collect();
        texts.sort();
        assert_eq!(texts, [Some("left".into()), Some("right".into())]);
    }

    /// A code whose data is painted over beyond what error correction restores is
    /// found, unread, and counted unless `count_unreadable` is off.
    #[test]
    fn a_damaged_code_counts_unread() {
        let mut img = canvas_with_qr(
            "https://example.com/a-longer-text-for-more-modules",
            100,
            50,
            6,
        );
        // The modules between the finder patterns, below the top ones: data and error
        // correction, not the corners or the timing pattern.
        for y in 150..270 {
            for x in 180..290 {
                img.put_pixel(x, y, image::Rgb([((x * 7 + y * 13) % 2 * 255) as u8; 3]));
            }
        }
        let damaged = img.clone();
        // Placed where the code is.
        let at_code = |f: &Found| (f.b[0] - 124.0).abs() <= 6.0 && (f.b[1] - 74.0).abs() <= 6.0;
        let found = codes_in(&img, &QrConfig::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].text, None);
        assert!(at_code(&found[0]), "{found:?}");
        let cfg = QrConfig {
            count_unreadable: false,
            ..QrConfig::default()
        };
        assert!(codes_in(&img, &cfg).is_empty(), "only codes read count");
        // Finder-pattern look-alikes just beyond its quiet zone, right of its top-right
        // corner and past its fourth corner, are not inside it: it still counts.
        let alike = look_alikes(42, 42, 7, 6);
        for (x, y) in [(346, 74), (346, 296)] {
            image::imageops::replace(&mut img, &alike, x, y);
        }
        let found = codes_in(&img, &QrConfig::default());
        assert!(found.iter().any(at_code), "{found:?}");
        // A finder-pattern look-alike half as large again inside it (a logo on a white
        // square, too large to be grouped with the corners): its timing patterns hold,
        // so it still counts.
        let mut img = damaged;
        let white = RgbImage::from_pixel(81, 81, image::Rgb([255; 3]));
        image::imageops::replace(&mut img, &white, 183, 133);
        image::imageops::replace(&mut img, &look_alikes(63, 63, 7, 9), 192, 142);
        let found = codes_in(&img, &QrConfig::default());
        assert!(found.iter().any(at_code), "{found:?}");
    }

    /// A QR code, a Micro QR code and an rMQR code in one photo: each read, placed and
    /// labelled with its format; with `formats` only QR codes, only the QR code.
    #[tokio::test]
    async fn micro_qr_and_rmqr_codes_are_read_and_labelled() {
        let mut img = RgbImage::from_pixel(900, 500, image::Rgb([230, 220, 200]));
        code_on(&mut img, "a QR code", (30, 30), 6, 0);
        modules_on(&mut img, &drawn(&MICRO_QR), (400, 40), 7, 0);
        modules_on(&mut img, &drawn(&RMQR), (300, 300), 6, 0);
        let mut found = codes_in(&img, &QrConfig::default());
        found.sort_by(|a, b| a.b[0].total_cmp(&b.b[0]));
        let got: Vec<_> = found
            .iter()
            .map(|f| (f.format, f.text.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (QrFormat::Qr, Some("a QR code")),
                (QrFormat::Rmqr, Some("https://x.example/rmqr")),
                (QrFormat::MicroQr, Some("MICRO-123")),
            ]
        );
        // Each box is the code's modules, inside its quiet zone of 4: Micro QR version 3
        // is 15 modules (of 7 px) a side, the rMQR code 43×13 (of 6 px).
        for (f, want) in found[1..]
            .iter()
            .zip([[324.0, 324.0, 582.0, 402.0], [428.0, 68.0, 533.0, 173.0]])
        {
            for (got, want) in f.b.iter().zip(want) {
                assert!((got - want).abs() <= 7.0, "{:?}: {:?}", f.format, f.b);
            }
        }
        let qr_only = QrConfig {
            formats: vec![QrFormat::Qr],
            ..QrConfig::default()
        };
        let found = codes_in(&img, &qr_only);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].format, QrFormat::Qr);

        // Through the filter: the region labels and the formats in `details`.
        let v = apply_to_jpeg(&img, 95).await;
        assert_eq!(v.labels["qr_count"], 3.0);
        let mut labels: Vec<_> = v.regions.iter().map(|r| r.label.as_str()).collect();
        labels.sort();
        assert_eq!(labels, ["micro-qr", "qr", "rmqr"]);
        let details = v.details.unwrap();
        for (text, format) in [
            ("MICRO-123", "micro-qr"),
            ("https://x.example/rmqr", "rmqr"),
        ] {
            let i = details["texts"]
                .as_array()
                .unwrap()
                .iter()
                .position(|t| t == text)
                .unwrap_or_else(|| panic!("{text} not in {details}"));
            assert_eq!(details["formats"][i], format);
        }
    }

    /// The rMQR code of `RMQR` drawn into a 640×360 image through `to_module`, which
    /// gives each pixel's place on the strip in modules.
    fn rmqr_seen(to_module: impl Fn(f32, f32) -> (f32, f32)) -> RgbImage {
        let rows = drawn(&RMQR);
        RgbImage::from_fn(640, 360, |x, y| {
            let (mx, my) = to_module(x as f32 + 0.5, y as f32 + 0.5);
            let (mx, my) = (mx.floor(), my.floor());
            let dark = (0.0..43.0).contains(&mx)
                && (0.0..13.0).contains(&my)
                && rows[my as usize][mx as usize];
            image::Rgb([if dark { 20 } else { 235 }; 3])
        })
    }

    /// An rMQR strip turned by 3°, and one seen at a slant (its far end 30% smaller):
    /// rxing's sampler maps the far ends' modules off and reads neither; this crate's
    /// finds the far corner's pattern and reads both.
    #[test]
    fn turned_and_slanted_rmqr_strips_are_read() {
        let turn = 3f32.to_radians();
        let turned = rmqr_seen(|x, y| {
            // Turned back about the strip's centre, drawn at (320, 180), 6 px a module.
            let (dx, dy) = (x - 320.0, y - 180.0);
            (
                (dx * turn.cos() + dy * turn.sin()) / 6.0 + 21.5,
                (-dx * turn.sin() + dy * turn.cos()) / 6.0 + 6.5,
            )
        });
        let slanted = rmqr_seen(|x, y| {
            // A perspective: the strip's left end at (100, 140), 7 px a module there,
            // receding to the right.
            let (u, v) = (x - 100.0, y - 140.0);
            let d = 1.0 - 0.0015 * u + 0.0002 * v;
            (u / 7.0 / d, (v + 0.05 * u) / 7.0 / d)
        });
        for (img, what) in [(turned, "turned"), (slanted, "slanted")] {
            let found = codes_in(&img, &QrConfig::default());
            assert_eq!(found.len(), 1, "{what}: {found:?}");
            assert_eq!(
                found[0].text.as_deref(),
                Some("https://x.example/rmqr"),
                "{what}"
            );
            if what == "turned" {
                // The strip's far corners: 258 px by 78, turned 3°.
                let b = found[0].b;
                assert!((b[2] - b[0] - 262.0).abs() < 10.0, "{b:?}");
            }
        }
    }

    /// A blurred code with 3 px modules in an image searched at half size (1.5 px
    /// modules there) is found but cannot be read; the closer look at its part of the
    /// image at full size reads it: from the image itself when it was given whole, else
    /// from the original, asked once for a region around the code. With no original to be
    /// had, the grid still counts, unread.
    #[test]
    fn a_code_too_small_where_searched_is_read_by_a_closer_look() {
        let text = "https://example.com/a-closer-look?id=0123456789";
        let mut img = RgbImage::from_pixel(1280, 960, image::Rgb([230, 220, 200]));
        code_on(&mut img, text, (700, 500), 3, 0);
        let img = image::imageops::blur(&img, 1.2);
        let cfg = QrConfig {
            max_side: 640,
            ..QrConfig::default()
        };
        let grey = intake::luma(&img);
        let read = |found: &[Found]| found.iter().map(|f| f.text.clone()).collect::<Vec<_>>();
        // Given whole: the search shrinks it, the closer look crops it.
        let found = find(&grey, (1280, 960), &cfg, |_| panic!("the image is whole")).unwrap();
        assert_eq!(read(&found), [Some(text.to_owned())]);
        // Given at half size (a JPEG decoded at 1/2): the region comes from the original.
        let (half, hw, hh) = half_size(grey.as_raw(), 1280, 960);
        let half = GrayImage::from_raw(hw, hh, half).unwrap();
        let mut asked = vec![];
        let found = find(&half, (1280, 960), &cfg, |[x0, y0, x1, y1]| {
            asked.push([x0, y0, x1, y1]);
            Some(image::imageops::crop_imm(&grey, x0, y0, x1 - x0, y1 - y0).to_image())
        })
        .unwrap();
        assert_eq!(read(&found), [Some(text.to_owned())]);
        assert_eq!(asked.len(), 1, "{asked:?}");
        // The code's modules start at (712, 512), inside its quiet zone; the region holds
        // all of them with room around.
        let side = 3 * qrcode::QrCode::new(text.as_bytes()).unwrap().width() as u32;
        let [x0, y0, x1, y1] = asked[0];
        assert!(
            x0 < 700 && y0 < 500 && x1 > 724 + side && y1 > 524 + side,
            "{:?}, the code {side} px a side",
            asked[0]
        );
        let b = found[0].b;
        assert!(
            (b[0] - 712.0).abs() <= 3.0 && (b[1] - 512.0).abs() <= 3.0,
            "{b:?}"
        );
        // Nothing to look closer at: the grid found counts, unread.
        let found = find(&half, (1280, 960), &cfg, |_| None).unwrap();
        assert_eq!(read(&found), [None]);
        // Searched at full size, there is nothing to look closer at.
        let whole = QrConfig {
            max_side: 2048,
            ..cfg.clone()
        };
        let found = find(&grey, (1280, 960), &whole, |_| panic!("searched whole")).unwrap();
        assert_eq!(read(&found), [Some(text.to_owned())]);
    }

    /// A code whose modules are 1.25 px (drawn at 5 px a module, the image then averaged
    /// down by 4): found but not read where the image is searched at full size, and read
    /// by the closer look at its part enlarged to twice its size; light on dark too, from
    /// the enlarged part's bits inverted (only when `inverted` is on).
    #[test]
    fn a_code_of_modules_under_two_pixels_is_read_at_twice_the_size() {
        let text = "https://example.com/modules-of-a-pixel-and-a-quarter";
        let mut big = RgbImage::from_pixel(2400, 1600, image::Rgb([230, 220, 200]));
        code_on(&mut big, text, (1203, 601), 5, 20);
        let big = intake::luma(&big);
        let grey = GrayImage::from_fn(600, 400, |x, y| {
            let mut sum = 0u32;
            for dy in 0..4 {
                for dx in 0..4 {
                    sum += u32::from(big.get_pixel(4 * x + dx, 4 * y + dy)[0]);
                }
            }
            image::Luma([((sum + 8) / 16) as u8])
        });
        let cfg = QrConfig::default();
        let plain = read_guarded(&grey, &cfg).unwrap();
        assert!(plain.read.is_empty(), "read without a closer look");
        assert!(
            !plain.unreadable.is_empty(),
            "no grid found to look closer at"
        );
        let found = find(&grey, (600, 400), &cfg, |_| panic!("the image is whole")).unwrap();
        let texts: Vec<_> = found.iter().map(|f| f.text.clone()).collect();
        assert_eq!(texts, [Some(text.to_owned())]);
        // Placed in the image's own pixels: the modules start at (1223, 621) / 4.
        let b = found[0].b;
        assert!(
            (b[0] - 305.75).abs() <= 2.0 && (b[1] - 155.25).abs() <= 2.0,
            "{b:?}"
        );
        // Light on dark, the part enlarged: read from its bits inverted. (The whole image
        // inverted gives no grid to look at: only the first threshold's bits are searched
        // inverted.)
        let mut part = image::imageops::crop_imm(&grey, 270, 120, 110, 110).to_image();
        image::imageops::invert(&mut part);
        let twice = read_enlarged(&enlarged(&part).unwrap(), &cfg).unwrap();
        let texts: Vec<_> = twice.read.iter().map(|f| f.text.clone()).collect();
        assert_eq!(texts, [Some(text.to_owned())]);
        let upright = QrConfig {
            inverted: false,
            ..cfg.clone()
        };
        assert!(
            read_enlarged(&enlarged(&part).unwrap(), &upright)
                .unwrap()
                .read
                .is_empty()
        );
    }

    /// Through the filter: a JPEG twice the search's size is decoded at 1/2 by libjpeg,
    /// and the closer look decodes the code's region from the file at full size; also
    /// from a JPEG stored turned left whose EXIF orientation (6) turns it upright, whose
    /// region is found in the pixels as stored.
    #[tokio::test]
    async fn the_filter_looks_closer_at_a_jpeg_it_decoded_smaller() {
        let text = "https://example.com/a-closer-look?id=0123456789";
        let mut img = RgbImage::from_pixel(1280, 960, image::Rgb([230, 220, 200]));
        code_on(&mut img, text, (700, 500), 3, 0);
        let img = image::imageops::blur(&img, 1.2);
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 95)
            .encode(img.as_raw(), 1280, 960, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let turned = intake::tests::stored_oriented(&image::imageops::rotate270(&img), 6);
        let cfg = QrConfig {
            max_side: 640,
            ..QrConfig::default()
        };
        let filter = QrCode::default();
        for bytes in [jpeg, turned] {
            let input = Input {
                content_type: "image/jpeg".into(),
                payload: sekisho_filter_sdk::Payload::Data(bytes.into()),
                context: Default::default(),
            };
            let v = filter.apply(input, cfg.clone()).await.unwrap();
            assert_eq!(v.labels["qr_count"], 1.0);
            let details = v.details.unwrap().to_string();
            assert!(details.contains(text), "{details}");
            let r = &v.regions[0];
            assert!(
                (r.x - 712.0).abs() <= 3.0 && (r.y - 512.0).abs() <= 3.0,
                "{r:?}"
            );
        }
    }

    #[test]
    fn enlarging_keeps_the_pixel_centres() {
        // Across: 0 and 100 become 0, 25, 75, 100 (each new pixel 3/4 its nearest, 1/4
        // the next, the edges repeated); down likewise, 0 and 160 to 0, 40, 120, 160.
        let img = GrayImage::from_raw(2, 1, vec![0, 100]).unwrap();
        assert_eq!(
            enlarged(&img).unwrap().as_raw(),
            &[0, 25, 75, 100, 0, 25, 75, 100]
        );
        let img = GrayImage::from_raw(1, 2, vec![0, 160]).unwrap();
        assert_eq!(
            enlarged(&img).unwrap().as_raw(),
            &[0, 0, 40, 40, 120, 120, 160, 160]
        );
        // Both at once: the corner pixel of a 2×2 is 9/16 its own, 3/16 each neighbour
        // and 1/16 the diagonal one.
        let img = GrayImage::from_raw(2, 2, vec![160, 0, 0, 0]).unwrap();
        let big = enlarged(&img).unwrap();
        assert_eq!(big.dimensions(), (4, 4));
        assert_eq!(big.get_pixel(1, 1)[0], 90);
        assert_eq!(big.get_pixel(2, 2)[0], 10);
        assert_eq!(big.get_pixel(0, 0)[0], 160);
    }

    #[test]
    fn half_size_averages_each_two_by_two() {
        // 5×3: the last column and row are dropped; (1+2+6+7+2)/4 rounds to 4.
        let luma: Vec<u8> = (1..=15).collect();
        assert_eq!(half_size(&luma, 5, 3), (vec![4, 6], 2, 1));
        assert_eq!(half_size(&[255; 4], 2, 2), (vec![255], 1, 1));
    }

    /// Finder patterns (7×7 modules: ring, gap, 3×3 centre) tiled `pitch` modules apart
    /// at `module` pixels a module.
    fn look_alikes(w: u32, h: u32, pitch: u32, module: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let (mx, my) = ((x / module) % pitch, (y / module) % pitch);
            let ring = mx.min(my).min(6 - mx.min(6)).min(6 - my.min(6));
            let dark = mx < 7 && my < 7 && ring != 1;
            image::Rgb([if dark { 0 } else { 255 }; 3])
        })
    }

    /// The groups of finder patterns in `img` (binarised by the first search's threshold)
    /// that sample to a grid, and all the patterns found, by height.
    fn grids_in(
        img: &RgbImage,
    ) -> (
        Vec<(QRCodeDetectorResult, detector::FinderPatternSet)>,
        finder::ByPlace,
    ) {
        let luma = intake::luma(img);
        let (w, h) = luma.dimensions();
        let bits = binarize::local(luma.as_raw(), w as usize, h as usize).unwrap();
        let mut patterns = finder::finder_patterns(&bits);
        let by_place = finder::ByPlace::new(&patterns, w, h);
        // No pattern taken as inside: every group the geometry allows, up to the limit.
        let nothing = finder::ByPlace::new(&[], w, h);
        let grids = finder::finder_sets(&mut patterns, &nothing)
            .sets
            .into_iter()
            .filter_map(|set| Some((detector::SampleQR(&bits, &set).ok()?, set)))
            .filter(|(grid, _)| !grid.getPoints().is_empty())
            .collect();
        (grids, by_place)
    }

    /// Three look-alikes of a tiled sheet nine modules apart sample to a grid of 17
    /// modules, which no QR code has: such grids counted as 7 codes on a 1000×800 sheet
    /// of them, and 18 on it at 2/3 the size (1.33 px a module), each then searched again
    /// enlarged. They are not codes by their size, and now also by the look-alikes inside
    /// them (the next test); the sheet here is smaller, so that every pattern is grouped.
    #[test]
    fn grids_smaller_than_any_qr_code_are_not_codes() {
        let sheet = look_alikes(300, 240, 9, 2);
        let smaller =
            image::imageops::resize(&sheet, 200, 160, image::imageops::FilterType::Triangle);
        for img in [&sheet, &smaller] {
            let (grids, _) = grids_in(img);
            let sides: Vec<_> = grids.iter().map(|(g, _)| g.getBits().width()).collect();
            assert!(sides.contains(&17), "{sides:?}");
            assert_eq!(codes_in(img, &QrConfig::default()), []);
        }
        let grid = |modules| Grid {
            b: [0.0; 4],
            modules,
        };
        assert!(!grid(17).could_be_a_code() && grid(21).could_be_a_code());
    }

    /// Sheets of look-alikes 9 to 30 modules apart: three of them span grids, of 21
    /// modules and more from 14 apart, which counted as codes not read (17 to 69 on the
    /// 2048² and 4096² sheets of BENCHMARKS (h)). Each such grid has other look-alikes inside it, one at its
    /// fourth corner at least, where a QR code has none.
    #[test]
    fn grids_with_finder_patterns_inside_are_not_codes() {
        for pitch in [9, 14, 16, 22, 30] {
            for module in [2, 3] {
                // Small enough for every pattern and group to be looked at.
                let side = 16 * pitch * module;
                let sheet = look_alikes(side, side * 3 / 4, pitch, module);
                let (grids, all) = grids_in(&sheet);
                assert!(grids.len() > 10, "pitch {pitch}, module {module}");
                for (grid, set) in &grids {
                    let modules = grid.getBits().width();
                    let holds = finder::holds_another(set, f64::from(modules), &all);
                    assert!(holds, "pitch {pitch}: {set:?}");
                }
                assert_eq!(codes_in(&sheet, &QrConfig::default()), [], "pitch {pitch}");
            }
        }
    }

    /// A QR code among 200 look-alikes larger than its finder patterns: the look-alikes
    /// make groups by the thousand, the smallest of which ranked first, and the code's
    /// group was not among the 256 sampled (the code went unread; zxing-cpp misses it
    /// too). Groups with another pattern inside now rank after every group without.
    #[test]
    fn a_code_among_look_alikes_is_read() {
        let mut img = RgbImage::from_pixel(1000, 760, image::Rgb([255; 3]));
        code_on(&mut img, "https://spam.example/win", (420, 320), 3, 0);
        // Look-alikes of 4 px modules 13 modules apart: groups of 20 modules.
        let alike = look_alikes(28, 28, 7, 4);
        let mut placed = 0;
        for y in (8..720).step_by(52) {
            for x in (8..960).step_by(52) {
                let near_code = (370..570).contains(&x) && (270..470).contains(&y);
                if !near_code && placed < 200 {
                    image::imageops::replace(&mut img, &alike, x, y);
                    placed += 1;
                }
            }
        }
        assert_eq!(placed, 200);
        let found = codes_in(&img, &QrConfig::default());
        let texts: Vec<_> = found.iter().filter_map(|f| f.text.as_deref()).collect();
        assert_eq!(texts, ["https://spam.example/win"], "{found:?}");
    }

    /// A sheet with more finder patterns than are grouped (the 300 largest), or more
    /// groups with nothing inside than are sampled (256), is not searched to the end: with
    /// nothing found, it is refused as such rather than answered "no code", since a code
    /// among the patterns left out would have been missed. No photo comes near either
    /// bound (at most 11 patterns a search over 2,154 searches of BENCHMARKS (h)'s photos).
    #[tokio::test]
    async fn a_sheet_too_dense_to_search_to_the_end_is_refused() {
        let sheet = look_alikes(700, 700, 9, 2);
        let luma = intake::luma(&sheet);
        let e = find(&luma, sheet.dimensions(), &QrConfig::default(), |_| None).unwrap_err();
        let FilterError::InvalidInput(m) = &e else {
            panic!("{e:?}")
        };
        assert!(m.starts_with("too many finder-pattern look-alikes"), "{m}");
        let mut png = Vec::new();
        sheet
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let input = Input {
            content_type: "image/png".into(),
            payload: sekisho_filter_sdk::Payload::Data(png.into()),
            context: Default::default(),
        };
        let e = QrCode::default().apply(input, QrConfig::default()).await;
        assert!(matches!(e, Err(FilterError::InvalidInput(_))), "{e:?}");
    }

    /// Sizes and patterns a detector's arithmetic can trip on: one pixel, one row, less
    /// than the binarizer's 40-pixel blocks, flat, noise, checkerboards, and a sheet of
    /// finder-pattern look-alikes. Each is searched without a panic.
    #[test]
    fn odd_images_are_searched_without_a_panic() {
        let mut images = vec![
            RgbImage::new(1, 1),
            RgbImage::new(1, 500),
            RgbImage::new(700, 2),
            RgbImage::from_pixel(39, 39, image::Rgb([255; 3])),
            RgbImage::from_pixel(300, 300, image::Rgb([0; 3])),
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for (w, h) in [(41, 41), (97, 320), (640, 480)] {
            images.push(RgbImage::from_fn(w, h, |_, _| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                image::Rgb([(seed & 255) as u8; 3])
            }));
        }
        for cell in [1, 2, 3, 7] {
            images.push(RgbImage::from_fn(400, 300, |x, y| {
                image::Rgb([((x / cell + y / cell) % 2 * 255) as u8; 3])
            }));
        }
        images.push(look_alikes(1000, 800, 9, 2));
        // Searched whole, and scaled down (grids found unread are then looked at again,
        // cropped from the image).
        let small = QrConfig {
            max_side: 256,
            ..QrConfig::default()
        };
        for img in &images {
            for cfg in [&QrConfig::default(), &small] {
                let found = find(&intake::luma(img), img.dimensions(), cfg, |_| None);
                // The sheet is refused as too dense to search to the end; nothing panics.
                let refused = |m: &str| m.starts_with("too many finder-pattern look-alikes");
                assert!(
                    match &found {
                        Ok(_) => true,
                        Err(FilterError::InvalidInput(m)) => refused(m),
                        Err(_) => false,
                    },
                    "{:?}: {found:?}",
                    img.dimensions()
                );
            }
        }
    }
}
