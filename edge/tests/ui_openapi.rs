//! The UI's API client is generated from `ui/openapi/*.json` (in `npm run build`); those
//! documents must be what the gateway and the chainstore serve at `/openapi.json`.
//! `SEKISHO_BLESS=1 cargo test -p sekisho-edge --test ui_openapi` rewrites them.

use std::path::PathBuf;

#[test]
fn the_ui_openapi_documents_match_the_servers() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ui/openapi");
    let bless = std::env::var_os("SEKISHO_BLESS").is_some();
    for (file, service, title) in [
        (
            "gateway.json",
            "sekisho.gateway.v1.Gateway",
            "Sekisho gateway",
        ),
        (
            "chainstore.json",
            "sekisho.chainstore.v1.ChainStore",
            "Sekisho chainstore",
        ),
    ] {
        let routes =
            sekisho_jsonproxy::routes(sekisho_proto::descriptor_pool(), &[service]).unwrap();
        let doc = sekisho_jsonproxy::openapi(&routes, title, env!("CARGO_PKG_VERSION"));
        let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
        let path = dir.join(file);
        if bless {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == text,
            "{} is not what the {title} serves: run `SEKISHO_BLESS=1 cargo test -p sekisho-edge --test ui_openapi` and rebuild the UI",
            path.display()
        );
    }
}
