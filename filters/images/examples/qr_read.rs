//! The qr-code filter's reader on image files, for `scripts/bench-qr.sh`: one JSON line
//! per file with the texts read, the codes found (read or not) and the time of the search
//! on one thread, the fastest of three (decoding the file not included; a large JPEG is
//! decoded smaller, as the filter decodes it).
//!
//!   cargo run --release -p sekisho-filters-images --example qr_read -- IMAGE...
//!
//! `QR_MAX_SIDE=N` sets the config's `max_side`, `QR_FORMATS=qr,micro-qr,rmqr` its
//! `formats`.

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
    for path in std::env::args().skip(1) {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // As the filter decodes it: a large JPEG at the size the search runs at.
        let fit = |w, h| qr::search_size(w, h, &cfg);
        let (img, size) = intake::decode_grey_to_fit(&bytes, &ImageLimits::default(), fit)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut ms = f64::MAX;
        let mut found = vec![];
        for _ in 0..3 {
            let start = std::time::Instant::now();
            found = qr::find(&img, size, &cfg).unwrap_or_else(|e| panic!("{path}: {e}"));
            ms = ms.min(start.elapsed().as_secs_f64() * 1e3);
        }
        let texts: Vec<_> = found.iter().filter_map(|f| f.text.as_deref()).collect();
        let line = serde_json::json!({"texts": texts, "found": found.len(), "ms": ms});
        println!("{line}");
    }
}
