//! Image intake: JPEG, PNG, WebP and GIF (first frame), bytes and pixels checked from the
//! header before anything is decoded (a decompression bomb is refused, not allocated),
//! EXIF orientation applied, grayscale and alpha turned into RGB. [`Intake`] also bounds
//! the pixels a process decodes at once across requests. A filter that shrinks the image
//! anyway can have a large JPEG decoded smaller ([`decode_to_fit`]), and one that reads
//! grey can have it decoded to its own luma ([`decode_grey_to_fit`]).

use std::io::Cursor;
use std::sync::Arc;

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use sekisho_filter_sdk::{FilterError, Input, Payload};
use tokio::sync::Semaphore;

/// What an image filter accepts.
pub const IMAGE_TYPES: &[&str] = &["image/jpeg", "image/png", "image/webp", "image/gif"];

/// [`IMAGE_TYPES`] as a filter's `content_types()`.
pub fn image_types() -> Vec<String> {
    IMAGE_TYPES.iter().map(|s| (*s).to_owned()).collect()
}

#[derive(Debug, Clone)]
pub struct ImageLimits {
    pub max_bytes: usize,
    pub max_pixels: u64,
    pub max_side: u32,
    /// At most this many scans in a JPEG. A progressive JPEG's decoder goes over the
    /// whole image once per scan, so a small file of many tiny scans is a bomb of
    /// decoding time; photos have at most a dozen or so.
    pub max_jpeg_scans: usize,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_bytes: 20 * 1024 * 1024,
            max_pixels: 40_000_000,
            max_side: 16_384,
            max_jpeg_scans: 100,
        }
    }
}

fn invalid(m: impl Into<String>) -> FilterError {
    FilterError::InvalidInput(m.into())
}

/// The width and height [`decode_to_fit`] will decode the image at (the header's, or a
/// JPEG's at 1/2, 1/4 or 1/8), after the same checks (bytes, format, sides and pixels);
/// nothing is decoded.
pub fn decoded_size(
    bytes: &[u8],
    limits: &ImageLimits,
    fit: impl Fn(u32, u32) -> (u32, u32),
) -> Result<(u32, u32), FilterError> {
    let (decoder, format) = checked_decoder(bytes, limits)?;
    let (w, h) = decoder.dimensions();
    let d = match format {
        ImageFormat::Jpeg => dct_shrink((w, h), fit(w, h)),
        _ => 1,
    };
    Ok((w.div_ceil(d), h.div_ceil(d)))
}

/// Decodes the image after the checks of [`decoded_size`]. JPEGs are decoded by
/// libjpeg-turbo, as Pillow does ([`crate::jpeg::decode`]), the rest by the `image` crate.
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, FilterError> {
    Ok(decode_to_fit(bytes, limits, |w, h| (w, h))?.0)
}

/// [`decode`], for a filter that will resize the image to `fit(w, h)` (`w × h` being
/// its size, either way up): a JPEG at least twice that size on both sides is decoded
/// at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, [`crate::jpeg::decode`]), the
/// smallest that still covers it, which takes a fraction of the time and memory. Gives
/// the pixels, and the image's own size, upright (the pixels' may be smaller). Other
/// formats, and a `fit` that keeps the size, give what [`decode`] gives.
pub fn decode_to_fit(
    bytes: &[u8],
    limits: &ImageLimits,
    fit: impl Fn(u32, u32) -> (u32, u32),
) -> Result<(RgbImage, (u32, u32)), FilterError> {
    let (img, size) = decode_upright(bytes, limits, fit, false)?;
    Ok((to_rgb8(img), size))
}

/// [`decode_to_fit`] to grey (ITU-R BT.601 luma): a JPEG's own luma straight from
/// libjpeg, which then skips its chroma's inverse DCT, upsampling and colour conversion
/// ([`crate::jpeg::decode_grey`]; CMYK JPEGs are decoded to RGB first); other formats
/// decoded to RGB and turned grey by [`luma`].
pub fn decode_grey_to_fit(
    bytes: &[u8],
    limits: &ImageLimits,
    fit: impl Fn(u32, u32) -> (u32, u32),
) -> Result<(GrayImage, (u32, u32)), FilterError> {
    let (img, size) = decode_upright(bytes, limits, fit, true)?;
    // Grey already (from libjpeg, or a grey PNG): what `luma` would give for it.
    let grey = match img {
        DynamicImage::ImageLuma8(g) => g,
        other => luma(&to_rgb8(other)),
    };
    Ok((grey, size))
}

/// The grey pixels of `rect` (`[x0, y0, x1, y1)`, in the image's own pixels, upright) at
/// full size, as [`decode_grey_to_fit`] would give them at full size and crop them, after
/// the same checks: for a filter that searched the image smaller and wants a closer
/// look at part of it. A JPEG's rows are decoded down to the rectangle's last only, and
/// only the rectangle is kept ([`crate::jpeg::decode_grey_rect`], the rectangle mapped
/// back through the EXIF orientation to the pixels as stored); other formats are
/// decoded whole and cropped.
pub fn decode_grey_region(
    bytes: &[u8],
    limits: &ImageLimits,
    rect: [u32; 4],
) -> Result<GrayImage, FilterError> {
    let (mut decoder, format) = checked_decoder(bytes, limits)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let stored = decoder.dimensions();
    let upright = upright_size(orientation, stored);
    let [x0, y0, x1, y1] = rect;
    if x0 >= x1 || y0 >= y1 || x1 > upright.0 || y1 > upright.1 {
        return Err(invalid(format!(
            "the region {rect:?} is not within the {}×{} image",
            upright.0, upright.1
        )));
    }
    if format == ImageFormat::Jpeg {
        let within = stored_rect(orientation, rect, stored);
        let part = crate::jpeg::decode_grey_rect(bytes, stored, within, luma)
            .map_err(|e| invalid(format!("the {format:?} image is corrupt or truncated: {e}")))?;
        if let Some(part) = part {
            let mut part = DynamicImage::ImageLuma8(part);
            part.apply_orientation(orientation);
            return Ok(part.into_luma8());
        }
    }
    let (whole, _) = decode_grey_to_fit(bytes, limits, |w, h| (w, h))?;
    Ok(image::imageops::crop_imm(&whole, x0, y0, x1 - x0, y1 - y0).to_image())
}

/// The size of an image stored `w`×`h`, turned upright by `o`.
fn upright_size(o: Orientation, (w, h): (u32, u32)) -> (u32, u32) {
    match o {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (h, w),
        _ => (w, h),
    }
}

