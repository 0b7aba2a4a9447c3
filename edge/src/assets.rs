//! The single-page app, built by `scripts/build-ui.sh` into `ui/dist`: embedded in
//! release builds, read from disk in debug builds. Paths that are not files get
//! `index.html`, so that the app's own routes survive a reload.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

#[derive(rust_embed::Embed)]
#[folder = "../ui/dist/"]
#[allow_missing = true]
struct Spa;

/// Whether the built app is there to serve.
pub fn built() -> bool {
    Spa::get("index.html").is_some()
}

pub fn serve(path: &str, if_none_match: Option<&HeaderValue>) -> Response {
    let path = path.trim_start_matches('/');
    let (name, file) = match Spa::get(path).filter(|_| !path.is_empty()) {
        Some(f) => (path, f),
        None => {
            let last = path.rsplit('/').next().unwrap_or_default();
            if last.contains('.') {
                return (StatusCode::NOT_FOUND, "not found").into_response();
            }
            match Spa::get("index.html") {
                Some(f) => ("index.html", f),
                None => return not_built(),
            }
        }
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let cache = if name.starts_with("assets/") {
        // Vite puts a content hash in these names.
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    if if_none_match.is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        return Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .header(header::ETAG, etag)
            .header(header::CACHE_CONTROL, cache)
            .body(Body::empty())
            .unwrap_or_default();
    }
    Response::builder()
        .header(header::CONTENT_TYPE, file.metadata.mimetype())
        .header(header::ETAG, etag)
        .header(header::CACHE_CONTROL, cache)
        .body(Body::from(file.data.into_owned()))
        .unwrap_or_default()
}

fn not_built() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>Sekisho</title><p>The web UI is not built: run \
         <code>scripts/build-ui.sh</code> (Node.js and npm), then reload. The APIs under \
         <code>/api/</code> work without it.</p>",
    )
        .into_response()
}
