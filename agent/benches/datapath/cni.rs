//! Pod start through CNI: what the `na-cni` ADD adds to a pod's start, and
//! how many packets reach a new pod before its policy holds.
//!
//! Each start makes a pod through the real `ptp` plugin, then `na-cni`. A
//! client floods the address the pod is about to get with UDP from before
//! ADD; a receiver in the pod opens when ADD returns, as the pod's first
//! container would, and counts what arrives for [`WINDOW`]. The pod's
//! policy closes its ingress, so each datagram counted passed before
//! enforcement. Each configuration gets a node and an agent of its own:
//! TCX links, clsact filters, and the same starts without `na-cni` (the
//! agent finds the veth from the kernel's link and route notifications, the
//! pod's address known to it beforehand, the most it could know).
use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use na_agent::{datapath::AttachMode, source::manifests};
use na_harness::cni::Chain;
use serde_json::{Value, json};

use crate::{
    Figures, stats,
    support::{
        Env,
        agent::{Agent, Manifests, NODE, binary, cni_socket, policy, status, wait_until},
    },
};

/// How long the pod's receiver counts after ADD returns.
const WINDOW: Duration = Duration::from_millis(100);
/// Pause between flood datagrams.
const FLOOD_GAP: Duration = Duration::from_micros(100);
const PORT: u16 = 9;

pub fn run(_full: bool) -> Result<Figures> {
    let mut f = Figures::new();
    for (suffix, flags) in [("", &[][..]), ("_tcx", &["--attach-mode", "tcx"][..])] {
        let (add_ms, counted) = with_hook(flags)?;
        f.insert(format!("cni_add_p50_ms{suffix}"), json!(stats::round(stats::quantile(&add_ms, 0.5), 1)));
        f.insert(format!("cni_add_p99_ms{suffix}"), json!(stats::round(stats::quantile(&add_ms, 0.99), 1)));
        f.insert(format!("cni_add_max_ms{suffix}"), json!(stats::round(stats::max(&add_ms), 1)));
        f.insert(format!("packets_before_enforcement{suffix}"), json!(counted));
    }
    f.insert("packets_before_enforcement_without_cni".into(), json!(without_hook()?));
    let burst = burst()?;
    f.insert(format!("cni_add_burst_{BURST}_p50_ms"), json!(stats::round(stats::quantile(&burst, 0.5), 1)));
    f.insert(format!("cni_add_burst_{BURST}_max_ms"), json!(stats::round(stats::max(&burst), 1)));
    f.insert("cni_pod_starts".into(), json!(STARTS));
    Ok(f)
}

/// Pod starts per configuration: the /24 holds all of one.
const STARTS: usize = 100;
/// Pods started at once (a node booting, a deployment scaled up).
const BURST: usize = 20;

/// A node with a client pod, and an agent (with `flags`) whose manifests
/// hold namespace x, the closed policy and `pods`.
struct Node {
    env: Env,
    manifests: Manifests,
    status_file: std::path::PathBuf,
    objects: Vec<Value>,
    _agent: Agent,
}

impl Node {
    fn start(flags: &[&str], pods: impl Iterator<Item = Value>) -> Result<Self> {
        let env = Env::with_pods(AttachMode::default(), &[("x", "client")])?;
        let manifests = Manifests::new();
        let status_file = manifests.1.join("status.json");
        let closed =
            policy("closed", json!({"podSelector": {"matchLabels": {"app": "new"}}, "policyTypes": ["Ingress"]}));
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
        let objects: Vec<Value> = [ns, closed].into_iter().chain(pods).collect();
        manifests.write("cluster.yaml", &objects);
        let _agent = Agent::start_with(&env, &manifests, &status_file, flags);
        wait_until("the agent answers CNI calls", || cni_socket(&status_file).exists());
        Ok(Self { env, manifests, status_file, objects, _agent })
    }

    fn chain(&self, plugins: &[Value]) -> Result<Chain> {
        let na_cni = binary("na-cni", option_env!("CARGO_BIN_EXE_na-cni"));
        let tag = self.manifests.1.file_name().context("a state directory")?.to_string_lossy();
        let dir = na_cni.parent().context("a directory")?;
        Ok(plugins.iter().fold(Chain::ptp(&tag), |chain, p| chain.then(p.clone(), dir)))
    }
}

/// Starts through ptp and na-cni: na-cni's ADD times, and the datagrams counted.
fn with_hook(flags: &[&str]) -> Result<(Vec<f64>, u64)> {
    let mut node = Node::start(flags, (0..STARTS).map(|i| new_pod(&format!("new-{i}"), None)))?;
    let chain = node.chain(&[json!({"type": "na-cni", "socket": cni_socket(&node.status_file)})])?;
    let (mut add_ms, mut counted) = (Vec::new(), 0);
    for i in 0..STARTS {
        let name = format!("new-{i}");
        counted += start(&mut node.env, &chain, &name, |_| Ok(()))?;
        let calls = chain.take_calls();
        let add = calls.iter().find(|c| c.plugin == "na-cni" && c.command == "ADD").context("na-cni ran")?;
        add_ms.push(add.took.as_secs_f64() * 1e3);
        node.env.node.del_pod_cni(&chain, &format!("x/{name}"))?.map_err(|e| anyhow::anyhow!("DEL: {e}"))?;
    }
    Ok((add_ms, counted))
}

