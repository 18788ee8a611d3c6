//! `cargo xtask bench`: runs the benchmarks and writes `bench/results.json`
//! and `BENCHMARKS.md`. Figures come only from runs on this machine; nothing
//! here is a pass/fail threshold.
use std::{collections::BTreeMap, fmt::Write as _, process::Stdio};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{
    cmd::{cargo, workspace_root},
    setup,
};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Longer windows and more repetitions (the quick profile takes under 10 minutes).
    #[arg(long)]
    full: bool,
    /// Only write BENCHMARKS.md again from bench/results.json (after its
    /// descriptions change); measures nothing.
    #[arg(long)]
    report_only: bool,
}

/// Benchmarks and the figures they report, with how each is measured.
const COMPILER: (&str, &str) = (
    "compile",
    "Policy compiler (`policy/benches/compile.rs`): 100 namespaces, 5,000 dual-stack pods, 1,000 policies \
     (same-namespace, cross-namespace, CIDR-with-except, named and ranged ports), 110 pods on the node. \
     `compile_full_ms`: all 110 local pods from scratch; `compile_incremental_ms`: one peer pod's labels change, \
     then only the pods marked dirty are recompiled. Median of 15 runs, min and max beside it.",
);

/// The datapath, time-to-enforce and scale benchmarks (`agent/benches/datapath`).
const DATAPATH: (&str, &str) = (
    "datapath",
    "Pods are network namespaces on a private node namespace, as in the tests. **Per packet**: one TCP connection \
     doing 1-byte request/response for the window (`rr`), a new TCP connection per 1-byte transaction (`crr`: \
     every first packet meets the rules and conntrack), and one bulk TCP stream into a sink (`throughput`), \
     client pod to server pod, for: nothing attached; our programs on both pods with the allow rule plus N other \
     /32 prefixes in each trie (`ours_N`, checked to be enforcing: TCP/81 must be dropped); an iptables chain in \
     the node's FORWARD path with N non-matching rules, one per prefix, ahead of the accept rules and a final \
     drop (`iptables_N`, stateless, so every packet walks the chain); the same made stateful as kube-router and \
     Calico's iptables mode build it, conntrack ESTABLISHED accepted first and the N prefixes in one ipset \
     (`iptables_stateful_N`); a program that only passes packets, on the same four hooks as ours and attached as they are (`floor`), and one \
     that first looks its device up in a hash map, as ours look up the pod (`floor_lookup`: what one map \
     lookup adds); our programs with 1,000 ClusterNetworkPolicy admin-tier rules ahead of the client's allow \
     rule, built by the compiler's own entry builder, one in 25 denying a TCP port of every address so that 40 \
     of them sit in the server's entry ahead of the allow rule (`ours_admin_1000`; its `_vs_none_ratio` is to \
     `ours_1` in the same rounds: established packets never meet the rules, new flows scan them). \
     Configurations are interleaved within each round; each ratio is the median over rounds of the ratio to the \
     same round's no-program run, min and max beside it. `ns_per_packet_*` is the kernel's own account of our \
     programs' run time per run (`BPF_ENABLE_STATS`, on only while the section runs) during `rr` (established) \
     and `crr` (new flows), next to the floor program's in the same rounds: no wall-clock noise in it. \
     `ns_per_run_*_hot` is the same programs with their data in cache (BPF_PROG_TEST_RUN repeating one packet \
     on the server's veth, best of 5 batches of 200,000): an established flow's packet, a new flow's first \
     packet the rules deny (judged afresh each run, its event sent), and the floors on the established one; \
     what the instructions cost, where `ns_per_packet_*` adds the cache misses of real traffic. \
     **Through a Service**: the same three loads from the client to the server at its pod address (`direct`) \
     and at a ClusterIP translated by kube-proxy's iptables rules in the node namespace (`service`), with \
     nothing attached and with our programs (the client's egress admits the server; the DNAT hook linked \
     throughout); `*_ratio_service_ours` is to the same round's Service run with nothing attached, \
     `*_ratio_direct_ours` to its direct one, and `*_ratio_service_none` compares the two unenforced runs \
     (kube-proxy's own cost); these wall-clock ratios are noisy here. The kernel's own account is not: \
     `ns_per_connection_*`, our programs' run time per 1-byte transaction on a new connection, direct and \
     through the Service (`handle_*` plus `judge_dnat`), and their ratio within each round; \
     `ns_per_run_dnat_hook`, `judge_dnat` per run during `crr` through the Service (it runs for every packet \
     entering PREROUTING, judging the new flows). \
     **Time to enforce** (agent in local mode, which reads a manifest once it is closed or renamed in, after 2 ms to coalesce a burst): \
     `policy_to_enforced`: the policy admitting the client is removed or restored, until a fresh connection \
     from the client sees the change (10 ms attempts; a block must be seen 3 times in a row); \
     `kube_policy_to_enforced`: the same policy changes made in the fake API server's store, with the agent \
     in Kubernetes mode watching it (no directory to read: local mode reads the \
     manifest files that changed, parsing only those, 1,000 peer pods in another); \
     `pod_to_enforced`: a new pod's manifest lands (its veth exists) until its closed-ingress policy holds; \
     `relabel_1000_pods_ms`: a namespace label change that adds or removes 1,000 peer pods (2,000 prefixes) \
     from the server's rules, until the agent reports that revision applied. **Pod start through CNI** \
     (100 starts through Debian's `ptp` plugin, then `na-cni`; the pod's policy closes its ingress; a client \
     floods the address the pod is about to get with UDP from before ADD, and a receiver in the pod opens when \
     ADD returns, as its first container would, and counts for 100 ms): `cni_add_*_ms`, how long na-cni's ADD \
     takes (process start to exit: what it adds to a pod's start), with clsact filters (the default) and, as \
     `_tcx`, TCX links; `packets_before_enforcement`, datagrams counted over all starts, and `_without_cni` beside it, \
     the same starts without na-cni (the agent finds the veth from link and route notifications, the pod's \
     address known to it in advance); `cni_add_burst_20_*`: 20 pods started at once, their ADDs concurrent \
     (the agent settles ADDs that arrive together in one pass). **Scale**: the node's one-time \
     program verification (`program_verify_ms`, instructions the verifier processed); load and attach time per \
     pod (20 pods, before the agent starts, each once the 8 spare slots the agent keeps are made again; clsact \
     filters, then TCX links as `_tcx`); the agent enforcing 110 local pods of the 5,000-pod, \
     1,000-policy synthetic cluster (the compiler's), with 50 more pods scheduled on the node whose veths never \
     appear (pending), adopting the programs verified before (any start after the first): time and CPU to \
     attach all (`startup_110_pods_ms`: every pod attached afresh), RSS after, idle CPU; an agent restart \
     (`restart_110_pods_ms`: programs, maps and links adopted); the agent's RSS with the node's pods alone, \
     and from the difference `bytes_per_cluster_pod` (what each other pod of the cluster costs, allocator \
     retention included); kernel memory (`memlock`) of one pod's maps, of the node's shared maps, of the \
     spare slots, and of everything with 110 pods; sweeper rate on a full conntrack table. **Big cluster**: \
     150,000 pods in 3,000 namespaces and 10,000 policies (the same synthetic shapes), served by the fake API \
     server in pages as a real one lists them, the agent in Kubernetes mode with 10 of the pods on its node: \
     time and CPU from its start until it enforces them, its RSS then, and that over the cluster's pods; the \
     bytes its pod list received per pod (the synthetic objects carry no `managedFields`: real ones are \
     bigger); then 1,000 pods of other nodes relabelled in the server's store (a rollout's churn): the bytes \
     its pod watch received and the CPU it spent, per change; then the agent restarted against the same \
     server made 1.33 with WatchList on, taking each collection's initial state streamed in its watch (`_stream`: \
     time and CPU until it enforces its pods, RSS, bytes per pod). Figures marked (configured) are settings, \
     not measurements.",
);

