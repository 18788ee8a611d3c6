use std::path::Path;

use aya_build::{Package, Toolchain};

/// Compiles the kernel crate for bpfel-unknown-none with nightly so the agent
/// can embed the object; `cargo xtask setup` installs what this needs.
fn main() -> aya_build::Result<()> {
    let root_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf");
    let root_dir = root_dir.to_str().expect("workspace path is UTF-8");
    aya_build::build_ebpf([Package { name: "na-ebpf", root_dir, ..Default::default() }], Toolchain::default())
}