/// The rectangle of an image stored `w`×`h` that `o` turns into `rect` of the upright
/// image (`[x0, y0, x1, y1)` both). Upright (X, Y) is stored (x, y) with, for each
/// orientation (`DynamicImage::apply_orientation`'s transforms undone): none (X, Y);
/// flipped horizontally (w−1−X, Y); vertically (X, h−1−Y); turned 180° both; turned 90°
/// clockwise (Y, h−1−X); 270° (w−1−Y, X); 90° and flipped (Y, X); 270° and flipped
/// (w−1−Y, h−1−X). A flip maps [a, b) to [side − b, side − a).
fn stored_rect(o: Orientation, [x0, y0, x1, y1]: [u32; 4], (w, h): (u32, u32)) -> [u32; 4] {
    let flip = |side: u32, a: u32, b: u32| (side - b, side - a);
    let ((sx0, sx1), (sy0, sy1)) = match o {
        Orientation::NoTransforms => ((x0, x1), (y0, y1)),
        Orientation::FlipHorizontal => (flip(w, x0, x1), (y0, y1)),
        Orientation::FlipVertical => ((x0, x1), flip(h, y0, y1)),
        Orientation::Rotate180 => (flip(w, x0, x1), flip(h, y0, y1)),
        Orientation::Rotate90 => ((y0, y1), flip(h, x0, x1)),
        Orientation::Rotate270 => (flip(w, y0, y1), (x0, x1)),
        Orientation::Rotate90FlipH => ((y0, y1), (x0, x1)),
        Orientation::Rotate270FlipH => (flip(w, y0, y1), flip(h, x0, x1)),
    };
    [sx0, sy0, sx1, sy1]
}

/// Each pixel's luma, ITU-R BT.601 weights in 10-bit fixed point, as zxing-cpp turns RGB
/// into grey (grey pixels stay as they are: the weights sum to 1,024).
pub fn luma(img: &RgbImage) -> GrayImage {
    let mut out = vec![0u8; img.width() as usize * img.height() as usize];
    for (o, p) in out.iter_mut().zip(img.as_raw().chunks_exact(3)) {
        let sum = 306 * u32::from(p[0]) + 601 * u32::from(p[1]) + 117 * u32::from(p[2]);
        *o = ((sum + 512) >> 10) as u8;
    }
    GrayImage::from_raw(img.width(), img.height(), out).unwrap_or_default()
}

/// The image decoded (a JPEG by libjpeg, to grey when `grey` and it can) and turned
/// upright, with its own size, upright.
fn decode_upright(
    bytes: &[u8],
    limits: &ImageLimits,
    fit: impl Fn(u32, u32) -> (u32, u32),
    grey: bool,
) -> Result<(DynamicImage, (u32, u32)), FilterError> {
    let (mut decoder, format) = checked_decoder(bytes, limits)?;
    let orientation = decoder.orientation().ok();
    let corrupt = |e: &dyn std::fmt::Display| {
        invalid(format!("the {format:?} image is corrupt or truncated: {e}"))
    };
    let (w, h) = decoder.dimensions();
    let shrink = dct_shrink((w, h), fit(w, h));
    let libjpeg = match format {
        ImageFormat::Jpeg => {
            // To grey where libjpeg can (not CMYK), else to RGB.
            let luma = match grey {
                true => crate::jpeg::decode_grey(bytes, (w, h), shrink).map_err(|e| corrupt(&e))?,
                false => None,
            };
            match luma {
                Some(g) => Some(DynamicImage::ImageLuma8(g)),
                None => crate::jpeg::decode(bytes, (w, h), shrink)
                    .map_err(|e| corrupt(&e))?
                    .map(DynamicImage::ImageRgb8),
            }
        }
        _ => None,
    };
    let mut img = match libjpeg {
        Some(img) => img,
        None => DynamicImage::from_decoder(decoder).map_err(|e| corrupt(&e))?,
    };
    let orientation = orientation.unwrap_or(Orientation::NoTransforms);
    img.apply_orientation(orientation);
    Ok((img, upright_size(orientation, (w, h))))
}

/// The largest of 8, 4 and 2 that `size` can be divided by (sides rounded up) without
/// either side going below `need`, or 1; 1 also when `need` is the size itself.
fn dct_shrink((w, h): (u32, u32), need: (u32, u32)) -> u32 {
    if need == (w, h) {
        return 1;
    }
    [8, 4, 2]
        .into_iter()
        .find(|&d| w.div_ceil(d) >= need.0 && h.div_ceil(d) >= need.1)
        .unwrap_or(1)
}

/// RGB at 8 bits per channel. Grey is repeated into each channel and alpha dropped, as
/// `DynamicImage::to_rgb8` does, but for the 8-bit layouts without its per-pixel trip
/// through `f32` (image 0.25 converts through its colour-space code; a 512×512 grey
/// photo was ~4% of a filter's CPU on the benchmark photos). A 16-bit value keeps its
/// high byte, as Pillow reads 16-bit RGB(A) PNGs and OpenCV every 16-bit image
/// (`to_rgb8` rounds value / 257, 1 more in about a quarter of values); float images
/// take `to_rgb8`.
fn to_rgb8(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let high = |v: u16| (v >> 8) as u8;
    let raw: Vec<u8> = match img {
        DynamicImage::ImageRgb16(c) => c.as_raw().iter().map(|&v| high(v)).collect(),
        DynamicImage::ImageRgba16(c) => c
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [high(p[0]), high(p[1]), high(p[2])])
            .collect(),
        DynamicImage::ImageLuma16(g) => g.as_raw().iter().flat_map(|&v| [high(v); 3]).collect(),
        DynamicImage::ImageLumaA16(g) => g
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| [high(p[0]); 3])
            .collect(),
        DynamicImage::ImageRgb8(rgb) => return rgb,
        DynamicImage::ImageLuma8(g) => g.as_raw().iter().flat_map(|&v| [v, v, v]).collect(),
        DynamicImage::ImageLumaA8(g) => g
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        DynamicImage::ImageRgba8(c) => c
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        other => return other.to_rgb8(),
    };
    RgbImage::from_raw(w, h, raw).expect("3 bytes per pixel")
}

/// A decoder for `bytes` whose header passed the limits.
fn checked_decoder<'a>(
    bytes: &'a [u8],
    limits: &ImageLimits,
) -> Result<(impl ImageDecoder + 'a, ImageFormat), FilterError> {
    if bytes.is_empty() {
        return Err(invalid("the image is empty (0 bytes)"));
    }
    if bytes.len() > limits.max_bytes {
        return Err(invalid(format!(
            "the image is {} bytes; the limit is {}",
            bytes.len(),
            limits.max_bytes
        )));
    }
    let format = image::guess_format(bytes)
        .map_err(|_| invalid("not an image this filter reads (JPEG, PNG, WebP or GIF)"))?;
    if !matches!(
        format,
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif
    ) {
        return Err(invalid(format!(
            "{format:?} images are not read here; send JPEG, PNG, WebP or GIF"
        )));
    }
    if format == ImageFormat::Jpeg {
        // From the markers, before decoding: a JPEG cut short is refused here, as it
        // would be after decoding (a progressive one would first have its whole
        // coefficient buffer allocated and cleared: ~140 ms for a 2 KB file claiming 40
        // megapixels), and so is one with more scans than the limit.
        let layout = crate::jpeg::layout(bytes);
        if !layout.complete {
            return Err(invalid(format!(
                "the {format:?} image is corrupt or truncated: the data ends before the image does"
            )));
        }
        match layout.frame {
            Some((0xC3 | 0xC7 | 0xCB | 0xCF, _)) => {
                return Err(invalid(
                    "lossless JPEGs are not read here; send a baseline or progressive JPEG",
                ));
            }
            Some((0xC5 | 0xC6, _)) => {
                return Err(invalid(
                    "hierarchical (differential) JPEGs are not read here; send a baseline or progressive JPEG",
                ));
            }
            Some((m, _)) if m >= 0xC9 => {
                return Err(invalid(
                    "arithmetic-coded JPEGs are not read here (nor by Pillow); send a Huffman-coded JPEG",
                ));
            }
            Some((_, bits)) if bits != 8 => {
                return Err(invalid(format!(
                    "the JPEG has {bits}-bit samples; only 8-bit JPEGs are read here (as by Pillow)"
                )));
            }
            _ => {}
        }
        if layout.scans > limits.max_jpeg_scans {
            return Err(invalid(format!(
                "the JPEG has {} scans; the limit is {}",
                layout.scans, limits.max_jpeg_scans
            )));
        }
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // The sides and pixels are checked below from the header, with a message that names
    // them; the decoder's own allocation cap is the backstop (RGBA at 16 bits per
    // channel is the widest it allocates, plus slack).
    let mut l = Limits::default();
    l.max_alloc = Some(limits.max_pixels.saturating_mul(8) + (1 << 20));
    reader.limits(l);
    let decoder = reader
        .into_decoder()
        .map_err(|e| invalid(format!("cannot read the {format:?} header: {e}")))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(invalid(format!("the image is {w}×{h} pixels")));
    }
    if w > limits.max_side || h > limits.max_side || u64::from(w) * u64::from(h) > limits.max_pixels
    {
        return Err(invalid(format!(
            "the image is {w}×{h} pixels; the limits are {} per side and {} in all",
            limits.max_side, limits.max_pixels
        )));
    }
    Ok((decoder, format))
}

