//! `cargo xtask demo`: pods as network namespaces, NetworkPolicies compiled
//! and written into each pod's maps, and a probe matrix after every step.
#[path = "../tests/support/mod.rs"]
mod support;

use std::{net::IpAddr, path::PathBuf, process::Command};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::{core::v1::Pod, networking::v1::NetworkPolicy};
use na_agent::{
    datapath::{AttachMode, PodMaps, PodRules},
    pod_id::PodId,
};
use na_harness::{Family, NODE_IP, Probe, matrix, render};
use na_policy::{CompileOptions, Compiler, ObjectRef};
use serde_json::json;
use support::Env;

const NODE: &str = "demo-node";
const PODS: [(&str, &str); 3] = [("shop", "frontend"), ("shop", "backend"), ("tools", "debug")];

const DENY_ALL: &str = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
  "metadata": {"name": "default-deny-ingress", "namespace": "shop"},
  "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}"#;

const ALLOW_FRONTEND: &str = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
  "metadata": {"name": "backend-from-frontend", "namespace": "shop"},
  "spec": {"podSelector": {"matchLabels": {"app": "backend"}},
           "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}],
                        "ports": [{"protocol": "TCP", "port": 80}]}]}}"#;

/// The demo's node, its policy compiler and each pod's maps.
struct Demo {
    env: Env,
    compiler: Compiler,
    maps: Vec<(ObjectRef, PodMaps)>,
}

fn main() -> Result<()> {
    let env = Env::with_pods(AttachMode::Auto, &PODS)?;
    let mut compiler = Compiler::new(CompileOptions {
        node_name: NODE.into(),
        node_ips: vec![IpAddr::V4(NODE_IP)],
        allow_node: true,
        strict: false,
    });
    for pod in env.node.pods() {
        println!("pod {:<14} ip {:<12} {:<12} host veth {}", pod.key(), pod.ip, pod.ip6, pod.host_veth);
        compiler.upsert_pod(&pod_object(&pod.namespace, &pod.name, pod.ip.into(), pod.ip6.into())?);
    }
    let mut demo = Demo { env, compiler, maps: Vec::new() };
    let probe = Probe::tcp(80);
    demo.show(probe, "1. no programs attached", &[])?;

    demo.attach_all()?;
    demo.show(probe, "2. programs on every veth, no NetworkPolicy: everything open", &[])?;

    let into_shop = [
        ("shop/backend", "shop/frontend"),
        ("tools/debug", "shop/frontend"),
        ("shop/frontend", "shop/backend"),
        ("tools/debug", "shop/backend"),
    ];
    demo.apply_policy(DENY_ALL)?;
    demo.show(probe, "3. NetworkPolicy shop/default-deny-ingress", &into_shop)?;

    demo.apply_policy(ALLOW_FRONTEND)?;
    let still_blocked = [into_shop[0], into_shop[1], into_shop[3]];
    demo.show(probe, "4. + NetworkPolicy shop/backend-from-frontend (TCP/80)", &still_blocked)?;
    let other_port = demo.reaches("shop/frontend", "shop/backend", Probe::tcp(81), Family::V4)?;
    let over_v6 = demo.reaches("shop/frontend", "shop/backend", probe, Family::V6)?;
    println!("   shop/frontend -> shop/backend TCP/81: {}", verdict(other_port));
    println!("   shop/frontend -> shop/backend TCP/80 over IPv6: {}", verdict(over_v6));
    ensure!(!other_port && over_v6, "TCP/81 must be blocked and IPv6 TCP/80 allowed");

    println!("\n== na-cli ebpf loaded-ebpfdata");
    let out = Command::new(na_cli()?)
        .args(["ebpf", "loaded-ebpfdata", "--bpffs-root"])
        .arg(demo.env.root())
        .output()
        .context("running na-cli")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "na-cli failed: {}", out.status);
    let listed = String::from_utf8_lossy(&out.stdout).matches("PinPath:").count();
    ensure!(listed == 2 * PODS.len(), "na-cli listed {listed} programs, expected {}", 2 * PODS.len());
    println!("Demo checks passed. Cleaning up: namespaces, veths and pins go with the demo.");
    Ok(())
}

impl Demo {
    /// Loads every pod's programs with its compiled rules, then attaches them.
    fn attach_all(&mut self) -> Result<()> {
        for (key, rules) in self.compiler.compile_all() {
            let maps = self.env.attach(&key.to_string(), &rules?)?;
            self.maps.push((key, maps));
        }
        self.compiler.take_dirty();
        Ok(())
    }

    /// Adds a policy and rewrites exactly the pods it changes.
    fn apply_policy(&mut self, manifest: &str) -> Result<()> {
        let policy: NetworkPolicy = serde_json::from_str(manifest)?;
        println!("\n{}", serde_json::to_string(&policy.spec)?);
        self.compiler.upsert_policy(&policy)?;
        let dirty = self.compiler.take_dirty();
        for (key, rules) in self.compiler.compile(&dirty) {
            let rules: PodRules = rules?;
            let (_, maps) = self.maps.iter_mut().find(|(k, _)| *k == key).context("pod not attached")?;
            maps.apply(&rules)?;
            println!("   rewrote {} ({})", key, PodId::new(&key.namespace, &key.name));
        }
        Ok(())
    }

    fn reaches(&self, from: &str, to: &str, probe: Probe, family: Family) -> Result<bool> {
        let (from, to) = (self.env.pod(from), self.env.pod(to));
        probe.run(from, family.of(to))
    }

    /// Prints the probe matrix and fails unless exactly the `blocked`
    /// (from, to) pairs were blocked.
    fn show(&self, probe: Probe, title: &str, blocked: &[(&str, &str)]) -> Result<()> {
        println!("\n== {title}: {probe} from row to column ('.' reached, 'X' blocked)");
        let node = &self.env.node;
        let observed = matrix(node, probe, Family::V4)?;
        print!("{}", render(node, &observed));
        for (i, from) in node.pods().iter().enumerate() {
            for (j, to) in node.pods().iter().enumerate() {
                let want_blocked = blocked.contains(&(from.key().as_str(), to.key().as_str()));
                if let Some(reached) = observed[i][j] {
                    ensure!(
                        reached != want_blocked,
                        "{} -> {}: expected {}",
                        from.key(),
                        to.key(),
                        verdict(!want_blocked)
                    );
                }
            }
        }
        Ok(())
    }
}

fn verdict(reached: bool) -> &'static str {
    if reached { "reached" } else { "blocked" }
}

/// The Pod object the API server would show for a harness pod.
fn pod_object(namespace: &str, name: &str, ip: IpAddr, ip6: IpAddr) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"nodeName": NODE, "containers": [{"name": name, "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}, {"ip": ip6.to_string()}]}
    }))?)
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
