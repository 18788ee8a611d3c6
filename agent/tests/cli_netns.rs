//! `na-cli` against a running agent in local mode: every command's output is
//! checked against the policies the test wrote, `trace` against real probes.
//! Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces).
mod support;

use std::{net::IpAddr, path::Path};

use na_agent::{
    datapath::{AttachMode, inventory::PodAttachment},
    flowlog::FlowLine,
    inspect::{dump::MapDump, pod::PodReport, trace::Trace},
    status,
};
use na_harness::{Family, Probe};
use serde_json::json;
use support::{
    Env,
    agent::{Agent, Manifests, pod, policy, status as read_status, wait_until},
    cli::Cli,
};

/// a admits b on TCP/80 (named `http`); c may send to the pods' /24 on TCP
/// 80-81 and UDP 80, except to b.
fn write_cluster(env: &Env, manifests: &Manifests) {
    let (b4, b6) = (env.pod("x/b").ip, env.pod("x/b").ip6);
    manifests.write("ns.yaml", &[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})]);
    manifests.write("pods.yaml", &[pod(env, "x/a", "a"), pod(env, "x/b", "b"), pod(env, "x/c", "c")]);
    manifests.write(
        "policies.yaml",
        &[
            policy(
                "a-from-b",
                json!({"podSelector": {"matchLabels": {"app": "a"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": "http"}]}]}),
            ),
            policy(
                "c-egress",
                json!({"podSelector": {"matchLabels": {"app": "c"}}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"ipBlock": {"cidr": "198.18.0.0/24", "except": [format!("{b4}/32")]}},
                                          {"ipBlock": {"cidr": "fd18::/64", "except": [format!("{b6}/128")]}}],
                                   "ports": [{"port": 80}, {"port": 81}, {"protocol": "UDP", "port": 80}]}]}),
            ),
        ],
    );
}

