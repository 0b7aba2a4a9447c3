// The SPA in ../ui/dist is embedded in release builds (debug builds read it from disk):
// rebuild when it changes, files added or removed included.
fn main() {
    println!("cargo:rerun-if-changed=../ui/dist");
}
