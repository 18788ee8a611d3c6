//! `cargo xtask demo`: pods as network namespaces, the programs loaded on
//! their veths, and a probe matrix as the policy tightens.
#[path = "../tests/support/mod.rs"]
mod support;

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, process::Command};

use anyhow::{Context, Result};
use ipnet::IpNet;
use na_agent::datapath::{AttachMode, DirectionRules, Mode, PodRules};
use na_common::{policy::PortRule, protocol::TCP};
use na_harness::{Family, Probe, matrix, render};
use support::Env;

const PODS: [(&str, &str); 3] = [("shop", "frontend"), ("shop", "backend"), ("tools", "debug")];

fn main() -> Result<()> {
    let mut env = Env::with_pods(AttachMode::Auto, &PODS)?;
    let probe = Probe::tcp(80);
    for pod in env.node.pods() {
        println!("pod {:<14} ip {:<12} host veth {}", pod.key(), pod.ip, pod.host_veth);
    }
    show(&env, probe, "1. no programs attached", &[])?;

    let mut backend = None;
    for (namespace, name) in PODS {
        let maps = env.attach(&format!("{namespace}/{name}"), &PodRules::default())?;
        if name == "backend" {
            backend = Some(maps);
        }
    }
    let mut backend = backend.context("backend pod missing")?;
    show(&env, probe, "2. programs on every veth, default allow", &[])?;

    backend.apply(&PodRules { ingress: isolated(BTreeMap::new()), ..Default::default() })?;
    let all_to_backend = [("shop/frontend", "shop/backend"), ("tools/debug", "shop/backend")];
    show(&env, probe, "3. shop/backend isolated for ingress, no rules (deny all)", &all_to_backend)?;

    let frontend = IpNet::from(IpAddr::V4(env.pod("shop/frontend").ip));
    backend.apply(&PodRules {
        ingress: isolated(BTreeMap::from([(frontend, vec![PortRule::ports(1, TCP, 80, 80)])])),
        ..Default::default()
    })?;
    show(&env, probe, "4. shop/backend allows TCP/80 from shop/frontend only", &all_to_backend[1..])?;

    println!("\n== na-cli ebpf loaded-ebpfdata");
    let out = Command::new(na_cli()?)
        .args(["ebpf", "loaded-ebpfdata", "--bpffs-root"])
        .arg(env.root())
        .output()
        .context("running na-cli")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "na-cli failed: {}", out.status);
    let listed = String::from_utf8_lossy(&out.stdout).matches("PinPath:").count();
    anyhow::ensure!(listed == 2 * PODS.len(), "na-cli listed {listed} programs, expected {}", 2 * PODS.len());
    println!("Demo checks passed. Cleaning up: namespaces, veths and pins go with the demo.");
    Ok(())
}

fn isolated(entries: BTreeMap<IpNet, Vec<PortRule>>) -> DirectionRules {
    DirectionRules { mode: Mode::PoliciesApplied, entries }
}

/// Prints the probe matrix and fails unless exactly the `blocked` (from, to)
/// pairs were blocked.
fn show(env: &Env, probe: Probe, title: &str, blocked: &[(&str, &str)]) -> Result<()> {
    println!("\n== {title}: {probe} from row to column ('.' reached, 'X' blocked)");
    let observed = matrix(&env.node, probe, Family::V4)?;
    print!("{}", render(&env.node, &observed));
    let pods = env.node.pods();
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            let want_blocked = blocked.contains(&(from.key().as_str(), to.key().as_str()));
            if let Some(reached) = observed[i][j] {
                anyhow::ensure!(
                    reached != want_blocked,
                    "{} -> {}: expected {}",
                    from.key(),
                    to.key(),
                    if want_blocked { "blocked" } else { "reached" }
                );
            }
        }
    }
    Ok(())
}

/// `na-cli` from the same target directory as this example.
fn na_cli() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("NA_CLI") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(|p| p.parent()).context("example has no target directory")?;
    Ok(dir.join("na-cli"))
}
