//! Installs the eBPF toolchain and the test tools, each only when missing.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{cargo, exec, workspace_root},
    image,
};

/// bpf-linker release known to build against the nightly toolchain's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";
/// The kernel crate builds `core` from source and is linted with nightly's clippy.
const NIGHTLY_COMPONENTS: [&str; 2] = ["rust-src", "clippy"];

/// Commands (on PATH, or by absolute path) the tests, demo and benchmarks
/// call, with their Debian package.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("bpftool", "bpftool"),
    ("iperf3", "iperf3"),
    ("iptables", "iptables"),
    // kube-proxy's nftables mode, written for real by the Service tests.
    ("nft", "nftables"),
    // GRO on a host veth, so that it receives in batches (Service tests).
    ("ethtool", "ethtool"),
    ("ipset", "ipset"),
    // Real CNI plugins (ptp, host-local) for the CNI tests; not on PATH.
    ("/usr/lib/cni/ptp", "containernetworking-plugins"),
    // The image: its static binaries (ring's C needs musl's compiler), built
    // into an image without a registry, and run as the DaemonSet runs it
    // (runc: crun refuses this machine's hybrid cgroups).
    ("musl-gcc", "musl-tools"),
    ("buildah", "buildah"),
    ("podman", "podman"),
    ("runc", "runc"),
];

#[derive(clap::Args, Default)]
pub struct Options {}

pub fn run_all() -> Result<()> {
    nightly_components()?;
    bpf_linker()?;
    image_target()?;
    debian_packages()
}

pub fn run(_: &Options) -> Result<()> {
    run_all()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

fn nightly_components() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .context("running rustup (is rustup installed?)")?;
    let listed = String::from_utf8_lossy(&installed.stdout);
    let missing: Vec<&str> =
        NIGHTLY_COMPONENTS.iter().copied().filter(|c| !listed.lines().any(|l| l.starts_with(c))).collect();
    if installed.status.success() && missing.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    if installed.status.success() {
        cmd.args(["component", "add", "--toolchain", NIGHTLY]).args(&missing);
    } else {
        cmd.args(["toolchain", "install", NIGHTLY, "--profile", "minimal", "--component"])
            .arg(NIGHTLY_COMPONENTS.join(","));
    }
    exec(&mut cmd, "installing nightly's rust-src and clippy")
}

/// The standard library of the target the image's binaries are built for.
fn image_target() -> Result<()> {
    let target = image::target(&workspace_root())?;
    let installed =
        Command::new("rustup").args(["target", "list", "--installed"]).current_dir(workspace_root()).output()?;
    if String::from_utf8_lossy(&installed.stdout).lines().any(|l| l == target) {
        return Ok(());
    }
    exec(
        Command::new("rustup").args(["target", "add", &target]).current_dir(workspace_root()),
        &format!("installing the {target} standard library"),
    )
}

/// bpf-linker's prebuilt binaries cannot be downloaded here, so it is built
/// against the nightly toolchain's own libLLVM.
fn bpf_linker() -> Result<()> {
    if Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    let sysroot = Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]).output()?;
    if !sysroot.status.success() {
        bail!("rustc +{NIGHTLY} --print sysroot failed");
    }
    let lib = PathBuf::from(String::from_utf8(sysroot.stdout)?.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let prefix = PathBuf::from(std::env::var("HOME").context("HOME not set")?).join(".local/rust-llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    exec(
        cargo()
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", &prefix)
            .env("RUSTFLAGS", format!("-C link-arg=-Wl,-rpath,{}", lib.display())),
        "building bpf-linker against nightly's libLLVM",
    )
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> =
        PACKAGES.iter().filter(|(bin, _)| which::which(bin).is_err()).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    exec(Command::new("apt-get").args(["update", "-q"]), "apt-get update")?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("installing {}", missing.join(" ")),
    )
}
