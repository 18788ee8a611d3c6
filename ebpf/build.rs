use which::which;

/// Rebuild when bpf-linker changes: cargo cannot see it as an input otherwise.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found; run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
