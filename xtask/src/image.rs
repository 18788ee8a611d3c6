//! `cargo xtask image`: the DaemonSet's image, built on this machine without
//! a registry. What goes in is deploy/Dockerfile's last stage, read from
//! the file: its binaries are built here (static, musl) instead of in the
//! build stage, and buildah builds the stage from them.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{cargo, exec, workspace_root},
    setup,
};

/// Where the build stage of deploy/Dockerfile leaves the binaries it builds.
const BUILD_STAGE_OUT: &str = "/src/target/";

#[derive(clap::Args, Default)]
pub struct Options {}

pub fn run(_: &Options) -> Result<()> {
    setup::run_all()?;
    let archive = build()?;
    println!("{}", archive.display());
    Ok(())
}

/// Where `cargo xtask image` writes the image, as an OCI archive.
pub fn archive_path() -> PathBuf {
    workspace_root().join("target/image/na-agent.oci.tar")
}

/// Builds the binaries and the image; returns the archive's path.
pub fn build() -> Result<PathBuf> {
    let root = workspace_root();
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).context("reading deploy/Dockerfile")?;
    let stage = FinalStage::parse(&dockerfile)?;
    let mut build = cargo();
    build.args(["build", "--release", "--locked", "--package", "na-agent", "--target", &stage.target]);
    for binary in &stage.binaries {
        build.args(["--bin", binary]);
    }
    exec(&mut build, "building the image's binaries (static, musl)")?;

    let context = root.join("target/image/context");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context)?;
    for binary in &stage.binaries {
        let built = root.join("target").join(&stage.target).join("release").join(binary);
        std::fs::copy(&built, context.join(binary)).with_context(|| format!("copying {}", built.display()))?;
    }
    std::fs::write(context.join("Containerfile"), &stage.containerfile)?;

    let tag = format!("localhost/na-agent:{}", env!("CARGO_PKG_VERSION"));
    let archive = archive_path();
    let _ = std::fs::remove_file(&archive);
    exec(
        std::process::Command::new("buildah")
            .args(["bud", "--quiet", "--isolation", "chroot", "--layers=false", "--force-rm", "--tag", &tag, "--file"])
            .arg(context.join("Containerfile"))
            .arg(&context),
        "building the image (buildah)",
    )?;
    let pushed = exec(
        std::process::Command::new("buildah")
            .args(["push", "--quiet", &tag])
            .arg(format!("oci-archive:{}:{tag}", archive.display())),
        "writing the OCI archive",
    );
    // The archive is the product: nothing stays in the machine's image store.
    let _ = std::process::Command::new("buildah").args(["rmi", &tag]).output();
    pushed?;
    Ok(archive)
}

/// deploy/Dockerfile's last stage, rewritten to copy from a local context.
#[derive(Debug, PartialEq)]
struct FinalStage {
    /// The Rust target the build stage builds for.
    target: String,
    /// The binaries it copies from the build stage.
    binaries: Vec<String>,
    /// The stage, copying them from the build context instead.
    containerfile: String,
}

impl FinalStage {
    fn parse(dockerfile: &str) -> Result<Self> {
        let lines: Vec<&str> = dockerfile.lines().collect();
        let from = lines.iter().rposition(|l| l.starts_with("FROM ")).context("deploy/Dockerfile has no FROM")?;
        let (mut target, mut binaries, mut containerfile) = (None, Vec::new(), String::new());
        for line in &lines[from..] {
            let Some(rest) = line.strip_prefix("COPY --from=build ") else {
                if line.starts_with("COPY ") || line.starts_with("ADD ") {
                    bail!("deploy/Dockerfile: the last stage may only copy from the build stage: {line}");
                }
                containerfile.push_str(line);
                containerfile.push('\n');
                continue;
            };
            let (source, dest) = rest.split_once(' ').with_context(|| format!("deploy/Dockerfile: {line}"))?;
            let built = source
                .strip_prefix(BUILD_STAGE_OUT)
                .and_then(|p| p.split_once("/release/"))
                .filter(|(_, bin)| !bin.contains('/'))
                .with_context(|| format!("deploy/Dockerfile: {source} is not a binary of the build stage"))?;
            if target.get_or_insert(built.0) != &built.0 {
                bail!("deploy/Dockerfile: binaries of two targets ({} and {})", target.unwrap_or_default(), built.0);
            }
            containerfile.push_str(&format!("COPY {} {}\n", built.1, dest.trim()));
            binaries.push(built.1.to_owned());
        }
        let target = target.context("deploy/Dockerfile: the last stage copies no binary")?.to_owned();
        Ok(Self { target, binaries, containerfile })
    }
}

/// The Rust target deploy/Dockerfile builds the image's binaries for (setup
/// installs its standard library).
pub fn target(root: &Path) -> Result<String> {
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile"))?;
    Ok(FinalStage::parse(&dockerfile)?.target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_stage_copies_from_the_local_context() {
        let stage = FinalStage::parse(
            "FROM rust AS build\nCOPY . .\nRUN cargo build\n\nFROM scratch\n\
             COPY --from=build /src/target/x86_64-unknown-linux-musl/release/na-agent /usr/local/bin/na-agent\n\
             ENTRYPOINT [\"/usr/local/bin/na-agent\"]\n",
        )
        .unwrap();
        assert_eq!(stage.target, "x86_64-unknown-linux-musl");
        assert_eq!(stage.binaries, ["na-agent"]);
        assert_eq!(
            stage.containerfile,
            "FROM scratch\nCOPY na-agent /usr/local/bin/na-agent\nENTRYPOINT [\"/usr/local/bin/na-agent\"]\n"
        );
    }

    #[test]
    fn refuses_what_it_cannot_build_here() {
        for last in ["COPY config.yaml /etc/", "COPY --from=build /usr/bin/curl /bin/", "ADD x /"] {
            let err = FinalStage::parse(&format!("FROM scratch\n{last}\n")).unwrap_err();
            assert!(err.to_string().contains("deploy/Dockerfile"), "{last}: {err}");
        }
    }

    #[test]
    fn reads_the_projects_dockerfile() {
        let root = workspace_root();
        let stage = FinalStage::parse(&std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap()).unwrap();
        assert_eq!(stage.binaries, ["na-agent", "na-cli", "na-cni"]);
        assert!(stage.containerfile.starts_with("FROM scratch\n"), "{}", stage.containerfile);
    }
}