/// [`BURST`] pods started at once, their ADDs concurrent: na-cni's ADD times.
fn burst() -> Result<Vec<f64>> {
    let names: Vec<String> = (0..BURST).map(|i| format!("burst-{i}")).collect();
    let mut node = Node::start(&[], names.iter().map(|n| new_pod(n, None)))?;
    let chain = node.chain(&[json!({"type": "na-cni", "socket": cni_socket(&node.status_file)})])?;
    let pods: Vec<(&str, &str)> = names.iter().map(|n| ("x", n.as_str())).collect();
    for outcome in node.env.node.add_pods_cni(&chain, &pods)? {
        outcome.map_err(|e| anyhow::anyhow!("ADD: {e}"))?;
    }
    let calls = chain.take_calls();
    Ok(calls
        .iter()
        .filter(|c| c.plugin == "na-cni" && c.command == "ADD")
        .map(|c| c.took.as_secs_f64() * 1e3)
        .collect())
}

/// Starts through ptp alone, the agent told each pod's address beforehand:
/// the datagrams counted.
fn without_hook() -> Result<u64> {
    let mut node = Node::start(&[], std::iter::empty())?;
    let chain = node.chain(&[])?;
    let mut counted = 0;
    for i in 0..STARTS {
        let name = format!("new-{i}");
        let Node { env, manifests, status_file, objects, .. } = &mut node;
        counted += start(env, &chain, &name, |ip| {
            objects.push(new_pod(&name, Some(ip)));
            manifests.write("cluster.yaml", objects);
            let want = manifests::load_dir(&manifests.0).revision;
            wait_until("the agent read the pod", || status(status_file)["revision"] == want.as_str());
            Ok(())
        })?;
        env.node.del_pod_cni(&chain, &format!("x/{name}"))?.map_err(|e| anyhow::anyhow!("DEL: {e}"))?;
    }
    Ok(counted)
}

/// A pod of the closed app as the API server shows it: without an address
/// while its sandbox is made, or with `ip`.
fn new_pod(name: &str, ip: Option<Ipv4Addr>) -> Value {
    let status = match ip {
        Some(ip) => json!({"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}),
        None => json!({"phase": "Pending"}),
    };
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "x", "labels": {"app": "new"}, "uid": format!("uid-{name}")},
           "spec": {"nodeName": NODE, "containers": [{"name": "c"}]}, "status": status})
}

/// Starts pod `name` through `chain` under a flood to its coming address
/// (`before` runs with that address first); the datagrams its receiver
/// counts in [`WINDOW`] after ADD returns.
fn start(env: &mut Env, chain: &Chain, name: &str, before: impl FnOnce(Ipv4Addr) -> Result<()>) -> Result<u64> {
    let ip = chain.next_ipv4()?;
    before(ip)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (ns, stop, sent) = (env.pod("x/client").netns().open()?, stop.clone(), sent.clone());
        std::thread::spawn(move || -> Result<()> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            let to = SocketAddr::from((ip, PORT));
            while !stop.load(Ordering::Relaxed) {
                // Unreachable at first (no route yet): errors are expected.
                let _ = socket.send_to(b"x", to);
                sent.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(FLOOD_GAP);
            }
            Ok(())
        })
    };
    // Let the flood run before the pod exists.
    std::thread::sleep(Duration::from_millis(5));
    let added = env.node.add_pod_cni(chain, "x", name);
    let counted = match added {
        Ok(Ok(pod)) => {
            anyhow::ensure!(pod.ip == ip, "host-local gave {} where {ip} was expected", pod.ip);
            pod.netns().run(receive)??
        }
        Ok(Err(e)) => Err(anyhow::anyhow!("ADD of {name}: {e}"))?,
        Err(e) => Err(e)?,
    };
    stop.store(true, Ordering::Relaxed);
    flood.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
    anyhow::ensure!(sent.load(Ordering::Relaxed) > 100, "the flood hardly ran");
    Ok(counted)
}

/// Datagrams arriving on [`PORT`] within [`WINDOW`] of now.
fn receive() -> Result<u64> {
    let socket = UdpSocket::bind(("0.0.0.0", PORT))?;
    let deadline = Instant::now() + WINDOW;
    let mut n = 0;
    let mut buf = [0u8; 16];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(n);
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv(&mut buf) {
            Ok(_) => n += 1,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
