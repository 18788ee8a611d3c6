//! Compiler speed at the scale of issue 4: 100 namespaces, 5,000 pods, 1,000
//! policies, 110 pods on this node. Prints one JSON object (medians and
//! spreads over repeated runs) for `cargo xtask bench`.
use std::{hint::black_box, time::Instant};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use na_harness::synthetic::{self, NAMESPACES, PODS_PER_NAMESPACE, POLICIES_PER_NAMESPACE, Placement};
use na_policy::{CompileOptions, Compiler};
use serde_json::{Value, json};

const LOCAL_PODS: usize = 110;
const RUNS: usize = 15;
const NODE: &str = "node-0";

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("synthetic objects parse")
}

fn pod(ns: usize, i: usize) -> Pod {
    let n = ns * PODS_PER_NAMESPACE + i;
    let mut value = synthetic::pod(ns, i, Placement::Remote);
    if synthetic::local_rank(n, LOCAL_PODS).is_some() {
        value["spec"]["nodeName"] = json!(NODE);
    }
    typed(value)
}

fn loaded() -> Compiler {
    let mut c = Compiler::new(CompileOptions {
        node_name: NODE.into(),
        node_ips: vec!["192.0.2.1".parse().unwrap()],
        allow_node: true,
        strict: false,
        audit: false,
    });
    for ns in 0..NAMESPACES {
        c.upsert_namespace(&typed::<Namespace>(synthetic::namespace(ns)));
        for i in 0..PODS_PER_NAMESPACE {
            c.upsert_pod(&pod(ns, i));
        }
        for i in 0..POLICIES_PER_NAMESPACE {
            c.upsert_policy(&typed::<NetworkPolicy>(synthetic::policy(ns, i))).unwrap();
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
        let mut changed: Pod = typed(synthetic::pod(run % NAMESPACES, 1, Placement::Remote));
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
