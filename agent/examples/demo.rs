//! `cargo xtask demo`: pods as network namespaces, `na-agent` in local mode
//! reading a manifests directory the demo writes step by step, a probe
//! matrix after every step, then what `na-cli` and the metrics endpoint
//! tell an operator about it.
#[path = "../tests/support/mod.rs"]
mod support;

use anyhow::{Context, Result, ensure};
use na_agent::{datapath::AttachMode, inspect::trace::Trace};
use na_harness::{Family, Probe, matrix, render};
use serde_json::{Value, json};
use support::{
    Env,
    agent::{Agent, Manifests, http_get, pod, wait_applied},
    cli::Cli,
};

const PODS: [(&str, &str); 3] = [("shop", "frontend"), ("shop", "backend"), ("tools", "debug")];
/// Where the agent serves Prometheus metrics inside the demo's node (its default).
const METRICS_PORT: u16 = 8162;

/// The (from, to) pairs the last step blocked on TCP/80.
const INTO_SHOP: [(&str, &str); 4] = [
    ("shop/backend", "shop/frontend"),
    ("tools/debug", "shop/frontend"),
    ("shop/frontend", "shop/backend"),
    ("tools/debug", "shop/backend"),
];

fn main() -> Result<()> {
    let env = Env::with_pods(AttachMode::default(), &PODS)?;
    let manifests = Manifests::new();
    let status_file = manifests.1.join("status.json");
    for pod in env.node.pods() {
        println!("pod {:<14} ip {:<12} {:<12} host veth {}", pod.key(), pod.ip, pod.ip6, pod.host_veth);
    }
    let probe = Probe::tcp(80);
    show(&env, probe, "1. no agent: everything open", &[])?;

    let mut cluster: Vec<Value> =
        ["shop", "tools"].map(|ns| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).into();
    cluster.extend(PODS.map(|(ns, name)| pod(&env, &format!("{ns}/{name}"), name)));
    manifests.write("cluster.yaml", &cluster);
    println!("\n== {}/cluster.yaml: namespaces shop and tools, the three pods", manifests.0.display());
    let _agent = Agent::start(&env, &manifests, &status_file);
    println!("   started na-agent --manifests {} (flow log of every verdict)", manifests.0.display());
    wait_applied(&manifests, &status_file, PODS.len());
    show(&env, probe, "2. na-agent on every veth, no NetworkPolicy: everything open", &[])?;

    let deny_all = policy("default-deny-ingress", json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
    apply(&manifests, &status_file, &[&deny_all])?;
    show(&env, probe, "3. NetworkPolicy shop/default-deny-ingress", &INTO_SHOP)?;

    let allow = policy(
        "backend-from-frontend",
        json!({"podSelector": {"matchLabels": {"app": "backend"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}],
                            "ports": [{"protocol": "TCP", "port": 80}]}]}),
    );
    apply(&manifests, &status_file, &[&deny_all, &allow])?;
    let still_blocked = [INTO_SHOP[0], INTO_SHOP[1], INTO_SHOP[3]];
    show(&env, probe, "4. + NetworkPolicy shop/backend-from-frontend (TCP/80)", &still_blocked)?;
    let (frontend, backend, debug) = (env.pod("shop/frontend"), env.pod("shop/backend"), env.pod("tools/debug"));
    let other_port = Probe::tcp(81).run(frontend, Family::V4.of(backend))?;
    let over_v6 = probe.run(frontend, Family::V6.of(backend))?;
    println!("   shop/frontend -> shop/backend TCP/81: {}", verdict(other_port));
    println!("   shop/frontend -> shop/backend TCP/80 over IPv6: {}", verdict(over_v6));
    ensure!(!other_port && over_v6, "TCP/81 must be blocked and IPv6 TCP/80 allowed");

    let cli = Cli { root: env.root(), status: &status_file, node: env.node.netns().name() };
    section("na-cli pod shop/backend");
    let report = cli.text(&["pod", "shop/backend"]);
    print!("{report}");
    ensure!(report.contains("shop/backend-from-frontend"), "na-cli pod does not name the allowing policy");

    // The allowed flow names its rule; the denied one, the policies that
    // isolate the backend (none of whose rules admits it).
    let backend_ip = backend.ip.to_string();
    for (from, allowed) in [(frontend.ip.to_string(), true), (debug.ip.to_string(), false)] {
        let args = ["trace", from.as_str(), &backend_ip, "tcp/80"];
        section(&format!("na-cli {}", args.join(" ")));
        print!("{}", cli.text(&args));
        let trace: Trace = cli.json(&args);
        let into_backend = trace.sides.iter().find(|s| s.direction == "ingress").context("no ingress side")?;
        let named = if allowed {
            into_backend.policy.contains("shop/backend-from-frontend")
        } else {
            into_backend.isolated_by.contains(&"shop/default-deny-ingress".to_owned())
        };
        ensure!(trace.allowed == allowed && named, "trace from {from}: expected {}, got {trace:?}", verdict(allowed));
    }

    section("na-cli events --count 4 (the agent reads the ring, so from its flow log)");
    let (events, _) = cli.events_text_during(&["--count", "4"], || {
        let _ = probe.run(frontend, Family::V4.of(backend));
        let _ = probe.run(debug, Family::V4.of(backend));
    });
    print!("{events}");
    let denied = format!("{}:", debug.ip);
    ensure!(
        events.lines().any(|l| l.contains("DENY") && l.contains(&denied) && l.contains("shop/default-deny-ingress")),
        "no denied flow from tools/debug naming the isolating policy among the events"
    );

    section(&format!("GET /metrics on port {METRICS_PORT}: per-pod verdicts and the agent's own figures"));
    let response = http_get(&env, METRICS_PORT, "/metrics").context("the agent serves no metrics")?;
    let metrics = response.split_once("\r\n\r\n").map_or(response.as_str(), |(_, body)| body);
    // Everything but the histograms' buckets and the byte counts.
    let shown: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket") && !l.starts_with("na_policy_bytes"))
        .collect();
    for line in &shown {
        println!("{line}");
    }
    let denied_into_backend =
        r#"na_policy_packets_total{namespace="shop",pod="backend",direction="ingress",verdict="deny"}"#;
    let denied =
        shown.iter().find_map(|l| l.strip_prefix(denied_into_backend)).and_then(|n| n.trim().parse::<u64>().ok());
    ensure!(
        metrics.contains(&format!("na_pods_enforced {}", PODS.len())) && denied.is_some_and(|n| n > 0),
        "metrics do not count the enforced pods and the packets denied into shop/backend: {metrics}"
    );

    section("na-cli ebpf loaded-ebpfdata");
    let listing = cli.text(&["ebpf", "loaded-ebpfdata"]);
    print!("{listing}");
    let listed = listing.matches("PinPath:").count();
    ensure!(listed == 2 * PODS.len(), "na-cli listed {listed} attachments, expected {}", 2 * PODS.len());
    println!("\nDemo checks passed. Cleaning up: the agent, namespaces, veths and pins go with the demo.");
    Ok(())
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": "shop"}, "spec": spec})
}

