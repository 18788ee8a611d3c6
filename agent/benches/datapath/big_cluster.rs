//! Memory at the scale of a large cluster: 150,000 pods in 3,000 namespaces
//! and 10,000 policies, watched through the fake API server in Kubernetes
//! mode (lists in pages, as from a real one), with 10 of the pods on the
//! agent's node: the agent's RSS once it enforces them, and that per
//! cluster pod.
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use na_agent::datapath::AttachMode;
use na_harness::synthetic::{self, PODS_PER_NAMESPACE, Placement};
use serde_json::json;

use crate::{
    Figures,
    scale::{cpu_seconds, proc_status_kib},
    stats,
    support::{
        Env,
        agent::{Agent, ApiInNode, NODE},
        fake_apiserver::{Cluster, NAMESPACES, PODS, POLICIES},
    },
};

const CLUSTER_NAMESPACES: usize = 3_000;
/// Namespaces with policies (the synthetic cluster's ten each).
const POLICY_NAMESPACES: usize = 1_000;
const POLICIES_PER_NAMESPACE: usize = 10;
const LOCAL_PODS: usize = 10;

pub fn run(_full: bool) -> Result<Figures> {
    // Spread over the cluster; each the first pod of its namespace.
    let local: Vec<usize> = (0..LOCAL_PODS).map(|k| k * CLUSTER_NAMESPACES / LOCAL_PODS).collect();
    let names: Vec<(String, String)> = local.iter().map(|ns| (format!("ns-{ns}"), "pod-0".to_owned())).collect();
    let refs: Vec<(&str, &str)> = names.iter().map(|(n, p)| (n.as_str(), p.as_str())).collect();
    eprintln!("bench: big cluster: building 150,000 pods");
    let env = Env::without_servers(AttachMode::default(), &refs)?;
    let mut cluster = Cluster::new();
    for ns in 0..CLUSTER_NAMESPACES {
        cluster.apply(NAMESPACES, synthetic::namespace(ns));
        for i in 0..PODS_PER_NAMESPACE {
            let placement = if i == 0 && local.contains(&ns) {
                let p = env.pod(&format!("ns-{ns}/pod-0"));
                Placement::Local { node: NODE, ip: p.ip, ip6: p.ip6 }
            } else {
                Placement::Remote
            };
            cluster.apply(PODS, synthetic::pod(ns, i, placement));
        }
    }
    for ns in 0..POLICY_NAMESPACES {
        for i in 0..POLICIES_PER_NAMESPACE {
            cluster.apply(POLICIES, synthetic::policy(ns, i));
        }
    }
    // Listed in pages: the fake's default, a server before 1.32.
    let api = ApiInNode::serve(&env, cluster);
    let (agent, took) = start(&api, &env)?;
    let cpu = cpu_seconds(agent.pid())?;
    let (rss_kib, peak_kib) = memory(&agent)?;
    let pods = CLUSTER_NAMESPACES * PODS_PER_NAMESPACE;
    let mut f = Figures::new();
    let listed = api.cluster().bytes_sent(PODS, "list");
    f.insert("api_list_bytes_per_pod_150k".into(), json!(stats::round(listed as f64 / pods as f64, 0)));
    let (watched, cpu_us) = pod_changes(&api, agent.pid())?;
    f.insert("api_watch_bytes_per_pod_change".into(), json!(stats::round(watched, 0)));
    f.insert("agent_cpu_us_per_pod_change".into(), json!(stats::round(cpu_us, 1)));
    agent.kill();
    f.insert("agent_rss_150k_pods_mib".into(), json!(stats::round(rss_kib / 1024.0, 1)));
    f.insert("agent_peak_rss_150k_pods_mib".into(), json!(stats::round(peak_kib / 1024.0, 1)));
    f.insert("bytes_per_cluster_pod_150k".into(), json!(stats::round(rss_kib * 1024.0 / pods as f64, 0)));
    f.insert("startup_150k_pods_s".into(), json!(stats::round(took.as_secs_f64(), 1)));
    f.insert("agent_startup_150k_pods_cpu_s".into(), json!(stats::round(cpu, 1)));

    // Streamed in the watches (1.32 on): the same cluster, the agent
    // restarted (its programs and pods adopted).
    {
        let mut cluster = api.cluster();
        (cluster.version, cluster.watch_list) = ((1, 33), true);
    }
    let before = api.cluster().bytes_sent(PODS, "watch");
    let lists = api.cluster().requests_to(PODS, "list").count();
    let (agent, took) = start(&api, &env)?;
    let cpu = cpu_seconds(agent.pid())?;
    let (rss_kib, peak_kib) = memory(&agent)?;
    let streamed = api.cluster().bytes_sent(PODS, "watch") - before;
    agent.kill();
    ensure!(api.cluster().requests_to(PODS, "list").count() == lists, "the restarted agent listed pods");
    f.insert("api_stream_bytes_per_pod_150k".into(), json!(stats::round(streamed as f64 / pods as f64, 0)));
    f.insert("agent_rss_150k_pods_stream_mib".into(), json!(stats::round(rss_kib / 1024.0, 1)));
    f.insert("agent_peak_rss_150k_pods_stream_mib".into(), json!(stats::round(peak_kib / 1024.0, 1)));
    f.insert("restart_150k_pods_stream_s".into(), json!(stats::round(took.as_secs_f64(), 1)));
    f.insert("agent_restart_150k_pods_stream_cpu_s".into(), json!(stats::round(cpu, 1)));
    f.insert(
        "big_cluster".into(),
        json!({"cluster_pods": pods, "namespaces": CLUSTER_NAMESPACES,
               "policies": POLICY_NAMESPACES * POLICIES_PER_NAMESPACE, "local_pods": LOCAL_PODS}),
    );
    Ok(f)
}

