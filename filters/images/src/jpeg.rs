//! JPEG through libjpeg-turbo (the `mozjpeg` crate, at libjpeg-turbo's defaults): the
//! decoder and encoder Pillow uses, so that a decoded JPEG and open_nsfw's JPEG round trip
//! are byte for byte what the reference pipelines see.
//!
//! libjpeg reports a fatal error by unwinding out of its C code (the crate's error
//! manager); both functions here catch that and return it as an error. Its warnings are
//! silent, as Pillow's are, except the one that matters: input that ends before the last
//! scanline, which libjpeg would fill with grey and Pillow refuses as truncated.

use std::cell::Cell;
use std::io::{self, BufRead, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::RgbImage;
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
/// CMYK and YCCK read as CMYK and turned into RGB by Pillow's formula ([`cmyk_to_rgb`]).
/// `Ok(None)` for a colour space libjpeg does not convert (left to the `image` crate).
/// The caller has checked the header against the limits: `size` is the width and
/// height it read, and a JPEG that libjpeg reads as another size is refused.
pub fn decode(bytes: &[u8], size: (u32, u32)) -> Result<Option<RgbImage>, String> {
    let ran_out = Cell::new(false);
    let read = catch_unwind(AssertUnwindSafe(|| -> io::Result<Option<RgbImage>> {
        let d = mozjpeg::Decompress::new_reader(Watched {
            rest: bytes,
            ran_out: &ran_out,
        })?;
        let cmyk = match d.color_space() {
            ColorSpace::JCS_YCbCr | ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_RGB => false,
            ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => true,
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
        let mut started = if cmyk {
            d.to_colorspace(ColorSpace::JCS_CMYK)?
        } else {
            d.rgb()?
        };
        let mut pixels: Vec<u8> = started.read_scanlines()?;
        if cmyk {
            pixels = pixels.chunks_exact(4).flat_map(cmyk_to_rgb).collect();
        }
        // The pixels are complete; `finish` (reading on to the end marker) is skipped.
        // A JPEG cut anywhere before its end marker has by now made libjpeg ask past the
        // end of the data (its entropy decoder reads ahead for the next marker), which
        // `ran_out` records: such a file is refused below, as Pillow refuses it.
        drop(started);
        RgbImage::from_raw(w, h, pixels)
            .map(Some)
            .ok_or_else(|| io::Error::other("libjpeg gave fewer pixels than the header says"))
    }));
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