pub fn run(options: &Options) -> Result<()> {
    let path = workspace_root().join("bench/results.json");
    if options.report_only {
        let text = std::fs::read_to_string(&path).context("reading bench/results.json")?;
        let results: BTreeMap<String, Value> = serde_json::from_str(&text).context("parsing bench/results.json")?;
        std::fs::write(workspace_root().join("BENCHMARKS.md"), report(&results))?;
        eprintln!("xtask: wrote BENCHMARKS.md from bench/results.json");
        return Ok(());
    }
    setup::run_all()?;
    // Only what this run measured: a section that failed says so, it does
    // not leave an older run's figures under this run's machine line.
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    results.extend(bench("na-policy", COMPILER.0, &[])?);
    let full: &[&str] = if options.full { &["--full"] } else { &[] };
    results.extend(bench("na-agent", DATAPATH.0, full)?);
    results.insert("machine".into(), machine());
    std::fs::create_dir_all(path.parent().expect("has parent"))?;
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    std::fs::write(workspace_root().join("BENCHMARKS.md"), report(&results))?;
    eprintln!("xtask: wrote bench/results.json and BENCHMARKS.md");
    Ok(())
}

/// Runs one benchmark target; its last line of output is a JSON object of figures.
fn bench(package: &str, name: &str, args: &[&str]) -> Result<BTreeMap<String, Value>> {
    eprintln!("xtask: running the {name} benchmark");
    let out = cargo()
        .args(["bench", "--quiet", "--package", package, "--bench", name, "--"])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo bench")?;
    anyhow::ensure!(out.status.success(), "the {name} benchmark failed ({})", out.status);
    let line = String::from_utf8(out.stdout)?.lines().last().context("benchmark printed nothing")?.to_owned();
    serde_json::from_str(&line).context("benchmark output is not JSON")
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    serde_json::json!({"cpu": cpu, "cores": cores, "kernel": kernel})
}

