//! Rebuilds the crate when a dashboard file under `ui/` is added, changed
//! or removed (the files are embedded in the binary).
fn main() {
    println!("cargo:rerun-if-changed=ui");
}
