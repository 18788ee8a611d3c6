use std::path::Path;

use aya_build::{Package, Toolchain};

/// Compiles the kernel crate for bpfel-unknown-none with nightly so the agent
/// can embed the object (`cargo xtask setup` installs what this needs), and
/// the gRPC services from their protos (protox: no protoc needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protos = ["npbackend.proto", "sandboxes.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let descriptors = protox::compile(protos, [manifest.join("proto")])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;

    // aya-build reruns this for changes under the kernel crate; the ABI
    // crate it builds against is not under it (and not a build-dependency
    // here, which would build it for the host), so a change there alone
    // would leave a stale object embedded.
    println!("cargo:rerun-if-changed={}", manifest.join("../common").display());
    let root_dir = manifest.join("../ebpf");
    let root_dir = root_dir.to_str().expect("workspace path is UTF-8");
    aya_build::build_ebpf([Package { name: "na-ebpf", root_dir, ..Default::default() }], Toolchain::default())?;
    Ok(())
}
