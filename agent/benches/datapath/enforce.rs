//! Time to enforce, with the agent in local mode: (a) a policy change until
//! a probe sees the verdict change, (b) a new pod's manifest until its policy
//! holds, (c) one namespace label change that adds or removes 1,000 peer pods
//! from the local pods' rules, until the agent reports them written.
//!
//! Local mode waits 2 ms for a burst of file writes to end before it reads
//! the directory: every local-mode figure here includes that debounce. (a)
//! is measured in Kubernetes mode too, against the fake API server.
use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use na_agent::{datapath::AttachMode, source::manifests};
use serde_json::{Value, json};

use crate::{
    Figures, stats,
    support::{
        Env,
        agent::{Agent, ApiInNode, Manifests, pod, policy, status, wait_until},
        fake_apiserver::{Cluster, NAMESPACES, PODS, POLICIES},
    },
};

/// A probe attempt that has not connected by then counts as dropped.
const ATTEMPT: Duration = Duration::from_millis(10);
/// Consecutive blocked attempts that count as blocked.
const CONFIRM: u32 = 3;
/// Longest wait for a verdict to change.
const GIVE_UP: Duration = Duration::from_secs(10);
const PEERS: usize = 1_000;

pub fn run(full: bool) -> Result<Figures> {
    let (changes, new_pods, relabels) = if full { (100, 50, 10) } else { (30, 30, 3) };
    let mut names: Vec<(String, String)> = vec![("x".into(), "client".into()), ("x".into(), "server".into())];
    names.extend((0..new_pods).map(|i| ("x".to_owned(), format!("new-{i}"))));
    let refs: Vec<(&str, &str)> = names.iter().map(|(n, p)| (n.as_str(), p.as_str())).collect();
    let env = Env::with_pods(AttachMode::default(), &refs)?;
    let manifests = Manifests::new();
    let status_file = manifests.1.join("status.json");
    manifests.write("ns.yaml", &[namespace("x", "green"), namespace("peers", "red")]);
    let mut pods = vec![pod(&env, "x/client", "client"), pod(&env, "x/server", "server")];
    manifests.write("pods.yaml", &pods);
    manifests.write("peers.yaml", &(0..PEERS).map(peer).collect::<Vec<_>>());
    manifests.write(
        "policies.yaml",
        &[
            policy("new-closed", json!({"podSelector": {"matchLabels": {"app": "new"}}})),
            policy(
                "from-blue",
                json!({"podSelector": {"matchLabels": {"app": "server"}},
              "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]}),
            ),
        ],
    );
    let admit = || manifests.write("admit.yaml", &[admit_client()]);
    admit();
    let _agent = Agent::start(&env, &manifests, &status_file);
    wait_until("client and server are attached", || {
        status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 2)
    });

    // (a) the policy admitting the client goes and comes back (from-blue
    // keeps the server isolated meanwhile).
    let remove = || std::fs::remove_file(manifests.0.join("admit.yaml")).expect("removing admit.yaml");
    let policy_ms = toggle_admission(&env, changes, remove, admit)?;

    // (b) a new pod's manifest lands; its policy (closed ingress) must hold.
    let mut pod_ms = Vec::new();
    for i in 0..new_pods {
        let key = format!("x/new-{i}");
        let to = SocketAddr::new(env.pod(&key).ip.into(), 80);
        if !reaches(&env, to) {
            bail!("{key} is unreachable before the agent knows it");
        }
        pods.push(pod(&env, &key, "new"));
        let t0 = Instant::now();
        manifests.write("pods.yaml", &pods);
        pod_ms.push(until(&env, to, false, t0)?);
    }

    // (c) the peers' namespace turns blue and back: 1,000 pods join and leave
    // the server's ingress rules (2,000 prefixes, both families).
    let mut relabel_ms = Vec::new();
    for i in 0..relabels * 2 {
        let team = if i % 2 == 0 { "blue" } else { "red" };
        let t0 = Instant::now();
        manifests.write("ns.yaml", &[namespace("x", "green"), namespace("peers", team)]);
        let want = manifests::load_dir(&manifests.0).revision;
        let deadline = t0 + GIVE_UP;
        while status(&status_file)["revision"] != want.as_str() {
            if Instant::now() > deadline {
                bail!(
                    "the agent did not apply the relabel within {GIVE_UP:?}: want {want}, status {}",
                    status(&status_file)
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        relabel_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }

    let mut f = Figures::new();
    for (key, samples) in [("policy_to_enforced", &policy_ms), ("pod_to_enforced", &pod_ms)] {
        f.insert(format!("{key}_p50_ms"), json!(stats::round(stats::quantile(samples, 0.5), 1)));
        f.insert(format!("{key}_p99_ms"), json!(stats::round(stats::quantile(samples, 0.99), 1)));
        f.insert(format!("{key}_max_ms"), json!(stats::round(stats::max(samples), 1)));
        f.insert(format!("{key}_samples"), json!(samples.len()));
    }
    let kube_ms = kube_policy_changes(changes)?;
    f.insert("kube_policy_to_enforced_p50_ms".into(), json!(stats::round(stats::quantile(&kube_ms, 0.5), 1)));
    f.insert("kube_policy_to_enforced_p99_ms".into(), json!(stats::round(stats::quantile(&kube_ms, 0.99), 1)));
    f.insert("kube_policy_to_enforced_samples".into(), json!(kube_ms.len()));
    f.insert("relabel_1000_pods_ms".into(), json!(stats::round(stats::median(&relabel_ms), 1)));
    f.insert("relabel_1000_pods_max_ms".into(), json!(stats::round(stats::max(&relabel_ms), 1)));
    f.insert("relabel_1000_pods_samples".into(), json!(relabel_ms.len()));
    Ok(f)
}

/// (a) again with the agent in Kubernetes mode, watching the fake API server
/// inside the node: from the policy's change in the API server's store (its
/// watch event sent at once) until a probe sees the verdict change. Its own
/// node, so the two agents never meet.
fn kube_policy_changes(changes: usize) -> Result<Vec<f64>> {
    let env = Env::with_pods(AttachMode::default(), &[("x", "client"), ("x", "server")])?;
    let mut cluster = Cluster::new();
    cluster.apply(NAMESPACES, namespace("x", "green"));
    cluster.apply(PODS, pod(&env, "x/client", "client"));
    cluster.apply(PODS, pod(&env, "x/server", "server"));
    let closed =
        policy("server-closed", json!({"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"]}));
    cluster.apply(POLICIES, closed);
    cluster.apply(POLICIES, admit_client());
    let api = ApiInNode::serve(&env, cluster);
    let _agent = api.agent(&env);
    wait_until("client and server are attached", || api.attached() == 2);
    let remove = || api.cluster().delete(POLICIES, "x/admit-client");
    toggle_admission(&env, changes, remove, || api.cluster().apply(POLICIES, admit_client()))
}

/// The policy admitting the client into the server.
fn admit_client() -> Value {
    policy(
        "admit-client",
        json!({"podSelector": {"matchLabels": {"app": "server"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}),
    )
}

/// `changes` times, the policy admitting the client goes (`remove`) and
/// comes back (`restore`): milliseconds from each change until a probe from
/// the client to the server sees it.
fn toggle_admission(
    env: &Env,
    changes: usize,
    mut remove: impl FnMut(),
    mut restore: impl FnMut(),
) -> Result<Vec<f64>> {
    let server = SocketAddr::new(env.pod("x/server").ip.into(), 80);
    let mut ms = Vec::new();
    for _ in 0..changes {
        let t0 = Instant::now();
        remove();
        ms.push(until(env, server, false, t0)?);
        let t0 = Instant::now();
        restore();
        ms.push(until(env, server, true, t0)?);
    }
    Ok(ms)
}

/// Milliseconds from `t0` until a fresh connection to `to` from the client
/// succeeds (`open`) or not; each attempt's start is when it was seen. A
/// success is conclusive; a block must be seen [`CONFIRM`] times in a row, as
/// a busy node can make one connection slow.
fn until(env: &Env, to: SocketAddr, open: bool, t0: Instant) -> Result<f64> {
    let mut first_block = None;
    let mut blocks = 0;
    while t0.elapsed() < GIVE_UP {
        let at = t0.elapsed();
        let reached = reaches(env, to);
        if open && reached {
            return Ok(at.as_secs_f64() * 1e3);
        }
        if !open {
            blocks = if reached { 0 } else { blocks + 1 };
            if blocks == 1 {
                first_block = Some(at);
            }
            if blocks == CONFIRM {
                return Ok(first_block.unwrap_or(at).as_secs_f64() * 1e3);
            }
        }
    }
    bail!("{to} did not become {} within {GIVE_UP:?}", if open { "reachable" } else { "blocked" })
}

fn reaches(env: &Env, to: SocketAddr) -> bool {
    let attempt = env.pod("x/client").netns().run(move || TcpStream::connect_timeout(&to, ATTEMPT));
    matches!(attempt, Ok(Ok(_)))
}

fn namespace(name: &str, team: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"team": team}}})
}

/// Peer pod `i` on another node.
fn peer(i: usize) -> Value {
    let ip = IpAddr::from([10, 99, (i >> 8) as u8, i as u8]);
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("peer-{i}"), "namespace": "peers", "labels": {"app": "peer"}, "uid": format!("uid-peer-{i}")},
           "spec": {"nodeName": "elsewhere", "containers": [{"name": "c"}]},
           "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}, {"ip": format!("fd99::{i:x}")}]}})
}
