use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    run(args).map(drop)
}

/// Runs `ip` with `args` and returns its stdout.
pub fn ip_output(args: &[&str]) -> Result<String> {
    run(args).map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(args: &[&str]) -> Result<Output> {
    let out = Command::new("ip").args(args).output().context("running `ip` (install iproute2: `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}
