//! Generates Rust code and one descriptor set from `proto/`. protoc comes from the
//! `protoc-bin-vendored` crate, so a build needs nothing but crates.io.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY-free: build scripts are single-threaded when this runs.
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // `set_var` is unsafe in edition 2024 only because of other threads; there are none.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("PROTOC", protoc);
        }
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "sekisho/filter/v1/filter.proto",
        "sekisho/gateway/v1/gateway.proto",
        "sekisho/chainstore/v1/chainstore.proto",
        "sekisho/aggregator/v1/aggregator.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=google");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("sekisho_descriptor.bin"))
        // Image bytes are shared, never copied, when a filter call is retried.
        .bytes(".")
        .codec_path("crate::codec::StrictCodec")
        .compile_protos(&protos, &["."])?;
    Ok(())
}
