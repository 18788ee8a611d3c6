use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    run("ip", args).map(drop)
}

/// Runs `ip` with `args` and returns its stdout.
pub fn ip_output(args: &[&str]) -> Result<String> {
    run("ip", args).map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `tc` with `args`, failing with its stderr.
pub fn tc(args: &[&str]) -> Result<()> {
    run("tc", args).map(drop)
}

/// Runs iproute2's `program` with `args`.
fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running `{program}` (install iproute2: `cargo xtask setup`)"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}
