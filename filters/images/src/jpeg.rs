//! JPEG through libjpeg-turbo (the `mozjpeg` crate, at libjpeg-turbo's defaults): the
//! decoder and encoder Pillow uses, so that a decoded JPEG and open_nsfw's JPEG round trip
//! are byte for byte what the reference pipelines see.
//!
//! libjpeg reports a fatal error by unwinding out of its C code (the crate's error
//! manager); both functions here catch that and return it as an error. Its warnings are
//! silent, as Pillow's are, except the one that matters: input that ends before the last
//! scanline, which libjpeg would fill with grey and Pillow refuses as truncated. The
//! intake finds that first from the markers ([`layout`], before decoding); [`decode`]
//! also notes when libjpeg asks past the end of the data, and refuses.

use std::cell::Cell;
use std::io::{self, BufRead, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::{GrayImage, RgbImage};
use mozjpeg::ColorSpace;

/// The bytes of a JPEG, read by libjpeg; notes when libjpeg asks for more than there is.
struct Watched<'a> {
    rest: &'a [u8],
    ran_out: &'a Cell<bool>,
}

impl Read for Watched<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.rest.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ran_out.set(true);
        }
        Ok(n)
    }
}

impl BufRead for Watched<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.rest.is_empty() {
            self.ran_out.set(true);
        }
        Ok(self.rest)
    }

    fn consume(&mut self, n: usize) {
        self.rest = &self.rest[n.min(self.rest.len())..];
    }
}

/// What walking a JPEG's markers finds, before any decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Start-of-scan markers before the end of the image.
    pub scans: usize,
    /// Whether the end-of-image marker was reached: without it the data was cut short
    /// (Pillow refuses such a file as truncated).
    pub complete: bool,
    /// The first frame header's marker (C0 baseline, C2 progressive, C3 lossless, C9
    /// and on arithmetic-coded, …) and sample precision in bits.
    pub frame: Option<(u8, u8)>,
}