fn report(results: &BTreeMap<String, Value>) -> String {
    let mut s = String::from(
        "# Benchmarks\n\nWritten by `cargo xtask bench` from `bench/results.json`; rerun it to refresh.\n\n",
    );
    if let Some(m) = results.get("machine") {
        let _ = writeln!(
            s,
            "Machine: {} ({} cores), kernel {}.\n",
            m["cpu"].as_str().unwrap_or("?"),
            m["cores"],
            m["kernel"].as_str().unwrap_or("?")
        );
    }
    s.push_str("## Policy compiler\n\n");
    let _ = writeln!(s, "{}\n", COMPILER.1);
    s.push_str("| figure | median | min | max |\n|---|---|---|---|\n");
    for key in ["compile_full", "compile_incremental"] {
        let ms =
            |k: &str| results.get(k).and_then(Value::as_f64).map_or("not measured".into(), |v| format!("{v:.1} ms"));
        let _ = writeln!(
            s,
            "| `{key}_ms` | {} | {} | {} |",
            ms(&format!("{key}_ms")),
            ms(&format!("{key}_min_ms")),
            ms(&format!("{key}_max_ms"))
        );
    }
    if let Some(n) = results.get("compile_incremental_pods") {
        let _ = writeln!(
            s,
            "\nThe relabel recompiled {n} pods; the 110 pods hold {} LPM entries in all.",
            results.get("compile_entries_total").unwrap_or(&Value::Null)
        );
    }
    s.push_str("\n## Datapath, time to enforce, scale\n\n");
    let _ = writeln!(s, "{}\n", DATAPATH.1);
    let figure = |k: &str| results.get(k).map_or_else(|| "not measured".to_owned(), Value::to_string);
    for key in results.keys().filter(|k| k.ends_with("_error")) {
        let _ = writeln!(s, "**Not measured**: `{key}`: {}\n", figure(key));
    }
    s.push_str("| figure | value | min | max |\n|---|---|---|---|\n");
    let spread = |k: &str, suffix: &str| results.get(&format!("{k}{suffix}")).map_or(String::new(), Value::to_string);
    for key in DATAPATH_KEYS {
        let configured = if CONFIGURED.contains(key) { " (configured)" } else { "" };
        let _ = writeln!(
            s,
            "| `{key}`{configured} | {} | {} | {} |",
            figure(key),
            spread(key, "_min"),
            spread(key, "_max")
        );
    }
    s.push_str("\nEvery other figure the run recorded (samples, baselines, spreads) is in `bench/results.json`.\n");
    s
}

/// Figures that are settings the run used, not measurements.
const CONFIGURED: &[&str] = &["conntrack_capacity_per_pod"];