#[test]
fn na_cli_explains_what_the_agent_loaded() {
    let env = Env::new(AttachMode::default()).unwrap();
    let manifests = Manifests::new();
    let status_file = manifests.1.join("status.json");
    write_cluster(&env, &manifests);
    // No flow logs: nobody else reads the event ring, so `events` can.
    let agent = Agent::spawn(&env, &status_file, &["--manifests".into(), manifests.0.clone().into()]);
    wait_until("all three pods are attached", || {
        read_status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 3)
    });
    let node = env.node.netns().name();
    let cli = Cli { root: env.root(), status: &status_file, node };
    let (a, b, c) = (env.pod("x/a"), env.pod("x/b"), env.pod("x/c"));

    // pod: a's ingress, grouped by policy rule, and open egress.
    let report: PodReport = cli.json(&["pod", "x/a"]);
    assert_eq!(report.pod.as_deref(), Some("x/a"));
    assert_eq!(report.ips, vec![IpAddr::from(a.ip), IpAddr::from(a.ip6)]);
    assert_eq!(report.programs.len(), 2);
    let ingress = &report.directions[0];
    assert_eq!((ingress.direction.as_str(), ingress.mode.as_str()), ("ingress", "policies-applied"));
    assert_eq!(ingress.isolated_by, ["x/a-from-b"]);
    let by_rule = ingress.policies.iter().find(|p| p.policy == "x/a-from-b ingress[0]").expect("a-from-b listed");
    let granted: Vec<String> =
        by_rule.grants.iter().map(|g| format!("{} {} {}", g.prefix, g.protocol, g.ports)).collect();
    assert_eq!(granted, vec![format!("{}/32 TCP 80", b.ip), format!("{}/128 TCP 80", b.ip6)]);
    assert!(ingress.policies.iter().any(|p| p.policy == "node"), "the node's own entry");
    assert_eq!(report.directions[1].mode, "default-allow");
    let by_ip = cli.text(&["pod", &a.ip6.to_string()]);
    assert!(by_ip.contains("x/a-from-b ingress[0]") && by_ip.contains("Pod Identifier : x_a"), "{by_ip}");

    // trace agrees with real probes, both families, every ordered pair.
    let pods = ["x/a", "x/b", "x/c"];
    let mut checked = 0;
    for family in [Family::V4, Family::V6] {
        for from in pods {
            for to in pods.iter().filter(|t| **t != from) {
                for (spec, probe) in
                    [("tcp/80", Probe::tcp(80)), ("tcp/81", Probe::tcp(81)), ("udp/80", Probe::udp(80))]
                {
                    let (src, dst) = (family.of(env.pod(from)), family.of(env.pod(to)));
                    let t: Trace = cli.json(&["trace", &src.to_string(), &dst.to_string(), spec]);
                    let reached = probe.run(env.pod(from), dst).unwrap();
                    assert_eq!(t.allowed, reached, "{from} -> {to} {spec} {family:?}: trace says {t:?}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 36);
    // And names the deciding rule and prefix.
    let t: Trace = cli.json(&["trace", &b.ip.to_string(), &a.ip.to_string(), "tcp/80"]);
    let into_a = t.sides.iter().find(|s| s.direction == "ingress").unwrap();
    assert_eq!((into_a.pod.as_str(), into_a.policy.as_str()), ("x/a", "x/a-from-b ingress[0]"));
    assert_eq!(into_a.matched_prefix.unwrap().to_string(), format!("{}/32", b.ip));
    assert!(!into_a.tracked.is_empty(), "the probe's flow is tracked: {into_a:?}");
    let t: Trace = cli.json(&["trace", &c.ip.to_string(), &b.ip.to_string(), "tcp/80"]);
    let out_of_c = &t.sides[0];
    assert_eq!((out_of_c.direction.as_str(), out_of_c.allowed), ("egress", false));
    assert_eq!(out_of_c.matched_prefix.unwrap().to_string(), format!("{}/32", b.ip), "the except hole decides");
    assert_eq!(out_of_c.isolated_by, ["x/c-egress"], "the policy whose rules leave the hole");
    let text = cli.text(&["trace", &c.ip.to_string(), &a.ip.to_string(), "tcp/81"]);
    // Allowed out of c, refused into a: both sides are shown.
    assert!(text.contains("ALLOW  by x/c-egress egress[0]") && text.contains("Verdict: DENY"), "{text}");

    // dump-maps: each map of c, by the ids loaded-ebpfdata lists.
    let loaded: Vec<PodAttachment> = cli.json(&["ebpf", "loaded-ebpfdata"]);
    let map_id = |pod: &str, name: &str| {
        loaded.iter().filter(|p| p.pod_id == pod).flat_map(|p| &p.maps).find(|m| m.name == name).unwrap().id
    };
    let egress: MapDump = cli.json(&["ebpf", "dump-maps", &map_id("x_c", "egress_map").to_string()]);
    assert_eq!(egress.pod_id, "x_c");
    let na_agent::inspect::dump::Contents::Rules { prefixes } = &egress.contents else { panic!("{egress:?}") };
    let live: Vec<String> = prefixes
        .iter()
        .filter(|p| p.active)
        .map(|p| {
            let rules: Vec<String> =
                p.rules.iter().map(|r| format!("{}/{} {}", r.protocol, r.ports, r.policy)).collect();
            format!("{} [{}]", p.prefix, rules.join(", "))
        })
        .collect();
    let rule = "x/c-egress egress[0]";
    assert_eq!(
        live,
        vec![
            format!("198.18.0.0/24 [TCP/80-81 {rule}, UDP/80 {rule}]"),
            format!("{}/32 []", b.ip),
            format!("fd18::/64 [TCP/80-81 {rule}, UDP/80 {rule}]"),
            format!("{}/128 []", b.ip6),
        ]
    );
    // The node's pod table: every pod's record, named from the status file.
    let state: MapDump = cli.json(&["ebpf", "dump-maps", &map_id("x_c", "pod_table").to_string()]);
    assert_eq!(state.pod_id, "node");
    let na_agent::inspect::dump::Contents::PodTable { pods } = &state.contents else { panic!("{state:?}") };
    let c_row = pods.iter().find(|p| p.pod_id.as_deref() == Some("x_c")).unwrap_or_else(|| panic!("{pods:?}"));
    let modes: Vec<(&str, &str)> = c_row.states.iter().map(|s| (s.direction.as_str(), s.mode.as_str())).collect();
    assert_eq!(modes, vec![("ingress", "default-allow"), ("egress", "policies-applied")]);
    assert_eq!(pods.len(), 3, "one record per pod: {pods:?}");
    // Every pod's attachments run the same two programs.
    let prog_ids: std::collections::BTreeSet<(String, u32)> =
        loaded.iter().map(|p| (p.direction.clone(), p.prog_id)).collect();
    assert_eq!(prog_ids.len(), 2, "one program per direction for the node: {loaded:?}");
    // Filters (the default) have no pin of their own: the pod's trie stands in.
    assert!(loaded.iter().all(|p| p.pin_path.contains("/maps/") && p.prog_id != 0), "{loaded:?}");
    let flows: MapDump = cli.json(&["ebpf", "dump-maps", &map_id("x_a", "conntrack_map").to_string()]);
    let na_agent::inspect::dump::Contents::Conntrack { flows } = &flows.contents else { panic!("{flows:?}") };
    assert!(
        flows.iter().any(|f| f.src == IpAddr::from(b.ip) && f.dst_port == 80 && f.policy == "x/a-from-b ingress[0]"),
        "{flows:?}"
    );
    assert!(flows.iter().all(|f| f.idle_secs < 600.0 && f.timeout_secs > 0));
    let counters: MapDump = cli.json(&["ebpf", "dump-maps", &map_id("x_a", "counters").to_string()]);
    let na_agent::inspect::dump::Contents::Counters { pods } = &counters.contents else { panic!("{counters:?}") };
    let a_row = pods.iter().find(|p| p.pod_id.as_deref() == Some("x_a")).unwrap_or_else(|| panic!("{pods:?}"));
    let counters = &a_row.counters;
    assert!(counters.ingress_allowed.packets > 0 && counters.ingress_denied.packets > 0, "{counters:?}");
    let table = cli.text(&["ebpf", "dump-maps", &map_id("x_c", "egress_map").to_string()]);
    assert!(table.contains("no rule (except hole)") && table.contains("(active)"), "{table}");

    // events: read from the ring while traffic flows.
    let (lines, _) = cli.events_during(&["--count", "2"], || {
        Probe::tcp(80).run(env.pod("x/c"), b.ip.into()).unwrap();
    });
    let denied = |l: &FlowLine| l.pod.as_deref() == Some("c") && l.verdict == "DENY" && l.dst_ip == IpAddr::from(b.ip);
    let denial = lines.iter().find(|l| denied(l));
    assert_eq!(denial.map(|l| l.isolated_by.clone()), Some(vec!["x/c-egress".to_owned()]), "{lines:?}");

    // Errors say what is wrong and exit with a code that says it too.
    assert_eq!(cli.exit_code(&["pod", "x/nope"]).0, 4);
    assert_eq!(cli.exit_code(&["trace", "10.9.9.9", "10.9.9.8", "tcp/80"]).0, 4);
    assert_eq!(cli.exit_code(&["trace", &a.ip.to_string(), &b.ip.to_string(), "tcp"]).0, 6);
    assert_eq!(cli.exit_code(&["ebpf", "dump-maps", "4294967295"]).0, 4);
    let (code, err) = Cli { root: Path::new("/tmp"), status: &status_file, node }.exit_code(&["pod", "x/a"]);
    assert!(code == 3 && err.contains("bpf filesystem"), "{code} {err}");
    let (code, err) = Cli { root: env.root(), status: Path::new("/nonexistent/status.json"), node }
        .exit_code(&["pod", &a.ip.to_string()]);
    assert!(code == 1 && err.contains("--status-file"), "{code} {err}");

    // With flow logs on, the agent owns the ring and `events` follows its file.
    agent.kill();
    let _agent = Agent::start(&env, &manifests, &status_file);
    let lock = status::events_lock_path(&status_file);
    wait_until("the agent reads the ring", || status::try_lock(&lock).is_ok_and(|l| l.is_none()));
    let (lines, stderr) = cli.events_during(&["--count", "1"], || {
        Probe::tcp(80).run(env.pod("x/c"), b.ip.into()).unwrap();
    });
    assert_eq!(lines.len(), 1, "{stderr}");
    assert_eq!((lines[0].node.as_str(), lines[0].pod.as_deref()), (support::agent::NODE, Some("c")));
    assert_eq!(lines[0].isolated_by, ["x/c-egress"], "the agent's own line names the isolation too");
    assert!(stderr.contains("followed the agent's flow log"), "{stderr}");

    // An attachment whose veth is gone (the agent stopped, the CNI deleted the
    // sandbox) is flagged: nothing is enforced for that pod.
    let loaded: Vec<PodAttachment> = cli.json(&["ebpf", "loaded-ebpfdata"]);
    assert!(loaded.iter().all(|p| p.device.is_some()), "{loaded:?}");
    drop(_agent);
    env.node.delete_veth("x/c").unwrap();
    let loaded: Vec<PodAttachment> = cli.json(&["ebpf", "loaded-ebpfdata"]);
    let gone: std::collections::BTreeSet<&str> =
        loaded.iter().filter(|p| p.device.is_none()).map(|p| p.pod_id.as_str()).collect();
    assert_eq!(gone, std::collections::BTreeSet::from(["x_c"]));
    let text = cli.text(&["ebpf", "loaded-ebpfdata"]);
    assert_eq!(text.matches("Device:  gone").count(), 2, "both of c's attachments: {text}");
}

/// Cluster tiers and audit mode, as an operator reads them: an admin Deny
/// names its policy, tier, priority and action in `pod`, `trace` and the
/// flow log; an audited namespace's NetworkPolicy denial passes as AUDIT,
/// naming the policy that would have denied it.
#[test]
fn na_cli_names_cluster_tiers_and_audited_denials() {
    let env = Env::new(AttachMode::default()).unwrap();
    let manifests = Manifests::new();
    let status_file = manifests.1.join("status.json");
    manifests.write(
        "ns.yaml",
        &[json!({"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": "x", "annotations": {"na-agent.io/audit": "true"}}})],
    );
    manifests.write("pods.yaml", &[pod(&env, "x/a", "a"), pod(&env, "x/b", "b"), pod(&env, "x/c", "c")]);
    manifests.write(
        "policies.yaml",
        &[
            json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
                   "metadata": {"name": "guard"},
                   "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}},
                            "ingress": [{"action": "Deny", "from": [{"pods": {"podSelector": {"matchLabels": {"app": "c"}}}}]}]}}),
            policy("b-closed", json!({"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"]})),
        ],
    );
    let _agent = Agent::spawn(&env, &status_file, &["--manifests".into(), manifests.0.clone().into()]);
    wait_until("all three pods are attached", || {
        read_status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 3)
    });
    let cli = Cli { root: env.root(), status: &status_file, node: env.node.netns().name() };
    let (a, b, c) = (env.pod("x/a"), env.pod("x/b"), env.pod("x/c"));
    let guard = "guard ingress[0] (Admin 10 Deny)";

    let report: PodReport = cli.json(&["pod", "x/a"]);
    assert_eq!(report.directions[0].mode, "cluster-policies");
    let rule = report.directions[0].policies.iter().find(|p| p.policy == guard).expect("the admin rule is listed");
    assert!(rule.grants.iter().all(|g| g.action == "Admin Deny" && g.protocol == "any"), "{rule:?}");
    let text = cli.text(&["pod", "x/a"]);
    assert!(text.contains("Admin Deny") && text.contains("anything else: passes"), "{text}");
    let text = cli.text(&["pod", "x/b"]);
    assert!(text.contains("audited: what NetworkPolicy denies passes"), "{text}");

    // trace agrees with the probes, and names the deciding rule.
    assert!(!Probe::tcp(80).run(c, a.ip.into()).unwrap(), "the admin Deny holds");
    let t: Trace = cli.json(&["trace", &c.ip.to_string(), &a.ip.to_string(), "tcp/80"]);
    let into_a = t.sides.iter().find(|s| s.direction == "ingress").unwrap();
    assert_eq!((t.allowed, into_a.tier.as_str(), into_a.policy.as_str()), (false, "ADMIN", guard));
    assert!(Probe::tcp(80).run(a, b.ip.into()).unwrap(), "audited: b's NetworkPolicy does not drop it");
    let t: Trace = cli.json(&["trace", &a.ip.to_string(), &b.ip.to_string(), "tcp/80"]);
    let into_b = t.sides.iter().find(|s| s.direction == "ingress").unwrap();
    assert!(t.allowed && into_b.audited, "{t:?}");
    let text = cli.text(&["trace", &a.ip.to_string(), &b.ip.to_string(), "tcp/80"]);
    assert!(text.contains("AUDIT") && text.contains("isolated by x/b-closed, audited"), "{text}");

    // The flow log of each: a new flow each time (the probes' ports differ).
    // Each probe's first packet makes two lines: its egress (open) and its
    // ingress.
    let (lines, _) = cli.events_during(&["--count", "4"], || {
        Probe::tcp(81).run(a, b.ip.into()).unwrap();
        Probe::tcp(81).run(c, a.ip.into()).unwrap();
    });
    let denial = lines.iter().find(|l| l.verdict == "DENY").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!((denial.tier.as_str(), denial.policy.as_deref()), ("ADMIN", Some("guard")), "{denial:?}");
    let audit = lines.iter().find(|l| l.verdict == "AUDIT").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(audit.isolated_by, ["x/b-closed"], "the policy that would have denied it: {audit:?}");
    let report: PodReport = cli.json(&["pod", "x/b"]);
    assert!(report.counters.ingress_audited.packets >= 2, "would-be drops are counted: {:?}", report.counters);
}
