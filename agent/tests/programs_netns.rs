//! The node's one program pair across agent restarts and upgrades: a restart
//! verifies nothing (the pinned programs are adopted), an upgrade verifies
//! once and swaps every pod onto the new programs under traffic, keeping
//! their maps, established flows, and every denial.
//! Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces).
mod support;

use std::{
    collections::BTreeSet,
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use aya::programs::loaded_programs;
use na_agent::{bpffs::PinLayout, datapath::AttachMode, datapath::inventory};
use na_harness::Probe;
use serde_json::json;
use support::{
    Env,
    agent::{Agent, Manifests, echoes, pod, policy, status, wait_until},
};

/// Kernel ids of every program named like ours, node-wide.
fn our_program_ids() -> BTreeSet<u32> {
    loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| matches!(p.name_as_str(), Some("handle_ingress" | "handle_egress")))
        .map(|p| p.id())
        .collect()
}

/// (pod, direction) -> program id of its attachment, and every pod map id.
fn attachments(layout: &PinLayout) -> (BTreeSet<(String, String, u32)>, BTreeSet<u32>) {
    let all = inventory::attachments(layout).unwrap();
    let progs = all.iter().map(|a| (a.pod_id.clone(), a.direction.clone(), a.prog_id)).collect();
    let maps = all.iter().flat_map(|a| a.maps.iter().take(3).map(|m| m.id)).collect();
    (progs, maps)
}

/// Probes `c -> a` on TCP/80 (denied by policy) until stopped, counting
/// connections that got through. Bounded: at most 2 minutes.
struct DenialWatch {
    stop: Arc<AtomicBool>,
    leaks: Arc<AtomicU32>,
    probes: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DenialWatch {
    fn start(env: &Env) -> Self {
        let stop: Arc<AtomicBool> = Arc::default();
        let (leaks, probes): (Arc<AtomicU32>, Arc<AtomicU32>) = Default::default();
        let c = env.pod("x/c").netns().open().unwrap();
        let a = SocketAddr::new(env.pod("x/a").ip.into(), 80);
        let (s, l, p) = (Arc::clone(&stop), Arc::clone(&leaks), Arc::clone(&probes));
        let thread = std::thread::spawn(move || {
            nix::sched::setns(c, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                if TcpStream::connect_timeout(&a, Duration::from_millis(100)).is_ok() {
                    l.fetch_add(1, Ordering::Relaxed);
                }
                p.fetch_add(1, Ordering::Relaxed);
            }
        });
        Self { stop, leaks, probes, thread: Some(thread) }
    }

    /// (leaks, probes).
    fn finish(mut self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (self.leaks.load(Ordering::Relaxed), self.probes.load(Ordering::Relaxed))
    }
}

impl Drop for DenialWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn restart_adopts_the_programs_and_an_upgrade_swaps_them_under_traffic() {
    let env = Env::new(AttachMode::Auto).unwrap();
    let layout = PinLayout::new(env.root());
    let manifests = Manifests::new();
    let status_file = manifests.1.join("status.json");
    manifests.write("ns.yaml", &[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})]);
    manifests.write("pods.yaml", &[pod(&env, "x/a", "a"), pod(&env, "x/b", "b"), pod(&env, "x/c", "c")]);
    manifests.write(
        "a-from-b.yaml",
        &[policy(
            "a-from-b",
            json!({"podSelector": {"matchLabels": {"app": "a"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}),
        )],
    );
    let attached = || status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 3);
    let programs = || status(&status_file)["programs"].clone();

    let ours_before = our_program_ids();
    let agent = Agent::start(&env, &manifests, &status_file);
    wait_until("all three pods are attached", attached);
    assert_eq!(programs()["origin"], "verified");
    let (progs, maps) = attachments(&layout);
    let first: BTreeSet<u32> = progs.iter().map(|p| p.2).collect();
    assert_eq!(first.len(), 2, "every pod runs the node's two programs: {progs:?}");
    assert_eq!(our_program_ids().difference(&ours_before).count(), 2, "two programs loaded for three pods");
    assert!(env.reaches("x/b", "x/a", Probe::tcp(80)) && !env.reaches("x/c", "x/a", Probe::tcp(80)));

    // A long-lived connection from b to a that must outlive restart and
    // upgrade, and a prober that must never get from c into a meanwhile.
    let mut conn = env.connect("x/b", "x/a", 80);
    assert!(echoes(&mut conn));
    let watch = DenialWatch::start(&env);

    // Restart: nothing is loaded, nothing changes hands.
    agent.kill();
    std::fs::remove_file(&status_file).unwrap();
    let loaded_before_restart = our_program_ids();
    let agent = Agent::start(&env, &manifests, &status_file);
    wait_until("all three pods are attached again", attached);
    assert_eq!(programs()["origin"], "adopted");
    assert_eq!(our_program_ids(), loaded_before_restart, "a restart loads (and verifies) no program");
    assert_eq!(attachments(&layout), (progs.clone(), maps.clone()), "same programs and maps for every pod");
    assert!(echoes(&mut conn), "the flow lives across the restart");

    // Upgrade: other programs (here: other load-time settings, so another
    // version) are verified once and swapped into every pod's attachment.
    agent.kill();
    std::fs::remove_file(&status_file).unwrap();
    let agent = Agent::start_with(&env, &manifests, &status_file, &["--ebpf-log-level", "error"]);
    wait_until("all three pods are attached after the upgrade", attached);
    assert_eq!(programs()["origin"], "verified");
    let new_ids = our_program_ids().difference(&loaded_before_restart).count();
    assert_eq!(new_ids, 2, "the new version is loaded once, not per pod");
    wait_until("every pod runs the new programs", || {
        let (now, _) = attachments(&layout);
        now.iter().all(|p| !first.contains(&p.2)) && now.iter().map(|p| p.2).collect::<BTreeSet<_>>().len() == 2
    });
    assert_eq!(attachments(&layout).1, maps, "the maps (conntrack included) are kept");
    let stale: Vec<String> = std::fs::read_dir(layout.programs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(programs()["version"].as_str().unwrap()))
        .collect();
    assert!(stale.is_empty(), "the old version's pins are gone: {stale:?}");
    assert!(echoes(&mut conn), "the flow lives across the upgrade");

    let (leaks, probes) = watch.finish();
    assert!(probes > 10, "the prober ran ({probes} probes)");
    assert_eq!(leaks, 0, "c reached a {leaks} times in {probes} probes across restart and upgrade");
    assert!(env.reaches("x/b", "x/a", Probe::tcp(80)) && !env.reaches("x/c", "x/a", Probe::tcp(80)));
    drop(agent);
}
