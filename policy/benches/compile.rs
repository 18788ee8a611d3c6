//! Compiler speed at the scale of issue 4: 100 namespaces, 5,000 pods, 1,000
//! policies, 110 pods on this node. Prints one JSON object (medians and
//! spreads over repeated runs) for `cargo xtask bench`.
use std::{hint::black_box, time::Instant};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use na_policy::{CompileOptions, Compiler};
use serde_json::json;

const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 50;
const POLICIES_PER_NAMESPACE: usize = 10;
const LOCAL_PODS: usize = 110;
const RUNS: usize = 15;
const NODE: &str = "node-0";

fn pod(ns: usize, i: usize, local: bool) -> Pod {
    let n = ns * PODS_PER_NAMESPACE + i;
    serde_json::from_value(json!({
        "metadata": {"name": format!("pod-{i}"), "namespace": format!("ns-{ns}"),
                     "labels": {"app": format!("app-{}", i % 10), "tier": if i.is_multiple_of(2) { "web" } else { "db" }}},
        "spec": {"nodeName": if local { NODE.to_owned() } else { format!("node-{}", 1 + n % 40) },
                 "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080 + (i % 3) as i32}]}]},
        "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256),
                   "podIPs": [{"ip": format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256)},
                              {"ip": format!("fd00::{:x}", n + 1)}]}
    }))
    .unwrap()
}

/// A mix of the shapes seen in clusters: same-namespace app peers, cross
/// namespace peers by label, CIDRs with excepts, named and ranged ports.
fn policy(ns: usize, i: usize) -> NetworkPolicy {
    let spec = match i % 5 {
        0 => json!({"podSelector": {"matchLabels": {"app": format!("app-{i}")}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [{"port": 8080}]}]}),
        1 => json!({"podSelector": {"matchLabels": {"tier": "db"}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", ns % 7)}},
                                           "podSelector": {"matchLabels": {"app": "app-1"}}}],
                                 "ports": [{"port": "http"}]}]}),
        2 => json!({"podSelector": {}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.0.0/16"]}}]},
                               {"ports": [{"protocol": "UDP", "port": 53}]}]}),
        3 => {
            json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["app-3", "app-4"]}]},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"ipBlock": {"cidr": format!("172.{}.0.0/16", 16 + ns % 16)}}],
                                 "ports": [{"port": 30000, "endPort": 32767}]}],
                    "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}], "ports": [{"port": "http"}]}]})
        }
        _ => json!({"podSelector": {"matchLabels": {"app": format!("app-{}", i % 10)}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}]}]}),
    };
    serde_json::from_value(
        json!({"metadata": {"name": format!("np-{i}"), "namespace": format!("ns-{ns}")}, "spec": spec}),
    )
    .unwrap()
}

fn namespace(ns: usize, env: &str) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": format!("ns-{ns}"),
        "labels": {"team": format!("t{}", ns % 7), "env": env}}}))
    .unwrap()
}

fn loaded() -> Compiler {
    let mut c = Compiler::new(CompileOptions {
        node_name: NODE.into(),
        node_ips: vec!["192.0.2.1".parse().unwrap()],
        allow_node: true,
        strict: false,
    });
    let stride = NAMESPACES * PODS_PER_NAMESPACE / LOCAL_PODS;
    for ns in 0..NAMESPACES {
        c.upsert_namespace(&namespace(ns, if ns % 3 == 0 { "prod" } else { "dev" }));
        for i in 0..PODS_PER_NAMESPACE {
            let n = ns * PODS_PER_NAMESPACE + i;
            c.upsert_pod(&pod(ns, i, n.is_multiple_of(stride) && n / stride < LOCAL_PODS));
        }
        for i in 0..POLICIES_PER_NAMESPACE {
            c.upsert_policy(&policy(ns, i)).unwrap();
        }
    }
    c
}

/// Median, minimum and maximum in milliseconds.
fn stats(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[0], samples[samples.len() - 1])
}

fn main() {
    let mut full = Vec::new();
    let mut incremental = Vec::new();
    let mut relabel_dirty = 0;
    let mut entries = 0;
    for run in 0..RUNS {
        let mut c = loaded();
        c.take_dirty();
        let t = Instant::now();
        let out = black_box(c.compile_all());
        full.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(out.len(), LOCAL_PODS);
        assert!(out.values().all(Result::is_ok));
        entries = out.values().flatten().map(|r| r.ingress.entries.len() + r.egress.entries.len()).sum::<usize>();

        // One peer pod changes its labels: only the pods whose rules name it
        // are recompiled.
        let mut changed = pod(run % NAMESPACES, 1, false);
        changed.metadata.labels.as_mut().unwrap().insert("tier".into(), "web".into());
        let t = Instant::now();
        c.upsert_pod(&changed);
        let dirty = c.take_dirty();
        black_box(c.compile(&dirty));
        incremental.push(t.elapsed().as_secs_f64() * 1e3);
        relabel_dirty = dirty.len();
    }
    let (f, f_min, f_max) = stats(full);
    let (i, i_min, i_max) = stats(incremental);
    println!(
        "{}",
        json!({
            "compile_full_ms": f, "compile_full_min_ms": f_min, "compile_full_max_ms": f_max,
            "compile_incremental_ms": i, "compile_incremental_min_ms": i_min, "compile_incremental_max_ms": i_max,
            "compile_incremental_pods": relabel_dirty, "compile_entries_total": entries, "compile_runs": RUNS,
            "compile_scale": {"namespaces": NAMESPACES, "pods": NAMESPACES * PODS_PER_NAMESPACE,
                              "policies": NAMESPACES * POLICIES_PER_NAMESPACE, "local_pods": LOCAL_PODS}
        })
    );
}
