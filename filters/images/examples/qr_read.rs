//! The qr-code filter's reader on image files, for `scripts/bench-qr.sh`: one JSON line
//! per file with the texts read, the codes found (read or not), the time of the search
//! on one thread (`ms`, a closer look's decoding of part of the file included) and of decoding the file to grey as the filter decodes it
//! (`decode_ms`: a large JPEG decoded smaller, a JPEG to its own luma), the fastest of
//! three each; `error` where the filter refuses the image (too many finder-pattern
//! look-alikes to search them all), counted as nothing found.
//!
//!   cargo run --release -p sekisho-filters-images --example qr_read -- IMAGE...
//!
//! `QR_MAX_SIDE=N` sets the config's `max_side`, `QR_FORMATS=qr,micro-qr,rmqr` its
//! `formats`; `QR_DECODE=rgb` decodes to RGB and then to grey, as the filter did before
//! it decoded JPEGs to grey.

use sekisho_filters_images::intake::{self, ImageLimits};
use sekisho_filters_images::qr::{self, QrConfig};

fn main() {
    let mut cfg = QrConfig::default();
    if let Some(side) = std::env::var("QR_MAX_SIDE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.max_side = side;
    }
    if let Ok(formats) = std::env::var("QR_FORMATS") {
        let list = format!("{:?}", formats.split(',').collect::<Vec<_>>());
        cfg.formats = serde_json::from_str(&list).expect("QR_FORMATS: qr, micro-qr, rmqr");
    }
    let rgb_first = std::env::var("QR_DECODE").is_ok_and(|v| v == "rgb");
    for path in std::env::args().skip(1) {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // As the filter decodes it: a large JPEG at the size the search runs at.
        let fit = |w, h| qr::search_size(w, h, &cfg);
        let limits = ImageLimits::default();
        let decode = || match rgb_first {
            true => intake::decode_to_fit(&bytes, &limits, fit)
                .map(|(img, size)| (intake::luma(&img), size)),
            false => intake::decode_grey_to_fit(&bytes, &limits, fit),
        };
        let mut decode_ms = f64::MAX;
        let mut decoded = None;
        for _ in 0..3 {
            let start = std::time::Instant::now();
            decoded = Some(decode().unwrap_or_else(|e| panic!("{path}: {e}")));
            decode_ms = decode_ms.min(start.elapsed().as_secs_f64() * 1e3);
        }
        let Some((img, size)) = decoded else { continue };
        let mut ms = f64::MAX;
        let mut found = Ok(vec![]);
        for _ in 0..3 {
            let start = std::time::Instant::now();
            // A closer look at part of the photo decodes it from the file, as the filter does.
            let original = |rect| intake::decode_grey_region(&bytes, &limits, rect).ok();
            found = qr::find(&img, size, &cfg, original);
            ms = ms.min(start.elapsed().as_secs_f64() * 1e3);
        }
        // The filter's refusal (an image it could not search to the end) is a result too.
        let line = match found {
            Ok(found) => {
                let texts: Vec<_> = found.iter().filter_map(|f| f.text.as_deref()).collect();
                serde_json::json!({
                    "texts": texts, "found": found.len(), "ms": ms, "decode_ms": decode_ms,
                })
            }
            Err(e) => serde_json::json!({
                "texts": [], "found": 0, "error": e.to_string(), "ms": ms, "decode_ms": decode_ms,
            }),
        };
        println!("{line}");
    }
}