/// Starts the agent (a fresh status file) and waits until it enforces its
/// pods; returns it and how long that took.
fn start(api: &ApiInNode, env: &Env) -> Result<(Agent, Duration)> {
    let _ = std::fs::remove_file(&api.status_file);
    let t0 = Instant::now();
    let agent = api.agent(env);
    while api.attached() < LOCAL_PODS {
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("the agent did not attach its {LOCAL_PODS} pods in 600 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((agent, t0.elapsed()))
}

/// The agent's RSS once settled, and its peak (KiB).
fn memory(agent: &Agent) -> Result<(f64, f64)> {
    std::thread::sleep(Duration::from_secs(2));
    Ok((proc_status_kib(agent.pid(), "VmRSS")?, proc_status_kib(agent.pid(), "VmHWM")?))
}

/// Pod changes the steady state sees.
const POD_CHANGES: usize = 1_000;

/// Relabels [`POD_CHANGES`] pods of other nodes in the server's store (a
/// rollout's churn) and waits until the agent has taken them all in; returns
/// the bytes its pod watch received and the CPU time it spent, per change
/// (microseconds).
fn pod_changes(api: &ApiInNode, pid: u32) -> Result<(f64, f64)> {
    let (watched, cpu) = (api.cluster().bytes_sent(PODS, "watch"), cpu_seconds(pid)?);
    {
        let mut cluster = api.cluster();
        let changed: Vec<serde_json::Value> = cluster
            .objects(PODS)
            .filter(|p| p["spec"]["nodeName"] != NODE)
            .take(POD_CHANGES)
            .map(|p| {
                let mut p = p.clone();
                p["metadata"]["labels"]["rollout"] = json!("2");
                p
            })
            .collect();
        for pod in changed {
            cluster.apply(PODS, pod);
        }
    }
    // Taken in once the watch has sent everything and the agent is idle.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (0, 0.0);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = (api.cluster().bytes_sent(PODS, "watch"), cpu_seconds(pid)?);
        if now.0 == last.0 && now.1 - last.1 < 0.005 {
            let per = |total: f64| total / POD_CHANGES as f64;
            return Ok((per((now.0 - watched) as f64), per((now.1 - cpu) * 1e6)));
        }
        if Instant::now() > deadline {
            bail!("the agent did not take in {POD_CHANGES} pod changes within 60 s");
        }
        last = now;
    }
}