/// Time an image waited for its share of the decoding budget (seconds; per process).
pub const DECODING_WAIT: &str = "sekisho_filter_decoding_wait_seconds";

/// Parts of an image decoded again at full size ([`Original::grey_region`]: qr-code's
/// closer look at a grid it could not read in a JPEG decoded smaller), by `outcome`:
/// `decoded`, `no_room` (the decoding budget was full at the time), `failed`.
pub const REGION_DECODES: &str = "sekisho_filter_region_decodes_total";

/// Pixels are counted against [`Intake`]'s budget in units of this many.
const UNIT: u64 = 4096;

/// An image filter's intake: the limits on one image, and a budget of pixels being
/// decoded and worked on at once across all requests, so that many large images
/// arriving together wait for each other instead of all being decoded at once (a
/// decoded pixel takes 3 to 10 bytes on the way: RGBA from the decoder, RGB, a rotated
/// copy). An image's share is read from its header; one larger than the whole budget
/// takes all of it. Waiting requests hold only their encoded bytes.
#[derive(Clone)]
pub struct Intake {
    limits: ImageLimits,
    budget: Arc<Semaphore>,
    units: u32,
}

/// The default budget: 64 million pixels (up to ~640 MB in flight, within the Helm
/// chart's 2 GiB filter pods), 128 of the sample photos or five 12-megapixel ones.
pub const DEFAULT_DECODING_PIXELS: u64 = 64_000_000;

impl Default for Intake {
    fn default() -> Self {
        Intake::new(ImageLimits::default(), DEFAULT_DECODING_PIXELS)
    }
}

impl Intake {
    /// An image larger than `decoding_pixels` takes the whole budget: it runs alone.
    pub fn new(limits: ImageLimits, decoding_pixels: u64) -> Self {
        let units = decoding_pixels.div_ceil(UNIT).clamp(1, u32::MAX as u64) as u32;
        metrics::describe_histogram!(
            DECODING_WAIT,
            "Time an image waited for its share of the process's decoding budget (--decoding-pixels)."
        );
        metrics::describe_counter!(
            REGION_DECODES,
            "Parts of an image decoded again at full size for a closer look (qr-code, in a JPEG decoded smaller), by outcome: decoded, no_room (the decoding budget was full), failed."
        );
        Intake {
            limits,
            budget: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    pub fn limits(&self) -> &ImageLimits {
        &self.limits
    }

    /// The budget, in pixels.
    pub fn decoding_pixels(&self) -> u64 {
        self.units as u64 * UNIT
    }

    /// The pixels decoding the item's image for a filter that resizes it to `fit` would
    /// give ([`decoded_size`]: read from its header, within the limits; nothing decoded).
    pub fn pixels_to_fit(
        &self,
        input: &Input,
        fit: impl Fn(u32, u32) -> (u32, u32),
    ) -> Result<u64, FilterError> {
        let (w, h) = decoded_size(image_bytes(input)?, &self.limits, fit)?;
        Ok(u64::from(w) * u64::from(h))
    }

    /// Decodes the item's image once its pixels fit in the budget, and runs `work` on
    /// it; both off the async threads. The pixels count until `work` returns.
    pub async fn with_image<R, F>(&self, input: Input, work: F) -> Result<R, FilterError>
    where
        R: Send + 'static,
        F: FnOnce(RgbImage) -> Result<R, FilterError> + Send + 'static,
    {
        self.with_image_to_fit(input, |w, h| (w, h), |img, _| work(img))
            .await
    }

    /// [`Intake::with_image`] for a filter that resizes the image to `fit(w, h)`: the
    /// image is decoded by [`decode_to_fit`], and `work` is given its pixels and the
    /// image's own size, upright. The budget counts the pixels decoded: a JPEG decoded
    /// at 1/2 takes a quarter of its whole size's share.
    pub async fn with_image_to_fit<R, S, F>(
        &self,
        input: Input,
        fit: S,
        work: F,
    ) -> Result<R, FilterError>
    where
        R: Send + 'static,
        S: Fn(u32, u32) -> (u32, u32) + Send + 'static,
        F: FnOnce(RgbImage, (u32, u32)) -> Result<R, FilterError> + Send + 'static,
    {
        self.with_decoded(input, fit, decode_to_fit, |img, size, _| work(img, size))
            .await
    }

    /// [`Intake::with_image_to_fit`] for a filter that reads grey:
    /// [`decode_grey_to_fit`] in place of [`decode_to_fit`]. `work` is also given the
    /// [`Original`], for a closer look at part of an image it was given smaller.
    pub async fn with_grey_to_fit<R, S, F>(
        &self,
        input: Input,
        fit: S,
        work: F,
    ) -> Result<R, FilterError>
    where
        R: Send + 'static,
        S: Fn(u32, u32) -> (u32, u32) + Send + 'static,
        F: FnOnce(GrayImage, (u32, u32), &Original) -> Result<R, FilterError> + Send + 'static,
    {
        self.with_decoded(input, fit, decode_grey_to_fit, work)
            .await
    }

    /// `work` on the image `decode` gives, within the decoding budget.
    async fn with_decoded<R, S, I, D, F>(
        &self,
        input: Input,
        fit: S,
        decode: D,
        work: F,
    ) -> Result<R, FilterError>
    where
        R: Send + 'static,
        S: Fn(u32, u32) -> (u32, u32) + Send + 'static,
        D: FnOnce(&[u8], &ImageLimits, S) -> Result<(I, (u32, u32)), FilterError> + Send + 'static,
        F: FnOnce(I, (u32, u32), &Original) -> Result<R, FilterError> + Send + 'static,
    {
        let bytes = image_bytes(&input)?;
        let (w, h) = decoded_size(bytes, &self.limits, &fit)?;
        let asked = std::time::Instant::now();
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(self.share(u64::from(w) * u64::from(h)))
            .await
            .map_err(|_| FilterError::Unavailable("the filter is shutting down".into()))?;
        metrics::histogram!(DECODING_WAIT).record(asked.elapsed().as_secs_f64());
        let intake = self.clone();
        tokio::task::spawn_blocking(move || {
            let _pixels = permit;
            let bytes = image_bytes(&input)?;
            let (img, size) = decode(bytes, &intake.limits, fit)?;
            work(
                img,
                size,
                &Original {
                    bytes,
                    intake: &intake,
                },
            )
        })
        .await
        .map_err(|e| FilterError::Internal(e.to_string()))?
    }

    /// The units of the budget `pixels` take: at least one, at most all of them.
    fn share(&self, pixels: u64) -> u32 {
        pixels.div_ceil(UNIT).clamp(1, self.units as u64) as u32
    }
}

/// The encoded image a filter's work was decoded from, for a closer look at part of it.
pub struct Original<'a> {
    bytes: &'a [u8],
    intake: &'a Intake,
}

impl Original<'_> {
    /// The grey pixels of `rect` at full size ([`decode_grey_region`]), when the decoding
    /// budget has room for them now, on top of what the image already holds (`Ok(None)`
    /// when it has not: a closer look is not worth waiting for). A JPEG's region counts
    /// its own pixels, another image all of its pixels (decoded whole to be cropped).
    /// Counted in [`REGION_DECODES`] by outcome.
    pub fn grey_region(&self, rect: [u32; 4]) -> Result<Option<GrayImage>, FilterError> {
        let part = self.region_within_budget(rect);
        let outcome = match &part {
            Ok(Some(_)) => "decoded",
            Ok(None) => "no_room",
            Err(_) => "failed",
        };
        metrics::counter!(REGION_DECODES, "outcome" => outcome).increment(1);
        part
    }

