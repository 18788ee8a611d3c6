//! Strict mode end to end: the agent told `--enforcing-mode strict`, or
//! `NETWORK_POLICY_ENFORCING_MODE=strict`, keeps every direction no policy
//! isolates closed, but for the node's addresses, and a policy opens exactly
//! what it allows.
//! Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces).
mod support;

use std::path::Path;

use na_agent::datapath::AttachMode;
use na_harness::{Family, Probe, matrix, render};
use serde_json::json;
use support::{
    Env,
    agent::{Agent, Manifests, pod, policy, wait_applied},
};

const ENV_VAR: &str = "NETWORK_POLICY_ENFORCING_MODE";
const PROBES: [Probe; 3] = [Probe::tcp(80), Probe::tcp(81), Probe::udp(80)];

enum Told {
    Flag,
    Environment,
}

fn start_strict(told: Told, env: &Env, manifests: &Manifests, status_file: &Path) -> Agent {
    let status_file = status_file.to_path_buf();
    match told {
        Told::Flag => Agent::start_with(env, manifests, &status_file, &["--enforcing-mode", "strict"]),
        Told::Environment => Agent::start_with_env(env, manifests, &status_file, &[], &[(ENV_VAR, "strict")]),
    }
}

/// Probes every pair of pods with each of [`PROBES`] in both families and
/// asserts that the pairs `open` names are reachable and no other; and that
/// the node reaches every pod.
fn assert_open(env: &Env, step: &str, open: impl Fn(&str, &str, Probe) -> bool) {
    let pods = env.node.pods();
    for family in [Family::V4, Family::V6] {
        for probe in PROBES {
            let want: Vec<Vec<Option<bool>>> = pods
                .iter()
                .map(|from| {
                    pods.iter()
                        .map(|to| (!std::ptr::eq(from, to)).then(|| open(&from.key(), &to.key(), probe)))
                        .collect()
                })
                .collect();
            let got = matrix(&env.node, probe, family).unwrap();
            assert!(
                got == want,
                "{step}: {probe} over {family:?}\nexpected:\n{}observed:\n{}",
                render(&env.node, &want),
                render(&env.node, &got)
            );
        }
    }
    // Kubelet probes come from the node's address (IPv4 here).
    for pod in pods {
        let reached = Probe::tcp(80).run_in(env.node.netns(), pod.ip.into()).unwrap();
        assert!(reached, "{step}: the node reaches {}", pod.key());
    }
}

fn strict_mode_closes_what_no_policy_opens(told: Told) {
    let env = Env::new(AttachMode::default()).unwrap();
    let manifests = Manifests::new();
    let status_file = manifests.1.join("status.json");
    manifests.write("ns.yaml", &[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})]);
    manifests.write("pods.yaml", &[pod(&env, "x/a", "a"), pod(&env, "x/b", "b"), pod(&env, "x/c", "c")]);
    assert_open(&env, "before the agent", |_, _, _| true);

    let _agent = start_strict(told, &env, &manifests, &status_file);
    wait_applied(&manifests, &status_file, 3);
    assert_open(&env, "strict, no policies", |_, _, _| false);

    // a admits b on TCP/80, but no policy opens b's egress: it stays closed.
    let a_from_b = policy(
        "a-from-b",
        json!({"podSelector": {"matchLabels": {"app": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": 80}]}]}),
    );
    manifests.write("a.yaml", &[a_from_b]);
    wait_applied(&manifests, &status_file, 3);
    assert_open(&env, "strict, a's ingress open to b", |_, _, _| false);

    let b_to_a = policy(
        "b-to-a",
        json!({"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": 80}]}]}),
    );
    manifests.write("b.yaml", &[b_to_a]);
    wait_applied(&manifests, &status_file, 3);
    assert_open(&env, "strict, b's egress open to a too", |from, to, probe| {
        (from, to, probe) == ("x/b", "x/a", Probe::tcp(80))
    });
}

#[test]
fn strict_mode_by_flag() {
    strict_mode_closes_what_no_policy_opens(Told::Flag);
}

#[test]
fn strict_mode_by_environment() {
    strict_mode_closes_what_no_policy_opens(Told::Environment);
}