/// Walks a JPEG's segments from the start-of-image marker to the end-of-image one:
/// segments by their lengths, each scan's entropy-coded data up to the next marker that is
/// not a stuffed 00 or a restart marker. What follows the end of the image (the video of
/// a "motion photo", a second picture) is not looked at. Linear in the bytes, reads only.
pub fn layout(b: &[u8]) -> Layout {
    let mut scans = 0;
    let mut frame = None;
    let cut = |scans, frame| Layout {
        scans,
        complete: false,
        frame,
    };
    let at = |i: usize| b.get(i).copied();
    let mut i = 2; // after FF D8
    loop {
        // The next marker; libjpeg skips (and warns about) bytes before it.
        match b.get(i..).and_then(|r| memchr::memchr(0xFF, r)) {
            Some(k) => i += k,
            None => return cut(scans, frame),
        }
        let Some(m) = at(i + 1) else {
            return cut(scans, frame);
        };
        match m {
            0xD9 => {
                return Layout {
                    scans,
                    complete: true,
                    frame,
                };
            }
            // Fill bytes, and markers without a length.
            0xFF => i += 1,
            0x00 | 0x01 | 0xD0..=0xD8 => i += 2,
            _ => {
                let (Some(hi), Some(lo)) = (at(i + 2), at(i + 3)) else {
                    return cut(scans, frame);
                };
                // Frame headers: C0–CF but DHT (C4), JPG (C8) and DAC (CC).
                if matches!(m, 0xC0..=0xCF) && !matches!(m, 0xC4 | 0xC8 | 0xCC) {
                    frame = frame.or(at(i + 4).map(|p| (m, p)));
                }
                i += 2 + (usize::from(hi) << 8 | usize::from(lo));
                if m == 0xDA {
                    scans += 1;
                    // The entropy-coded data: an FF there is followed by 00 (a stuffed
                    // byte), a restart marker, or more FF before a marker.
                    loop {
                        match b.get(i..).and_then(|r| memchr::memchr(0xFF, r)) {
                            Some(k) => i += k,
                            None => return cut(scans, frame),
                        }
                        match at(i + 1) {
                            None => return cut(scans, frame),
                            Some(0x00 | 0xD0..=0xD7) => i += 2,
                            Some(0xFF) => i += 1,
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

/// Why libjpeg did not give an image.
fn failure(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "libjpeg failed".to_owned())
}

/// Decodes a JPEG to RGB as Pillow's `Image.open(…).convert("RGB")` does: libjpeg-turbo
/// with the accurate integer IDCT and fancy upsampling, grey repeated into each channel,
/// CMYK and YCCK read as CMYK and turned into RGB by Pillow's formula (`cmyk_to_rgb`).
/// `Ok(None)` for a colour space libjpeg does not convert (left to the `image` crate).
/// The caller has checked the header against the limits: `size` is the width and
/// height it read, and a JPEG that libjpeg reads as another size is refused.
///
/// `shrink` (1, 2, 4 or 8) decodes the image at 1/`shrink` of its size, each side
/// rounded up, by libjpeg's DCT scaling: the inverse DCT computes only the low
/// frequencies, and the upsampling and colour conversion run on the smaller image. 1
/// gives Pillow's pixels; the others are for a filter that shrinks the image anyway.
pub fn decode(bytes: &[u8], size: (u32, u32), shrink: u32) -> Result<Option<RgbImage>, String> {
    decode_as(bytes, size, shrink, false, None)?
        .map(|(w, h, pixels)| RgbImage::from_raw(w, h, pixels).ok_or_else(too_few))
        .transpose()
}

/// [`decode`] to grey: the JPEG's own luma (Y), libjpeg skipping the inverse DCT, the
/// upsampling and the colour conversion of the two chroma components (an RGB JPEG is
/// turned grey by libjpeg, BT.601 as Y is). `Ok(None)` for CMYK and YCCK JPEGs (and
/// what [`decode`] leaves to the `image` crate): the caller decodes those to RGB.
pub fn decode_grey(
    bytes: &[u8],
    size: (u32, u32),
    shrink: u32,
) -> Result<Option<GrayImage>, String> {
    decode_as(bytes, size, shrink, true, None)?
        .map(|(w, h, pixels)| GrayImage::from_raw(w, h, pixels).ok_or_else(too_few))
        .transpose()
}

/// The pixels of [`decode_grey`] at full size within `rect` (`[x0, y0, x1, y1)`, in the
/// pixels as stored, before any EXIF orientation): libjpeg decodes the rows down to the
/// rectangle's last, a band of 16 at a time, and only the rectangle's part of them is
/// kept, so the memory is the rectangle's (plus one band) and the rows below it are
/// not decoded. A CMYK or YCCK JPEG's rectangle is decoded to RGB as [`decode`] does and
/// turned grey by `luma`, as the intake turns such a JPEG grey; `Ok(None)` for what
/// [`decode`] leaves to the `image` crate.
pub fn decode_grey_rect(
    bytes: &[u8],
    size: (u32, u32),
    rect: [u32; 4],
    luma: impl FnOnce(&RgbImage) -> GrayImage,
) -> Result<Option<GrayImage>, String> {
    let [x0, y0, x1, y1] = rect;
    if x0 >= x1 || y0 >= y1 || x1 > size.0 || y1 > size.1 {
        return Err(format!(
            "the rectangle {rect:?} is not within the {}×{} image",
            size.0, size.1
        ));
    }
    if let Some((w, h, pixels)) = decode_as(bytes, size, 1, true, Some(rect))? {
        return GrayImage::from_raw(w, h, pixels)
            .ok_or_else(too_few)
            .map(Some);
    }
    decode_as(bytes, size, 1, false, Some(rect))?
        .map(|(w, h, pixels)| {
            let rgb = RgbImage::from_raw(w, h, pixels).ok_or_else(too_few)?;
            Ok(luma(&rgb))
        })
        .transpose()
}

fn too_few() -> String {
    "libjpeg gave fewer pixels than the header says".to_owned()
}

/// The pixels of [`decode`] (`grey`: of [`decode_grey`]) and their width and height;
/// only those within `rect` (checked by the caller to lie within the decoded image) when
/// one is given.
fn decode_as(
    bytes: &[u8],
    size: (u32, u32),
    shrink: u32,
    grey: bool,
    rect: Option<[u32; 4]>,
) -> Result<Option<(u32, u32, Vec<u8>)>, String> {
    if !matches!(shrink, 1 | 2 | 4 | 8) {
        return Err(format!("cannot decode at 1/{shrink} of the size"));
    }
    let ran_out = Cell::new(false);
    let read = catch_unwind(AssertUnwindSafe(
        || -> io::Result<Option<(u32, u32, Vec<u8>)>> {
            let mut d = mozjpeg::Decompress::new_reader(Watched {
                rest: bytes,
                ran_out: &ran_out,
            })?;
            let cmyk = match d.color_space() {
                ColorSpace::JCS_YCbCr | ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_RGB => false,
                ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK if !grey => true,
                _ => return Ok(None),
            };
            let (w, h) = size;
            if d.size() != (w as usize, h as usize) {
                return Err(io::Error::other(format!(
                    "the header says {w}×{h} pixels, libjpeg reads {}×{}",
                    d.width(),
                    d.height()
                )));
            }
            d.scale((8 / shrink) as u8);
            let mut started = if cmyk {
                d.to_colorspace(ColorSpace::JCS_CMYK)?
            } else if grey {
                d.grayscale()?
            } else {
                d.rgb()?
            };
            let (w, h) = (w.div_ceil(shrink), h.div_ceil(shrink));
            if (started.width(), started.height()) != (w as usize, h as usize) {
                return Err(io::Error::other(format!(
                    "libjpeg decodes {}×{} pixels at 1/{shrink}, not {w}×{h}",
                    started.width(),
                    started.height()
                )));
            }
            // Read in bands of 16 rows (an MCU row at most), stopping at the first band
            // after the data ran out: a 2 KB JPEG whose header claims 40 megapixels would
            // otherwise cost the whole image's decoding (~100 ms baseline, ~270 ms
            // progressive, which reads all its scans when it starts) to be refused.
            let px = if cmyk {
                4
            } else if grey {
                1
            } else {
                3
            };
            let row = w as usize * px;
            let (w, h, mut pixels) = match rect {
                None => {
                    let mut pixels = vec![0u8; row * h as usize];
                    for band in pixels.chunks_mut(row * 16) {
                        if ran_out.get() {
                            return Err(io::ErrorKind::UnexpectedEof.into()); // refused below
                        }
                        started.read_scanlines_into(band)?;
                    }
                    (w, h, pixels)
                }
                Some([x0, y0, x1, y1]) => {
                    // The rows down to the rectangle's last, a band at a time, keeping
                    // the rectangle's part of each.
                    let (x0, y0, x1, y1) = (x0 as usize, y0 as usize, x1 as usize, y1 as usize);
                    let mut band = vec![0u8; row * 16];
                    let mut pixels = Vec::with_capacity((x1 - x0) * (y1 - y0) * px);
                    let mut top = 0;
                    while top < y1 {
                        if ran_out.get() {
                            return Err(io::ErrorKind::UnexpectedEof.into()); // refused below
                        }
                        let rows = 16.min(h as usize - top);
                        started.read_scanlines_into(&mut band[..row * rows])?;
                        for y in top.max(y0)..(top + rows).min(y1) {
                            let line = &band[(y - top) * row..][..row];
                            pixels.extend_from_slice(&line[x0 * px..x1 * px]);
                        }
                        top += rows;
                    }
                    ((x1 - x0) as u32, (y1 - y0) as u32, pixels)
                }
            };
            if cmyk {
                pixels = pixels.chunks_exact(4).flat_map(cmyk_to_rgb).collect();
            }
            // The pixels are complete; `finish` (reading on to the end marker) is skipped.
            // A JPEG cut anywhere before its end marker has by now made libjpeg ask past the
            // end of the data (its entropy decoder reads ahead for the next marker), which
            // `ran_out` records: such a file is refused below, as Pillow refuses it. (A
            // rectangle's decoding stops at its last row, before libjpeg may have got that
            // far; the intake's walk over the markers has refused a file cut short first.)
            drop(started);
            Ok(Some((w, h, pixels)))
        },
    ));
    if ran_out.get() {
        // libjpeg ran out of input before the last scanline (and filled the rest in).
        return Err("the data ends before the image does".to_owned());
    }
    match read {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(payload) => Err(failure(payload)),
    }
}

/// One CMYK pixel as libjpeg gives it to RGB, as Pillow does: it reads a CMYK JPEG's
/// values inverted ("CMYK;I", assuming Adobe's convention, which Photoshop and libjpeg
/// itself follow when writing one), then `cmyk2rgb`: R = (255 − K) − C·(255 − K)/255 in
/// its rounding, likewise G from M and B from Y.
fn cmyk_to_rgb(p: &[u8]) -> [u8; 3] {
    let nk = p[3] as i32; // 255 − K, K being the inverted value
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    std::array::from_fn(|c| (nk - muldiv255(255 - p[c] as i32, nk)).clamp(0, 255) as u8)
}

/// JPEG encode (4:2:0, as libjpeg and Pillow do by default) and decode again: Pillow's
/// `save(format="JPEG", quality=…)` and `open`, with libjpeg-turbo's defaults (4:2:0
/// chroma, the IJG tables scaled to `quality`, the integer DCT, fancy upsampling), which
/// `set_fastest_defaults` restores in mozjpeg. The decoded pixels are Pillow's own
/// (`ng_image_pre_processing_is_pillows_to_the_bit`); the encoded bytes were also found
/// equal on retina.jpg's crop (BENCHMARKS.md (d)).
pub fn round_trip(img: &RgbImage, quality: u8) -> Result<RgbImage, String> {
    // None is expected for an RGB image this function made itself, but a libjpeg error
    // must not take the worker down.
    catch_unwind(|| libjpeg_round_trip(img, quality))
        .map_err(|p| format!("JPEG round trip: {}", failure(p)))?
        .map_err(|e| format!("JPEG round trip: {e}"))
}

fn libjpeg_round_trip(img: &RgbImage, quality: u8) -> io::Result<RgbImage> {
    let (w, h) = img.dimensions();
    let mut c = mozjpeg::Compress::new(ColorSpace::JCS_RGB);
    c.set_fastest_defaults();
    c.set_size(w as usize, h as usize);
    c.set_quality(quality as f32);
    c.set_chroma_sampling_pixel_sizes((2, 2), (2, 2));
    let mut c = c.start_compress(Vec::new())?;
    c.write_scanlines(img.as_raw())?;
    let jpeg = c.finish()?;
    let mut d = mozjpeg::Decompress::new_mem(&jpeg)?.rgb()?;
    let px: Vec<u8> = d.read_scanlines()?;
    d.finish()?;
    RgbImage::from_raw(w, h, px)
        .ok_or_else(|| io::Error::other("the decoded JPEG has another size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOI: [u8; 2] = [0xFF, 0xD8];
    const EOI: [u8; 2] = [0xFF, 0xD9];

    fn jpeg(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// Segments are skipped by their lengths (an FF DA inside one is not a scan), a scan's
    /// data runs past stuffed bytes, restart markers and fill bytes to the next marker, and
    /// nothing after the end of the image counts.
    #[test]
    fn the_walk_counts_scans_up_to_the_end_of_the_image() {
        let app = [0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xDA, 0xFF, 0xD9];
        let sos = [0xFF, 0xDA, 0x00, 0x03, 0x01];
        let data = [0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56, 0xFF, 0xDA, 0x00];
        let dht = [0xFF, 0xC4, 0x00, 0x03, 0x00];
        let whole = jpeg(&[
            &SOI,
            &app,
            &sos,
            &data[..7],
            &dht,
            &sos,
            &[0x77, 0xFF, 0xFF],
            &EOI,
        ]);
        let want = Layout {
            scans: 2,
            complete: true,
            frame: None,
        };
        assert_eq!(layout(&whole), want);
        // A video after the end of the image, full of FF DA and no FF D9.
        let mut motion = whole.clone();
        for _ in 0..500 {
            motion.extend_from_slice(&sos);
        }
        assert_eq!(layout(&motion), want);
        // Bytes between segments (libjpeg skips them with a warning).
        let junk = jpeg(&[&SOI, &[0x00, 0x42], &sos, &[0x01], &EOI]);
        assert!(layout(&junk).complete);
        // Cut anywhere before the end marker, the walk says so; a scan header that
        // claims more bytes than there are too.
        for cut in 0..whole.len() - 1 {
            assert!(!layout(&whole[..cut]).complete, "cut at {cut}");
        }
        let long = jpeg(&[&SOI, &[0xFF, 0xDA, 0xFF, 0xFF, 0x01], &EOI]);
        assert!(!layout(&long).complete);
        // An FF DA in a scan's data (which a real one cannot hold) starts another scan,
        // whose header here runs past the end.
        let inner = jpeg(&[&SOI, &sos, &data, &EOI]);
        assert_eq!(
            layout(&inner),
            Layout {
                scans: 2,
                complete: false,
                frame: None,
            }
        );
        // The first frame header is noted, with its precision.
        let sof = |m: u8, p: u8| [0xFF, m, 0x00, 0x08, p, 0x00, 0x10, 0x00, 0x20, 0x00];
        let framed = jpeg(&[&SOI, &dht, &sof(0xC9, 8), &sof(0xC0, 12), &sos, &EOI]);
        assert_eq!(layout(&framed).frame, Some((0xC9, 8)));
        assert_eq!(layout(&framed[..14]).frame, Some((0xC9, 8)));
    }
}
