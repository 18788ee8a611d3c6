//! Scale and memory: the node's one-time program verification; the agent
//! enforcing 110 local pods of a 5,000-pod, 1,000-policy cluster; load and
//! attach time per pod; map memory per pod and for the node; how fast the
//! sweeper reclaims a full conntrack table.
use std::{
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use aya::maps::{HashMap, MapData};
use na_agent::{
    datapath::{AttachMode, Datapath, Origin, PodRules, open_pinned},
    pod_id::PodId,
};
use na_common::{
    conntrack::{FlowKey, FlowState},
    names,
};
use na_harness::synthetic::{self, NAMESPACES, PODS_PER_NAMESPACE, POLICIES_PER_NAMESPACE, Placement};
use serde_json::{Value, json};

use crate::{
    Figures, stats,
    support::{
        Env,
        agent::{Agent, Manifests, NODE, status},
    },
};

const LOCAL_PODS: usize = 110;
/// Pods timed through a load, attach and detach before the agent starts.
const TIMED_ATTACHES: usize = 20;
/// Pods on the node whose veths never appear.
const PENDING_PODS: usize = 50;
/// The agent's default `--spare-slots`.
const SPARE_SLOTS: usize = 8;

pub fn run(full: bool) -> Result<Figures> {
    let idle_window = if full { Duration::from_secs(20) } else { Duration::from_secs(5) };
    // Local pods in rank order: the harness numbers their addresses so.
    let mut local = vec![(String::new(), String::new()); LOCAL_PODS];
    for ns in 0..NAMESPACES {
        for i in 0..PODS_PER_NAMESPACE {
            if let Some(k) = synthetic::local_rank(ns * PODS_PER_NAMESPACE + i, LOCAL_PODS) {
                local[k] = (format!("ns-{ns}"), format!("pod-{i}"));
            }
        }
    }
    let refs: Vec<(&str, &str)> = local.iter().map(|(n, p)| (n.as_str(), p.as_str())).collect();
    eprintln!("bench: scale: creating {LOCAL_PODS} pods");
    let env = Env::without_servers(AttachMode::default(), &refs)?;
    let mut f = Figures::new();

    // The one verification a node (and an upgrade) pays; every pod after it
    // only gets maps and links.
    {
        let programs = env.dp.programs()?;
        let programs = programs.as_ref().context("no programs")?;
        let Origin::Verified { millis } = programs.origin else { bail!("fresh pin root, yet programs were adopted") };
        f.insert("program_verify_ms".into(), json!(millis));
        let pin = programs.pin(env.dp.layout(), names::PROG_INGRESS);
        let info = aya::programs::ProgramInfo::from_pin(&pin)?;
        f.insert("program_verified_insns".into(), json!(info.verified_instruction_count()));
        f.insert("program_insns".into(), json!(info.size_translated().unwrap_or(0) / 8));
    }

    let timed = &local[..TIMED_ATTACHES];
    let pod = PodId::new(&timed[0].0, &timed[0].1);
    // As the agent runs it: slots made ahead (its default count).
    let dp = env.dp.clone().with_spare_slots(SPARE_SLOTS);
    drop(dp.programs()?);
    let attach_ms = time_attaches(&env, &dp, timed, || {
        f.insert("map_memory_per_pod_kib".into(), json!(map_memory_kib(&env, &pod)?));
        Ok(())
    })?;
    f.insert("load_attach_per_pod_ms".into(), json!(stats::round(stats::median(&attach_ms), 1)));
    f.insert("load_attach_per_pod_max_ms".into(), json!(stats::round(stats::max(&attach_ms), 1)));
    // The same with TCX links instead of clsact filters: a TCX attachment
    // waits for RCU grace periods under the RTNL lock, a filter does not.
    // One handle making spares at a time.
    drop(dp);
    let tcx = Datapath::new(env.dp.layout().clone(), AttachMode::Tcx)?.with_spare_slots(SPARE_SLOTS);
    let tcx_ms = time_attaches(&env, &tcx, timed, || Ok(()))?;
    drop(tcx);
    f.insert("load_attach_per_pod_tcx_ms".into(), json!(stats::round(stats::median(&tcx_ms), 1)));
    f.insert("load_attach_per_pod_tcx_max_ms".into(), json!(stats::round(stats::max(&tcx_ms), 1)));

    let manifests = Manifests::new();
    let status_file = manifests.1.join("status.json");
    write_cluster(&env, &manifests, &local, true);
    let (agent, took) = start_agent(&env, &manifests, &status_file)?;
    f.insert("startup_110_pods_ms".into(), json!(stats::round(took.as_secs_f64() * 1e3, 0)));
    let pid = agent.pid();
    f.insert("agent_startup_cpu_s".into(), json!(stats::round(cpu_seconds(pid)?, 2)));
    // The programs verified above are this agent's version: it adopts them.
    f.insert("startup_programs".into(), status(&status_file)["programs"]["origin"].clone());
    let pending = status(&status_file)["pending"].as_array().map_or(0, Vec::len);
    ensure!(pending == PENDING_PODS, "{pending} pods pending, not {PENDING_PODS}");
    // What every reconcile rewrites (on a thread of its own).
    let status_kib = std::fs::metadata(&status_file)?.len() as f64 / 1024.0;
    f.insert("status_file_kib".into(), json!(stats::round(status_kib, 1)));
    let mut pods_kib = 0;
    for (ns, name) in &local {
        pods_kib += map_memory_kib(&env, &PodId::new(ns, name))?;
    }
    let shared_kib = shared_map_memory_kib(&env)?;
    f.insert("map_memory_shared_kib".into(), json!(shared_kib));
    let spares_kib = spare_map_memory_kib(&env)?;
    f.insert("map_memory_spare_slots_kib".into(), json!(spares_kib));
    let all_kib = pods_kib + shared_kib + spares_kib;
    f.insert("map_memory_110_pods_mib".into(), json!(stats::round(all_kib as f64 / 1024.0, 1)));
    std::thread::sleep(Duration::from_secs(2));
    let rss_kib = proc_status_kib(pid, "VmRSS")?;
    f.insert("agent_rss_mib".into(), json!(stats::round(rss_kib / 1024.0, 1)));
    f.insert("agent_peak_rss_mib".into(), json!(stats::round(proc_status_kib(pid, "VmHWM")? / 1024.0, 1)));
    let before = cpu_seconds(pid)?;
    std::thread::sleep(idle_window);
    let idle = (cpu_seconds(pid)? - before) / idle_window.as_secs_f64() * 100.0;
    f.insert("agent_idle_cpu_percent".into(), json!(stats::round(idle, 2)));
    f.insert(
        "scale".into(),
        json!({"local_pods": LOCAL_PODS, "pending_pods": PENDING_PODS, "cluster_pods": NAMESPACES * PODS_PER_NAMESPACE,
               "policies": NAMESPACES * POLICIES_PER_NAMESPACE}),
    );
    agent.kill();
    // An agent restart (an upgrade of the agent alone, a crash): programs,
    // maps and links are all adopted from their pins.
    let _ = std::fs::remove_file(&status_file);
    let (agent, took) = start_agent(&env, &manifests, &status_file)?;
    f.insert("restart_110_pods_ms".into(), json!(stats::round(took.as_secs_f64() * 1e3, 0)));
    f.insert("agent_restart_cpu_s".into(), json!(stats::round(cpu_seconds(agent.pid())?, 2)));
    agent.kill();
    // The same node in a cluster of its own pods only: what the others cost.
    write_cluster(&env, &manifests, &local, false);
    let _ = std::fs::remove_file(&status_file);
    let (agent, _) = start_agent(&env, &manifests, &status_file)?;
    std::thread::sleep(Duration::from_secs(2));
    let alone_kib = proc_status_kib(agent.pid(), "VmRSS")?;
    f.insert("agent_rss_local_pods_only_mib".into(), json!(stats::round(alone_kib / 1024.0, 1)));
    let others = (NAMESPACES * PODS_PER_NAMESPACE - LOCAL_PODS) as f64;
    f.insert("bytes_per_cluster_pod".into(), json!(stats::round((rss_kib - alone_kib) * 1024.0 / others, 0)));
    agent.kill();

    let (swept, seconds) = sweep_full_table(&env, &local[0])?;
    f.insert("conntrack_capacity_per_pod".into(), json!(env.dp.flows_per_pod()));
    f.insert("sweep_entries_per_s".into(), json!(stats::round(swept as f64 / seconds, 0)));
    Ok(f)
}

/// Starts the agent and waits until it has attached every local pod.
fn start_agent(env: &Env, manifests: &Manifests, status_file: &std::path::PathBuf) -> Result<(Agent, Duration)> {
    let t0 = Instant::now();
    let agent = Agent::start(env, manifests, status_file);
    let deadline = t0 + Duration::from_secs(300);
    while status(status_file)["attached"].as_array().is_none_or(|a| a.len() < LOCAL_PODS) {
        if Instant::now() > deadline {
            bail!("the agent did not attach {LOCAL_PODS} pods in 300 s: {}", status(status_file)["errors"]);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((agent, t0.elapsed()))
}

/// Attaches and detaches each of `pods` with `dp`, timing the attachments
/// (milliseconds); `first` runs while the first pod is attached.
fn time_attaches(
    env: &Env,
    dp: &Datapath,
    pods: &[(String, String)],
    mut first: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    let mut ms = Vec::new();
    for (ns, name) in pods {
        let key = format!("{ns}/{name}");
        let (id, veth, addrs) = (PodId::new(ns, name), env.pod(&key).host_veth.clone(), env.addrs(&key));
        // A pod start in the steady state: the spares the last one took
        // were made again in the background meanwhile.
        let deadline = Instant::now() + Duration::from_secs(10);
        while dp.spare_slots()? < SPARE_SLOTS {
            ensure!(Instant::now() < deadline, "the spare slots were not made again within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = Instant::now();
        env.node.netns().run(|| dp.attach_pod(&id, &veth, addrs, &PodRules::default()))??;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        if ms.len() == 1 {
            first()?;
        }
        env.node.netns().run(|| dp.detach_pod(&id, Some(&veth)))??;
    }
    Ok(ms)
}

/// The synthetic cluster with `local` pods on the agent's node (and the
/// pending ones); without `remote`, no pod of other nodes.
fn write_cluster(env: &Env, manifests: &Manifests, local: &[(String, String)], remote: bool) {
    let namespaces: Vec<Value> = (0..NAMESPACES).map(synthetic::namespace).collect();
    manifests.write("namespaces.yaml", &namespaces);
    let mut pods = Vec::new();
    for ns in 0..NAMESPACES {
        for i in 0..PODS_PER_NAMESPACE {
            let placement = match synthetic::local_rank(ns * PODS_PER_NAMESPACE + i, LOCAL_PODS) {
                Some(k) => {
                    let p = env.pod(&format!("{}/{}", local[k].0, local[k].1));
                    Placement::Local { node: NODE, ip: p.ip, ip6: p.ip6 }
                }
                None if remote => Placement::Remote,
                None => continue,
            };
            pods.push(synthetic::pod(ns, i, placement));
        }
    }
    // Scheduled here, their sandboxes never made: pending, and costing
    // nothing while nothing changes.
    pods.extend((0..PENDING_PODS).map(|i| {
        let (ip, ip6) = (std::net::Ipv4Addr::new(10, 254, 0, i as u8), format!("fd00:254::{i:x}").parse().unwrap());
        let mut pod = synthetic::pod(0, i, Placement::Local { node: NODE, ip, ip6 });
        pod["metadata"]["name"] = json!(format!("pending-{i}"));
        pod
    }));
    manifests.write("pods.yaml", &pods);
    let policies: Vec<Value> =
        (0..NAMESPACES).flat_map(|ns| (0..POLICIES_PER_NAMESPACE).map(move |i| synthetic::policy(ns, i))).collect();
    manifests.write("policies.yaml", &policies);
}

/// Kernel memory charged to a pod's own maps.
fn map_memory_kib(env: &Env, pod: &PodId) -> Result<u64> {
    let pins = names::POD_MAPS.map(|name| env.root().join("maps").join(pod.pin_name(name)));
    Ok(memlock_bytes(&pins)? / 1024)
}

/// Kernel memory charged to the node's shared maps.
fn shared_map_memory_kib(env: &Env) -> Result<u64> {
    let pins = names::GLOBAL_MAPS.map(|name| env.dp.layout().global_map(name));
    Ok(memlock_bytes(&pins)? / 1024)
}

/// Kernel memory charged to the spare slots' maps (the agent's default count).
fn spare_map_memory_kib(env: &Env) -> Result<u64> {
    let layout = env.dp.layout();
    let pins: Vec<_> =
        std::fs::read_dir(layout.spares_dir())?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    Ok(memlock_bytes(&pins)? / 1024)
}

/// Sum of `memlock` in fdinfo (the kernel's own accounting) of pinned maps.
fn memlock_bytes(pins: &[std::path::PathBuf]) -> Result<u64> {
    let mut total = 0;
    for path in pins {
        let map = MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
        let fd = map.fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .context("no memlock in fdinfo")?;
    }
    Ok(total)
}

/// Fills a pod's conntrack table with idle entries and times one sweep:
/// (entries removed, seconds).
fn sweep_full_table(env: &Env, (ns, name): &(String, String)) -> Result<(usize, f64)> {
    let pod = PodId::new(ns, name);
    let path = env.root().join("maps").join(pod.pin_name(names::MAP_CONNTRACK));
    let mut table: HashMap<MapData, FlowKey, FlowState> = open_pinned(&path)?;
    for i in 0..env.dp.flows_per_pod() {
        let mut key =
            FlowKey { protocol: na_common::protocol::ICMP, family: na_common::family::IPV4, ..Default::default() };
        key.peer_addr.0[..4].copy_from_slice(&i.to_be_bytes());
        // Last seen at boot: long past the 30 s timeout of ICMP flows.
        table.insert(key, FlowState::default(), 0)?;
    }
    let t = Instant::now();
    let swept = env.dp.sweep_conntrack(&pod)?;
    let seconds = t.elapsed().as_secs_f64();
    ensure!(swept > 0, "the sweep removed nothing");
    Ok((swept, seconds))
}

/// User plus system CPU seconds of `pid`.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').context("odd stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ensure!(hz > 0.0, "no clock tick rate");
    Ok(ticks / hz)
}

pub fn proc_status_kib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} for pid {pid}"))
}