    fn region_within_budget(&self, rect: [u32; 4]) -> Result<Option<GrayImage>, FilterError> {
        let (decoder, format) = checked_decoder(self.bytes, &self.intake.limits)?;
        let (w, h) = decoder.dimensions();
        let [x0, y0, x1, y1] = rect;
        let pixels = match format {
            ImageFormat::Jpeg => {
                u64::from(x1.saturating_sub(x0)) * u64::from(y1.saturating_sub(y0))
            }
            _ => u64::from(w) * u64::from(h),
        };
        let share = self.intake.share(pixels);
        let Ok(_pixels) = self.intake.budget.clone().try_acquire_many_owned(share) else {
            return Ok(None);
        };
        decode_grey_region(self.bytes, &self.intake.limits, rect).map(Some)
    }
}

fn image_bytes(input: &Input) -> Result<&[u8], FilterError> {
    match &input.payload {
        Payload::Data(d) => Ok(d),
        Payload::Text(_) => Err(invalid(
            "this filter reads images; the item is text (send the image bytes in `data`)",
        )),
        Payload::Features(_) => Err(invalid(
            "this filter reads images; the item is a feature vector",
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_pixel(w, h, image::Rgba([10, 20, 30, 128]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn alpha_and_gray_become_rgb() {
        let img = decode(&png(3, 2), &ImageLimits::default()).unwrap();
        assert_eq!(img.dimensions(), (3, 2));
        assert_eq!(img.get_pixel(0, 0).0, [10, 20, 30]);
        let gray = image::GrayImage::from_pixel(2, 2, image::Luma([77]));
        let mut out = Cursor::new(Vec::new());
        gray.write_to(&mut out, ImageFormat::Png).unwrap();
        let img = decode(out.get_ref(), &ImageLimits::default()).unwrap();
        assert_eq!(img.get_pixel(1, 1).0, [77, 77, 77]);
    }

    /// The 8-bit fast paths give exactly what `DynamicImage::to_rgb8` gives.
    #[test]
    fn eight_bit_layouts_become_rgb_as_image_converts_them() {
        let mut seed = 0x2545_f491_u32;
        let mut bytes = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect()
        };
        let (w, h) = (37u32, 23u32);
        let n = (w * h) as usize;
        let images = [
            DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, bytes(n)).unwrap()),
            DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_raw(w, h, bytes(2 * n)).unwrap()),
            DynamicImage::ImageRgba8(image::RgbaImage::from_raw(w, h, bytes(4 * n)).unwrap()),
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, bytes(3 * n)).unwrap()),
        ];
        for img in images {
            let want = img.to_rgb8();
            let got = to_rgb8(img.clone());
            assert_eq!(got.dimensions(), (w, h));
            assert!(got == want, "{:?} converted differently", img.color());
        }
    }

    /// 16-bit values keep their high byte, as Pillow and OpenCV read them: 0x12FF is
    /// 0x12, where `to_rgb8`'s rounding of 0x12FF / 257 gives 0x13.
    #[test]
    fn sixteen_bit_layouts_keep_the_high_byte() {
        let [a, b, c]: [u16; 3] = [0x12FF, 0xFF80, 0x0080];
        let rgb = image::ImageBuffer::from_raw(1, 1, vec![a, b, c]).unwrap();
        let rgba = image::ImageBuffer::from_raw(1, 1, vec![a, b, c, 0x0101]).unwrap();
        let grey = image::ImageBuffer::from_raw(1, 1, vec![a]).unwrap();
        let grey_a = image::ImageBuffer::from_raw(1, 1, vec![b, 0]).unwrap();
        let cases = [
            (DynamicImage::ImageRgb16(rgb), [0x12, 0xFF, 0x00]),
            (DynamicImage::ImageRgba16(rgba), [0x12, 0xFF, 0x00]),
            (DynamicImage::ImageLuma16(grey), [0x12; 3]),
            (DynamicImage::ImageLumaA16(grey_a), [0xFF; 3]),
        ];
        for (img, want) in cases {
            assert_eq!(to_rgb8(img.clone()).as_raw(), &want, "{:?}", img.color());
        }
        let rounded =
            DynamicImage::ImageRgb16(image::ImageBuffer::from_raw(1, 1, vec![a, b, c]).unwrap());
        assert_eq!(
            rounded.to_rgb8().as_raw()[0],
            0x13,
            "image's own rounding differs"
        );
    }

    #[test]
    fn bad_images_are_refused_with_the_reason() {
        let l = ImageLimits::default();
        let msg = |r: Result<RgbImage, FilterError>| r.unwrap_err().to_string();
        assert!(msg(decode(b"", &l)).contains("empty"));
        assert!(msg(decode(b"hello, not an image", &l)).contains("not an image"));
        let mut truncated = png(64, 64);
        truncated.truncate(truncated.len() / 2);
        assert!(msg(decode(&truncated, &l)).contains("corrupt or truncated"));
        // BMP is an image, but not one we read.
        let mut bmp = b"BM".to_vec();
        bmp.resize(64, 0);
        assert!(msg(decode(&bmp, &l)).contains("Bmp images are not read here"));
    }

    /// JPEGs outside the libjpeg-turbo build here are refused from the markers, with
    /// the reason: 12-bit samples, lossless, hierarchical or arithmetic coding (Pillow 11.3
    /// refuses 12-bit and arithmetic-coded ones too; `jpegtran -arithmetic`'s output was
    /// tried). Made by changing an 8-bit baseline JPEG's frame header.
    #[test]
    fn jpegs_of_other_kinds_are_refused_with_the_reason() {
        let img = RgbImage::from_fn(32, 16, |x, y| image::Rgb([x as u8 * 8, y as u8 * 16, 99]));
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 90)
            .encode(img.as_raw(), 32, 16, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let sof = memchr::memmem::find(&jpeg, &[0xFF, 0xC0]).unwrap();
        assert!(decode(&jpeg, &ImageLimits::default()).is_ok());
        for (at, value, why) in [
            (sof + 4, 12, "12-bit samples"),
            (sof + 1, 0xC3, "lossless JPEGs"),
            (sof + 1, 0xC9, "arithmetic-coded"),
            (sof + 1, 0xCA, "arithmetic-coded"),
            (sof + 1, 0xC5, "hierarchical"),
        ] {
            let mut b = jpeg.clone();
            b[at] = value;
            match decode(&b, &ImageLimits::default()) {
                Err(FilterError::InvalidInput(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{why}: {other:?}"),
            }
        }
    }

    /// A JPEG cut short anywhere, even by just its end marker, is refused as Pillow
    /// refuses it ("image file is truncated"), though libjpeg would fill the missing rows
    /// with grey; baseline and progressive alike. Data after the end marker is ignored.
    #[test]
    fn truncated_jpegs_are_refused_even_without_just_their_end_marker() {
        let img = RgbImage::from_fn(96, 64, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x ^ y) * 5) as u8])
        });
        for progressive in [false, true] {
            let mut jpeg = Vec::new();
            let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, 90);
            enc.set_progressive(progressive);
            enc.encode(img.as_raw(), 96, 64, jpeg_encoder::ColorType::Rgb)
                .unwrap();
            assert_eq!(jpeg[jpeg.len() - 2..], [0xFF, 0xD9]);
            let whole = decode(&jpeg, &ImageLimits::default()).unwrap();
            assert_eq!(whole.dimensions(), (96, 64));
            let mut trailing = jpeg.clone();
            trailing.extend_from_slice(b"trailing bytes");
            assert!(decode(&trailing, &ImageLimits::default()).unwrap() == whole);
            for cut in [2, 10, jpeg.len() / 2] {
                let short = &jpeg[..jpeg.len() - cut];
                let e = decode(short, &ImageLimits::default())
                    .unwrap_err()
                    .to_string();
                assert!(
                    e.contains("corrupt or truncated: the data ends before the image does"),
                    "progressive {progressive}, {cut} bytes cut: {e}"
                );
                // The walk over the markers refuses it first; libjpeg's reading, which
                // notes when it asks past the end, would too.
                let e = crate::jpeg::decode(short, (96, 64), 1).unwrap_err();
                assert_eq!(e, "the data ends before the image does", "{cut} bytes cut");
            }
            // A "motion photo": a video after the end of the image, whose bytes hold FF DA
            // (a scan's marker) by chance and no FF D9, is read as the photo alone.
            let mut motion = jpeg.clone();
            let mut s = 7u32;
            motion.extend((0..200_000).map(|_| {
                s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                [0xFF, 0xDA, (s >> 16) as u8, 0xD9][(s >> 24) as usize % 3]
            }));
            assert!(decode(&motion, &ImageLimits::default()).unwrap() == whole);
        }
    }

    /// A progressive JPEG whose last scan is repeated 200 times (each repeat costs the
    /// decoder a pass over the whole image: ~10 ms per scan for 16 MP with Pillow) is
    /// refused from its bytes, before decoding; the original's 10 scans are read.
    #[test]
    fn jpegs_with_too_many_scans_are_refused_before_decoding() {
        let img = RgbImage::from_pixel(64, 48, image::Rgb([120, 130, 140]));
        let mut jpeg = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, 90);
        enc.set_progressive(true);
        enc.encode(img.as_raw(), 64, 48, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let scans = memchr::memmem::find_iter(&jpeg, &[0xFF, 0xDA]).count();
        assert!(scans > 1 && scans <= ImageLimits::default().max_jpeg_scans);
        assert_eq!(decode(&jpeg, &ImageLimits::default()).unwrap().width(), 64);
        let last = memchr::memmem::rfind(&jpeg, &[0xFF, 0xDA]).unwrap();
        let end = jpeg.len() - 2;
        let mut bomb = jpeg[..end].to_vec();
        for _ in 0..200 {
            bomb.extend_from_slice(&jpeg[last..end]);
        }
        bomb.extend_from_slice(&[0xFF, 0xD9]);
        let e = decode(&bomb, &ImageLimits::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "the JPEG has {} scans; the limit is 100",
                scans + 200
            )),
            "{e}"
        );
    }

    #[test]
    fn webp_and_the_first_frame_of_a_gif_are_read() {
        let img = image::RgbImage::from_pixel(5, 4, image::Rgb([200, 10, 10]));
        for format in [ImageFormat::WebP, ImageFormat::Gif] {
            let mut out = Cursor::new(Vec::new());
            image::DynamicImage::ImageRgb8(img.clone())
                .write_to(&mut out, format)
                .unwrap();
            let got = decode(out.get_ref(), &ImageLimits::default()).unwrap();
            assert_eq!(got.dimensions(), (5, 4), "{format:?}");
            let p = got.get_pixel(2, 2).0;
            assert!(p[0] > 150 && p[1] < 60, "{format:?}: {p:?}");
        }
    }

    /// A 4×2 JPEG whose EXIF says "rotate 90° clockwise" (orientation 6) comes out 2×4,
    /// with the left column on top.
    #[test]
    fn exif_orientation_is_applied() {
        let mut px = Vec::new();
        for _y in 0..2 {
            for x in 0..4 {
                px.extend_from_slice(&if x < 2 { [255, 0, 0] } else { [0, 0, 255] });
            }
        }
        // Scale up so that JPEG's 8×8 blocks keep the colours apart.
        let big = image::imageops::resize(
            &image::RgbImage::from_raw(4, 2, px).unwrap(),
            64,
            32,
            image::imageops::FilterType::Nearest,
        );
        let got = decode(&stored_turned_left(&big), &ImageLimits::default()).unwrap();
        assert_eq!(got.dimensions(), (32, 64));
        // Rotated clockwise: the red left half is now the top.
        assert!(
            got.get_pixel(16, 5).0[0] > 200,
            "{:?}",
            got.get_pixel(16, 5)
        );
        assert!(
            got.get_pixel(16, 58).0[2] > 200,
            "{:?}",
            got.get_pixel(16, 58)
        );
    }

    /// A JPEG (quality 95) of `img` whose EXIF orientation (6) says to turn it 90°
    /// clockwise to show it.
    fn stored_turned_left(img: &RgbImage) -> Vec<u8> {
        stored_oriented(img, 6)
    }

    /// A JPEG (quality 95) of `img` with EXIF orientation `o` (1 to 8).
    pub(crate) fn stored_oriented(img: &RgbImage, o: u8) -> Vec<u8> {
        let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01".to_vec();
        exif.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1, 0x00, o, 0, 0]);
        exif.extend_from_slice(&[0, 0, 0, 0]);
        let mut jpeg = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, 95);
        enc.add_app_segment(1, exif).unwrap();
        let (w, h) = (img.width() as u16, img.height() as u16);
        enc.encode(img.as_raw(), w, h, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        jpeg
    }

    /// A region decoded at full size is the crop of the whole image decoded at full size,
    /// in each of the eight EXIF orientations (the rectangle mapped back to the pixels as
    /// stored), for a JPEG (only the rows down to the region's decoded), at the image's
    /// edges, and for every layout the intake reads; one outside the image is refused.
    #[test]
    fn a_region_is_the_crop_of_the_whole_image_in_every_orientation() {
        // 61×37: neither side a multiple of 16, so the last band of rows is short.
        let img = RgbImage::from_fn(61, 37, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 6) as u8, ((x * y) % 251) as u8])
        });
        let l = ImageLimits::default();
        for o in 1..=8u8 {
            let jpeg = stored_oriented(&img, o);
            let (whole, size) = decode_grey_to_fit(&jpeg, &l, |w, h| (w, h)).unwrap();
            let turned = o >= 5;
            assert_eq!(
                size,
                if turned { (37, 61) } else { (61, 37) },
                "orientation {o}"
            );
            let (w, h) = size;
            for rect in [
                [0, 0, w, h],
                [3, 5, 20, 30],
                [w - 7, h - 11, w, h],
                [0, h - 1, 1, h],
            ] {
                let [x0, y0, x1, y1] = rect;
                let part = decode_grey_region(&jpeg, &l, rect).unwrap();
                let want = image::imageops::crop_imm(&whole, x0, y0, x1 - x0, y1 - y0).to_image();
                assert!(part == want, "orientation {o}, {rect:?}");
            }
            for bad in [[0, 0, w + 1, h], [5, 5, 5, 9], [0, 0, 1, h + 1]] {
                let e = decode_grey_region(&jpeg, &l, bad).unwrap_err().to_string();
                assert!(e.contains("not within"), "{e}");
            }
        }
        // Every layout the intake reads (40×24 each): PNG, JPEG progressive, grey and
        // CMYK (its region decoded to RGB and turned grey, as the whole is), WebP, GIF.
        for (name, bytes) in seeds() {
            let Ok((whole, _)) = decode_grey_to_fit(&bytes, &l, |w, h| (w, h)) else {
                continue; // a WebP kind this build of `image` does not read
            };
            for [x0, y0, x1, y1] in [[0, 0, 40, 24], [3, 5, 20, 17], [33, 17, 40, 24]] {
                let part = decode_grey_region(&bytes, &l, [x0, y0, x1, y1]).unwrap();
                let want = image::imageops::crop_imm(&whole, x0, y0, x1 - x0, y1 - y0);
                assert!(part == want.to_image(), "{name}, {:?}", [x0, y0, x1, y1]);
            }
        }
    }

    /// A closer look takes its region's pixels from the budget only if they are free
    /// now: with the budget held by the image itself, none is given, and the region is
    /// given once there is room (a JPEG's region counts its own pixels, not the image's).
    #[tokio::test]
    async fn a_closer_look_is_given_only_when_the_budget_has_room() {
        let img = RgbImage::from_fn(512, 512, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 80)
            .encode(img.as_raw(), 512, 512, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let input = || Input {
            content_type: "image/jpeg".into(),
            payload: Payload::Data(jpeg.clone().into()),
            context: Default::default(),
        };
        // The image decoded at 1/2 takes 16 units (256² pixels); a 128×128 region 4 more.
        for (units, given) in [(16, false), (19, false), (20, true)] {
            let intake = Intake::new(ImageLimits::default(), units * UNIT);
            let got = intake
                .with_grey_to_fit(
                    input(),
                    |w, h| (w / 2, h / 2),
                    |small, _, original| {
                        assert_eq!(small.dimensions(), (256, 256));
                        original.grey_region([100, 200, 228, 328])
                    },
                )
                .await
                .unwrap();
            assert_eq!(got.is_some(), given, "a budget of {units} units");
            if let Some(part) = got {
                assert_eq!(part.dimensions(), (128, 128));
            }
            assert_eq!(intake.budget.available_permits(), units as usize);
        }
    }

    /// An image's share of the decoding budget is the pixels decoded: a JPEG decoded at
    /// 1/4 takes a sixteenth of what it takes decoded whole; a PNG, its whole size.
    #[tokio::test]
    async fn the_budget_counts_the_pixels_decoded() {
        let intake = Intake::new(ImageLimits::default(), 4 << 20);
        let units = intake.units as usize;
        let img = RgbImage::from_fn(1024, 1024, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 80)
            .encode(img.as_raw(), 1024, 1024, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let input = |bytes: &[u8], t: &str| Input {
            content_type: t.into(),
            payload: Payload::Data(bytes.to_vec().into()),
            context: Default::default(),
        };
        for (bytes, t, fit, size, share) in [
            (&jpeg, "image/jpeg", 4, 256, 256 * 256 / UNIT),
            (&jpeg, "image/jpeg", 1, 1024, 1024 * 1024 / UNIT),
            (&png(1024, 1024), "image/png", 4, 1024, 1024 * 1024 / UNIT),
        ] {
            let budget = intake.budget.clone();
            let (w, free) = intake
                .with_image_to_fit(
                    input(bytes, t),
                    move |w, h| (w / fit, h / fit),
                    move |img, _| Ok((img.width(), budget.available_permits())),
                )
                .await
                .unwrap();
            assert_eq!(
                (w, free),
                (size, units - share as usize),
                "{t}, fit 1/{fit}"
            );
        }
        assert_eq!(intake.budget.available_permits(), units);
    }

    /// A JPEG that the filter shrinks anyway is decoded smaller (at 1/2, 1/4 or 1/8,
    /// as small as still covers what it needs), upright, with the photo's own upright
    /// size beside it, and close to the whole decoded photo averaged down; other
    /// formats, and a `fit` that keeps the size, decode whole.
    #[test]
    fn jpegs_are_decoded_only_as_large_as_the_filter_needs() {
        let (w, h) = (200u32, 120u32);
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x + y) as u8, (2 * x) as u8 ^ (y as u8), 255 - y as u8])
        });
        let jpeg = stored_turned_left(&img);
        let limits = ImageLimits::default();
        let whole = decode(&jpeg, &limits).unwrap();
        assert_eq!(whole.dimensions(), (h, w), "turned upright");
        for (need, shrink) in [
            ((w, h), 1),
            ((w - 1, h), 1),
            ((w / 2 + 1, h / 2), 1),
            ((w / 2, h / 2), 2),
            ((w / 3, h / 3), 2),
            ((w / 4, 1), 4),
            ((1, 1), 8),
        ] {
            let (got, size) = decode_to_fit(&jpeg, &limits, |a, b| {
                assert_eq!((a, b), (w, h), "fit is asked with the header's size");
                need
            })
            .unwrap();
            assert_eq!(size, (h, w), "the photo's own size, upright");
            let (sw, sh) = (h.div_ceil(shrink), w.div_ceil(shrink));
            assert_eq!(got.dimensions(), (sw, sh), "need {need:?}");
            // Against the whole photo averaged over shrink × shrink blocks.
            let mut diff = 0u64;
            for (x, y, p) in got.enumerate_pixels() {
                for c in 0..3 {
                    let (mut sum, mut n) = (0u32, 0u32);
                    for yy in y * shrink..((y + 1) * shrink).min(w) {
                        for xx in x * shrink..((x + 1) * shrink).min(h) {
                            sum += whole.get_pixel(xx, yy).0[c] as u32;
                            n += 1;
                        }
                    }
                    diff += (p.0[c] as i64 - (sum / n) as i64).unsigned_abs();
                }
            }
            let mean = diff as f64 / (sw * sh * 3) as f64;
            assert!(mean < 4.0, "1/{shrink}: mean difference {mean}");
            if shrink == 1 {
                assert!(got == whole);
            }
        }
        let (got, size) = decode_to_fit(&png(300, 200), &limits, |_, _| (30, 20)).unwrap();
        assert_eq!((got.dimensions(), size), ((300, 200), (300, 200)));
        assert_eq!(dct_shrink((4000, 3000), (1024, 768)), 2);
        assert_eq!(dct_shrink((4096, 3072), (1024, 768)), 4);
        assert_eq!(dct_shrink((100, 100), (128, 128)), 1);
        assert_eq!(dct_shrink((1, 1), (1, 1)), 1);
    }

    /// Decoded to grey, a JPEG gives libjpeg's own luma, close to the luma of its RGB
    /// decoding (which went from that luma to RGB and back: equal on smooth images, up
    /// to 5 levels off where saturated colours were clamped), upright and at the size
    /// asked; a CMYK JPEG and the other formats give exactly the luma of their RGB.
    #[test]
    fn grey_decoding_is_the_luma_of_the_rgb_one() {
        let limits = ImageLimits::default();
        let same = |a: &GrayImage, b: &GrayImage| -> (f64, u8) {
            assert_eq!(a.dimensions(), b.dimensions());
            let d: Vec<u8> = a
                .iter()
                .zip(b.iter())
                .map(|(x, y)| x.abs_diff(*y))
                .collect();
            let mean = d.iter().map(|&v| f64::from(v)).sum::<f64>() / d.len() as f64;
            (mean, d.into_iter().max().unwrap_or(0))
        };
        for (name, bytes) in seeds() {
            if name.contains("webp") && decode(&bytes, &limits).is_err() {
                continue;
            }
            let (grey, size) = decode_grey_to_fit(&bytes, &limits, |w, h| (w, h)).unwrap();
            let (rgb, rgb_size) = decode_to_fit(&bytes, &limits, |w, h| (w, h)).unwrap();
            assert_eq!(size, rgb_size, "{name}");
            let (mean, max) = same(&grey, &luma(&rgb));
            if name.starts_with("jpeg") && name != "jpeg cmyk" {
                let own = crate::jpeg::decode_grey(&bytes, size, 1).unwrap().unwrap();
                assert!(grey == own, "{name}: libjpeg's luma");
                assert!(mean < 0.6 && max <= 3, "{name}: mean {mean}, max {max}");
            } else {
                assert_eq!(max, 0, "{name}");
            }
        }
        // Upright, and at 1/2 where the filter asks for half. Saturated colours that
        // change every pixel: RGB from 4:2:0 chroma is clamped and rounded, so its luma
        // is not quite the JPEG's own.
        let img = RgbImage::from_fn(200, 120, |x, y| {
            image::Rgb([
                (x * 37 + y * 11) as u8,
                (x * x + 3 * y) as u8,
                255 - (y * 7) as u8,
            ])
        });
        let jpeg = stored_turned_left(&img);
        for need in [(200, 120), (100, 60)] {
            let (grey, size) = decode_grey_to_fit(&jpeg, &limits, |_, _| need).unwrap();
            let (rgb, _) = decode_to_fit(&jpeg, &limits, |_, _| need).unwrap();
            assert_eq!(size, (120, 200));
            assert_eq!(grey.dimensions(), (need.1, need.0));
            let (mean, max) = same(&grey, &luma(&rgb));
            assert!(mean < 0.2 && max <= 8, "{need:?}: mean {mean}, max {max}");
            assert!(
                max > 0,
                "{need:?}: the grey is libjpeg's luma, not the RGB's"
            );
        }
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// An image larger than the whole decoding budget still goes through (alone), and
    /// the budget is whole again afterwards; a refused image takes nothing from it.
    #[tokio::test]
    async fn an_image_larger_than_the_budget_runs_alone() {
        let intake = Intake::new(ImageLimits::default(), 1000);
        assert_eq!(intake.decoding_pixels(), UNIT);
        let input = |bytes: Vec<u8>| Input {
            content_type: "image/png".into(),
            payload: Payload::Data(bytes.into()),
            context: Default::default(),
        };
        let side = intake
            .with_image(input(png(300, 200)), |img| Ok(img.width()))
            .await
            .unwrap();
        assert_eq!(side, 300);
        assert!(intake.with_image(input(vec![]), |_| Ok(())).await.is_err());
        assert_eq!(intake.budget.available_permits(), intake.units as usize);
    }

    /// One small image in each layout the intake reads: PNG (RGB, RGBA, grey, 16-bit),
    /// JPEG (baseline, progressive, grey, CMYK), WebP (lossless from image's encoder; lossy,
    /// lossy with alpha and animated from Pillow, in `testdata/`), GIF (two frames).
    fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        let (w, h) = (40u32, 24u32);
        let rgb = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 10) as u8, ((x + y) * 3) as u8])
        });
        let encode = |img: DynamicImage, format| {
            let mut out = Cursor::new(Vec::new());
            img.write_to(&mut out, format).unwrap();
            out.into_inner()
        };
        let jpeg = |progressive: bool, color, data: &[u8]| {
            let mut out = Vec::new();
            let mut enc = jpeg_encoder::Encoder::new(&mut out, 85);
            enc.set_progressive(progressive);
            enc.encode(data, w as u16, h as u16, color).unwrap();
            out
        };
        let rgb_dyn = DynamicImage::ImageRgb8(rgb.clone());
        let cmyk: Vec<u8> = rgb
            .pixels()
            .flat_map(|p| [255 - p[0], 255 - p[1], 255 - p[2], 0])
            .collect();
        let mut gif = Vec::new();
        {
            let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
            let frame =
                |img: &RgbImage| image::Frame::new(DynamicImage::ImageRgb8(img.clone()).to_rgba8());
            let flipped = image::imageops::flip_vertical(&rgb);
            enc.encode_frames([frame(&rgb), frame(&flipped)]).unwrap();
        }
        vec![
            ("png rgb", encode(rgb_dyn.clone(), ImageFormat::Png)),
            ("png rgba", png(w, h)),
            (
                "png grey",
                encode(
                    DynamicImage::ImageLuma8(rgb_dyn.to_luma8()),
                    ImageFormat::Png,
                ),
            ),
            (
                "png 16-bit",
                encode(
                    DynamicImage::ImageRgb16(rgb_dyn.to_rgb16()),
                    ImageFormat::Png,
                ),
            ),
            (
                "jpeg",
                jpeg(false, jpeg_encoder::ColorType::Rgb, rgb.as_raw()),
            ),
            (
                "jpeg progressive",
                jpeg(true, jpeg_encoder::ColorType::Rgb, rgb.as_raw()),
            ),
            (
                "jpeg grey",
                jpeg(
                    false,
                    jpeg_encoder::ColorType::Luma,
                    rgb_dyn.to_luma8().as_raw(),
                ),
            ),
            (
                "jpeg cmyk",
                jpeg(false, jpeg_encoder::ColorType::Cmyk, &cmyk),
            ),
            ("webp lossless", encode(rgb_dyn, ImageFormat::WebP)),
            (
                "webp lossy",
                include_bytes!("../testdata/lossy.webp").to_vec(),
            ),
            (
                "webp alpha",
                include_bytes!("../testdata/alpha.webp").to_vec(),
            ),
            (
                "webp animated",
                include_bytes!("../testdata/anim.webp").to_vec(),
            ),
            ("gif", gif),
        ]
    }

    /// Damaged images of every layout — bits flipped, bytes set, sizes in headers
    /// overwritten, runs deleted or repeated, the end cut off — are read or refused as
    /// invalid input, never a panic or another kind of error, and what is read stays
    /// within the limits; a region asked of one (a closer look's) has the size asked and,
    /// where the whole image is read too, is its crop. `SEKISHO_MUTATIONS` runs more,
    /// and `SEKISHO_MUTATION_SEEDS` names a directory whose images are used as seeds too
    /// (with libjpeg-turbo decoding JPEGs this was run with 1,000,000 on these and
    /// 100,000 on the sample photos' JPEGs, progressive and CMYK versions of them
    /// included; with regions asked too, 1,000,000 on these and 300,000 on these and
    /// four sample photos' JPEGs, baseline, progressive, CMYK and EXIF-turned).
    #[test]
    fn damaged_images_are_read_or_refused_never_a_panic() {
        let limits = ImageLimits {
            max_pixels: 1_000_000,
            max_side: 4096,
            ..Default::default()
        };
        let mut seeds: Vec<(String, Vec<u8>)> = seeds()
            .into_iter()
            .map(|(name, bytes)| (name.to_owned(), bytes))
            .collect();
        // A JPEG stored as the others are, to be turned 90° clockwise: upright 24×40.
        let rgb = decode(&seeds[0].1, &limits).unwrap();
        seeds.push(("jpeg exif turned".to_owned(), stored_oriented(&rgb, 6)));
        if let Ok(dir) = std::env::var("SEKISHO_MUTATION_SEEDS") {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.display().to_string();
                seeds.push((name, std::fs::read(&path).unwrap()));
            }
        }
        // Each seed's upright size, for the rectangles asked of its damaged copies.
        let sizes: Vec<(u32, u32)> = seeds
            .iter()
            .map(|(name, bytes)| {
                let img = decode(bytes, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
                let (w, h) = img.dimensions();
                assert!(w.max(h) >= 40 && w.min(h) >= 24, "{name}");
                (w, h)
            })
            .collect();
        let rounds: usize = std::env::var("SEKISHO_MUTATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4000);
        let mut s = 0x9E37_79B9_7F4A_7C15_u64;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as usize
        };
        let (mut read, mut refused) = (0, 0);
        for round in 0..rounds {
            let (name, seed) = &seeds[round % seeds.len()];
            let (w, h) = sizes[round % seeds.len()];
            let mut b = seed.clone();
            let mut what = Vec::new();
            for _ in 0..1 + rnd() % 4 {
                if b.is_empty() {
                    break;
                }
                let at = rnd() % b.len();
                let end = |n: usize| (at + n).min(b.len());
                match rnd() % 6 {
                    0 => b[at] ^= 1 << (rnd() % 8),
                    1 => b[at] = [0, 0x7f, 0x80, 0xff, rnd() as u8][rnd() % 5],
                    2 => {
                        let v = [u32::MAX, 0x7fff_ffff, 65_535, 50_000, 0][rnd() % 5];
                        let e = end(4);
                        b[at..e].copy_from_slice(&v.to_be_bytes()[..e - at]);
                    }
                    3 => {
                        let run = b[at..end(1 + rnd() % 64)].to_vec();
                        b.splice(at..at, run);
                    }
                    4 => drop(b.drain(at..end(1 + rnd() % 16))),
                    _ => b.truncate(at),
                }
                what.push(at);
            }
            // A rectangle of the seed's upright size, for a closer look's region.
            let (x0, y0) = ((rnd() % w as usize) as u32, (rnd() % h as usize) as u32);
            let rect = [
                x0,
                y0,
                x0 + 1 + (rnd() % (w - x0) as usize) as u32,
                y0 + 1 + (rnd() % (h - y0) as usize) as u32,
            ];
            // One round in four as a filter that shrinks the image reads it (a JPEG at
            // 1/2, libjpeg's scaled decoding), one as a filter that reads grey does, one
            // as a closer look at a region does (decoding stops at its last row).
            let got = std::panic::catch_unwind(|| match round % 4 {
                0 => decode(&b, &limits).map(|img| img.dimensions()),
                1 => decode_to_fit(&b, &limits, |w, h| (w / 3, h / 3))
                    .map(|(img, _)| img.dimensions()),
                2 => {
                    decode_grey_to_fit(&b, &limits, |w, h| (w, h)).map(|(img, _)| img.dimensions())
                }
                _ => decode_grey_region(&b, &limits, rect).map(|part| {
                    let size = part.dimensions();
                    assert_eq!(size, (rect[2] - rect[0], rect[3] - rect[1]), "{rect:?}");
                    // Where the whole is read too, the region is its crop: the damage
                    // below a region that stops early changes none of its pixels.
                    if let Ok((whole, _)) = decode_grey_to_fit(&b, &limits, |w, h| (w, h)) {
                        let crop =
                            image::imageops::crop_imm(&whole, rect[0], rect[1], size.0, size.1);
                        assert!(part == crop.to_image(), "{rect:?}: not the whole's crop");
                    }
                    size
                }),
            });
            match got {
                Ok(Ok((w, h))) => {
                    read += 1;
                    assert!(
                        w <= limits.max_side && u64::from(w) * u64::from(h) <= limits.max_pixels,
                        "{name}, changed at {what:?}: read as {w}×{h}"
                    );
                }
                Ok(Err(FilterError::InvalidInput(_))) => refused += 1,
                Ok(Err(e)) => panic!("{name}, changed at {what:?}: not invalid input: {e:?}"),
                Err(_) => panic!("{name}, changed at {what:?}: the decoder panicked"),
            }
        }
        // Both outcomes happen: the mutations neither always break nor never touch.
        assert!(
            read > rounds / 10 && refused > rounds / 10,
            "{read} read, {refused} refused"
        );
    }

    /// A PNG whose header claims 50,000 × 50,000 pixels is refused from the header,
    /// before any pixel is allocated.
    #[test]
    fn decompression_bombs_are_refused_from_the_header() {
        let mut p = png(1, 1);
        // IHDR: 8-byte signature, 4-byte length, "IHDR", then width and height.
        p[16..20].copy_from_slice(&50_000u32.to_be_bytes());
        p[20..24].copy_from_slice(&50_000u32.to_be_bytes());
        // A well-formed header: its CRC (over "IHDR" and the 13 data bytes) follows.
        let crc = crc32(&p[12..29]);
        p[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = decode(&p, &ImageLimits::default()).unwrap_err().to_string();
        assert!(e.contains("50000×50000 pixels; the limits are"), "{e}");
        let small = ImageLimits {
            max_pixels: 10,
            ..Default::default()
        };
        let e = decode(&png(4, 4), &small).unwrap_err().to_string();
        assert!(e.contains("4×4 pixels; the limits are"), "{e}");
    }
}