/// Writes `policies` as the directory's policy file and waits until the
/// agent enforces them.
fn apply(manifests: &Manifests, status_file: &std::path::Path, policies: &[&Value]) -> Result<()> {
    let docs: Vec<Value> = policies.iter().map(|p| (*p).clone()).collect();
    manifests.write("policies.yaml", &docs);
    println!("\n== {}/policies.yaml:", manifests.0.display());
    for p in policies {
        println!("   {}: {}", p["metadata"]["name"].as_str().unwrap_or("?"), serde_json::to_string(&p["spec"])?);
    }
    wait_applied(manifests, status_file, PODS.len());
    Ok(())
}

/// Prints the probe matrix and fails unless exactly the `blocked`
/// (from, to) pairs were blocked.
fn show(env: &Env, probe: Probe, title: &str, blocked: &[(&str, &str)]) -> Result<()> {
    println!("\n== {title}: {probe} from row to column ('.' reached, 'X' blocked)");
    let observed = matrix(&env.node, probe, Family::V4)?;
    print!("{}", render(&env.node, &observed));
    for (i, from) in env.node.pods().iter().enumerate() {
        for (j, to) in env.node.pods().iter().enumerate() {
            let want_blocked = blocked.contains(&(from.key().as_str(), to.key().as_str()));
            if let Some(reached) = observed[i][j] {
                ensure!(reached != want_blocked, "{} -> {}: expected {}", from.key(), to.key(), verdict(!want_blocked));
            }
        }
    }
    Ok(())
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn verdict(reached: bool) -> &'static str {
    if reached { "reached" } else { "blocked" }
}