/// The datapath figures the report tables, in order.
const DATAPATH_KEYS: &[&str] = &[
    "ns_per_packet_floor",
    "ns_per_packet_floor_lookup",
    "ns_per_packet_established_1",
    "ns_per_packet_established_1000",
    "ns_per_packet_established_10000",
    "ns_per_packet_floor_new_flow",
    "ns_per_packet_floor_lookup_new_flow",
    "ns_per_packet_new_flow_1",
    "ns_per_packet_new_flow_1000",
    "ns_per_packet_new_flow_10000",
    "ns_per_packet_established_admin_1000",
    "ns_per_packet_new_flow_admin_1000",
    "ns_per_packet_established_admin_1000_vs_none_ratio",
    "ns_per_packet_new_flow_admin_1000_vs_none_ratio",
    "ns_per_run_floor_hot",
    "ns_per_run_floor_lookup_hot",
    "ns_per_run_established_hot",
    "ns_per_run_new_flow_denied_hot",
    "rr_none_per_sec",
    "rr_ratio_floor",
    "rr_ratio_ours_1",
    "rr_ratio_ours_1000",
    "rr_ratio_ours_10000",
    "rr_ratio_ours_admin_1000",
    "rr_ratio_iptables_1",
    "rr_ratio_iptables_1000",
    "rr_ratio_iptables_10000",
    "rr_ratio_iptables_stateful_1",
    "rr_ratio_iptables_stateful_1000",
    "rr_ratio_iptables_stateful_10000",
    "crr_none_per_sec",
    "crr_ratio_floor",
    "crr_ratio_ours_1",
    "crr_ratio_ours_1000",
    "crr_ratio_ours_10000",
    "crr_ratio_ours_admin_1000",
    "crr_ratio_iptables_1",
    "crr_ratio_iptables_1000",
    "crr_ratio_iptables_10000",
    "crr_ratio_iptables_stateful_1",
    "crr_ratio_iptables_stateful_1000",
    "crr_ratio_iptables_stateful_10000",
    "throughput_none_gbit_s",
    "throughput_ratio_floor",
    "throughput_ratio_ours_1",
    "throughput_ratio_ours_1000",
    "throughput_ratio_ours_10000",
    "throughput_ratio_ours_admin_1000",
    "throughput_ratio_iptables_1",
    "throughput_ratio_iptables_1000",
    "throughput_ratio_iptables_10000",
    "throughput_ratio_iptables_stateful_1",
    "throughput_ratio_iptables_stateful_1000",
    "throughput_ratio_iptables_stateful_10000",
    "rr_ratio_direct_ours",
    "rr_ratio_service_ours",
    "rr_ratio_service_none",
    "crr_ratio_direct_ours",
    "crr_ratio_service_ours",
    "crr_ratio_service_none",
    "throughput_ratio_direct_ours",
    "throughput_ratio_service_ours",
    "ns_per_connection_direct",
    "ns_per_connection_service",
    "ns_per_connection_service_ratio",
    "ns_per_run_dnat_hook",
    "policy_to_enforced_p50_ms",
    "policy_to_enforced_p99_ms",
    "kube_policy_to_enforced_p50_ms",
    "kube_policy_to_enforced_p99_ms",
    "pod_to_enforced_p50_ms",
    "pod_to_enforced_p99_ms",
    "relabel_1000_pods_ms",
    "cni_add_p50_ms",
    "cni_add_p99_ms",
    "cni_add_p50_ms_tcx",
    "cni_add_p99_ms_tcx",
    "cni_add_burst_20_p50_ms",
    "cni_add_burst_20_max_ms",
    "packets_before_enforcement",
    "packets_before_enforcement_without_cni",
    "program_verify_ms",
    "program_verified_insns",
    "load_attach_per_pod_ms",
    "load_attach_per_pod_tcx_ms",
    "startup_110_pods_ms",
    "startup_programs",
    "agent_startup_cpu_s",
    "restart_110_pods_ms",
    "agent_restart_cpu_s",
    "agent_rss_mib",
    "agent_peak_rss_mib",
    "agent_rss_local_pods_only_mib",
    "bytes_per_cluster_pod",
    "agent_idle_cpu_percent",
    "status_file_kib",
    "map_memory_per_pod_kib",
    "map_memory_shared_kib",
    "map_memory_spare_slots_kib",
    "map_memory_110_pods_mib",
    "conntrack_capacity_per_pod",
    "sweep_entries_per_s",
    "startup_150k_pods_s",
    "agent_startup_150k_pods_cpu_s",
    "agent_rss_150k_pods_mib",
    "agent_peak_rss_150k_pods_mib",
    "bytes_per_cluster_pod_150k",
    "api_list_bytes_per_pod_150k",
    "restart_150k_pods_stream_s",
    "agent_restart_150k_pods_stream_cpu_s",
    "agent_rss_150k_pods_stream_mib",
    "api_stream_bytes_per_pod_150k",
    "api_watch_bytes_per_pod_change",
    "agent_cpu_us_per_pod_change",
];
