//! The node's one program pair across agent restarts and upgrades: a restart
//! verifies nothing (the pinned programs are adopted), an upgrade verifies
//! once and swaps every pod onto the new programs under traffic, keeping
//! their maps, established flows, and every denial.
//! Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces).
mod support;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use ipnet::IpNet;
use na_agent::{
    bpffs::PinLayout,
    datapath::{AttachMode, DirectionRules, KernelLogLevel, Mode, PodRules, inventory, open_pinned},
    pod_id::PodId,
    status::Status,
};
use na_common::{
    conntrack::{FlowKey, FlowState},
    names::MAP_CONNTRACK,
    policy::PortRule,
    protocol::TCP,
};
use na_harness::Probe;
use serde_json::json;
use support::{
    Env,
    agent::{Agent, Manifests, pod, policy, status, wait_until},
};

/// Held by every test here: `our_program_ids` counts loads node-wide, so no
/// other test of this binary may load programs meanwhile.
static KERNEL_WIDE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    KERNEL_WIDE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Kernel ids of every program named like ours, node-wide.
fn our_program_ids() -> BTreeSet<u32> {
    loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| matches!(p.name_as_str(), Some("handle_ingress" | "handle_egress")))
        .map(|p| p.id())
        .collect()
}

/// (pod, direction) -> program id of its attachment, and every pod map id.
/// What `na-cli loaded-ebpfdata` lists, read in the node's namespace, where
/// the pods' veths are.
fn listed(env: &Env) -> Vec<inventory::PodAttachment> {
    env.node.netns().run(|| inventory::attachments(env.dp.layout()).unwrap()).unwrap()
}

fn attachments(env: &Env) -> (BTreeSet<(String, String, u32)>, BTreeSet<u32>) {
    let all = listed(env);
    let progs = all.iter().map(|a| (a.pod_id.clone(), a.direction.clone(), a.prog_id)).collect();
    let maps = all.iter().flat_map(|a| a.maps.iter().take(3).map(|m| m.id)).collect();
    (progs, maps)
}

/// Kernel ids of the pods' pinned TCX links.
fn link_ids(env: &Env) -> BTreeSet<u32> {
    let links_dir = env.dp.layout().links_dir();
    listed(env)
        .iter()
        .filter(|a| a.pin_path.starts_with(links_dir.to_str().unwrap()))
        .map(|a| FdLink::from(PinnedLink::from_pin(&a.pin_path).unwrap()).info().unwrap().id())
        .collect()
}

/// A port no echo server holds.
const PUSH_PORT: u16 = 9000;

/// A TCP connection from b to a over which a speaks unprompted. a's egress
/// and b's ingress are closed by policy, so a's packets pass only as the
/// tracked flow's replies: a conntrack table lost on the way cuts it, which
/// an echo (b speaking first, re-admitted by its rule) would not show.
struct Push {
    server: TcpStream,
    client: TcpStream,
}

impl Push {
    fn open(env: &Env) -> Self {
        let listener =
            env.pod("x/a").netns().run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, PUSH_PORT))).unwrap().unwrap();
        let client = env.connect("x/b", "x/a", PUSH_PORT);
        let (server, _) = listener.accept().unwrap();
        Self { server, client }
    }

    /// Whether a byte from a reaches b (in half a second).
    fn arrives(&mut self) -> bool {
        let mut byte = [0u8];
        self.server.write_all(b"!").is_ok() && self.client.read_exact(&mut byte).is_ok()
    }
}

/// Empties a pod's conntrack table, as an agent that lost it would.
fn wipe_conntrack(layout: &PinLayout, pod: &str) {
    let (ns, name) = pod.split_once('/').unwrap();
    let mut table: HashMap<MapData, FlowKey, FlowState> =
        open_pinned(&layout.map(&PodId::new(ns, name), MAP_CONNTRACK)).unwrap();
    let keys: Vec<FlowKey> = table.keys().map(Result::unwrap).collect();
    for key in keys {
        table.remove(&key).unwrap();
    }
}

/// Opens new TCP connections `from -> to` port 80 until stopped, counting
/// those whose outcome is not `expect` (connected, or timed out). Bounded: at
/// most 2 minutes.
struct Watch {
    stop: Arc<AtomicBool>,
    wrong: Arc<AtomicU32>,
    probes: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(env: &Env, from: &str, to: &str, expect: bool) -> Self {
        let stop: Arc<AtomicBool> = Arc::default();
        let (wrong, probes): (Arc<AtomicU32>, Arc<AtomicU32>) = Default::default();
        let from = env.pod(from).netns().open().unwrap();
        let to = SocketAddr::new(env.pod(to).ip.into(), 80);
        // A leak connects at once; an allowed connection gets time for a busy machine.
        let timeout = Duration::from_millis(if expect { 1000 } else { 100 });
        let (s, w, p) = (Arc::clone(&stop), Arc::clone(&wrong), Arc::clone(&probes));
        let thread = std::thread::spawn(move || {
            nix::sched::setns(from, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let connected = TcpStream::connect_timeout(&to, timeout).is_ok();
                if connected != expect {
                    w.fetch_add(1, Ordering::Relaxed);
                }
                p.fetch_add(1, Ordering::Relaxed);
                if expect {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Self { stop, wrong, probes, thread: Some(thread) }
    }

    /// Probes made so far.
    fn probes(&self) -> u32 {
        self.probes.load(Ordering::Relaxed)
    }

    /// Waits until a probe starts and ends after this call: the prober is
    /// running through whatever happened before.
    fn runs_on(&self) {
        let seen = self.probes();
        wait_until("the prober probes on", || self.probes() > seen + 1);
    }

    /// (wrong outcomes, probes).
    fn finish(mut self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (self.wrong.load(Ordering::Relaxed), self.probes.load(Ordering::Relaxed))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn restart_adopts_the_programs_and_an_upgrade_swaps_them_under_traffic() {
    restart_and_upgrade(AttachMode::Netlink);
}

#[test]
fn restart_adopts_the_programs_and_an_upgrade_swaps_them_under_traffic_tcx() {
    restart_and_upgrade(AttachMode::Tcx);
}

/// An agent attaching in `mode` restarted, then upgraded, with a flow
/// across both and a prober that must never pass.
fn restart_and_upgrade(mode: AttachMode) {
    let _alone = alone();
    let flag = ["--attach-mode", if mode == AttachMode::Tcx { "tcx" } else { "netlink" }];
    // Only links have ids to compare: filters are replaced in place by
    // their priority and handle.
    let links = |env: &Env| if mode == AttachMode::Tcx { link_ids(env) } else { BTreeSet::new() };
    let env = Env::new(AttachMode::default()).unwrap();
    let layout = PinLayout::new(env.root());
    let manifests = Manifests::new();
    let status_file = manifests.1.join("status.json");
    manifests.write("ns.yaml", &[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})]);
    manifests.write("pods.yaml", &[pod(&env, "x/a", "a"), pod(&env, "x/b", "b"), pod(&env, "x/c", "c")]);
    manifests.write(
        "policies.yaml",
        &[
            policy(
                "a-from-b",
                json!({"podSelector": {"matchLabels": {"app": "a"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}),
            ),
            policy("a-sends-nothing", json!({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"]})),
            policy(
                "b-admits-nothing",
                json!({"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"]}),
            ),
        ],
    );
    let attached = || status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 3);
    let programs = || status(&status_file)["programs"].clone();

    assert!(env.reaches("x/c", "x/a", Probe::tcp(80)), "baseline: nothing attached yet");
    let ours_before = our_program_ids();
    let agent = Agent::start_with(&env, &manifests, &status_file, &flag);
    wait_until("all three pods are attached", attached);
    assert_eq!(programs()["origin"], "verified");
    let (progs, maps) = attachments(&env);
    let first: BTreeSet<u32> = progs.iter().map(|p| p.2).collect();
    assert_eq!(first.len(), 2, "every pod runs the node's two programs: {progs:?}");
    assert_eq!(our_program_ids().difference(&ours_before).count(), 2, "two programs loaded for three pods");
    assert!(env.reaches("x/b", "x/a", Probe::tcp(80)) && !env.reaches("x/c", "x/a", Probe::tcp(80)));

    // A long-lived connection from b to a that must outlive restart and
    // upgrade, and a prober that must never get from c into a meanwhile.
    let mut push = Push::open(&env);
    assert!(push.arrives());
    let linked = links(&env);
    if mode == AttachMode::Tcx {
        assert_eq!(linked.len(), 6, "a TCX link per pod and direction: {linked:?}");
    }
    let watch = Watch::start(&env, "x/c", "x/a", false);

    // Restart: nothing is loaded, nothing changes hands.
    watch.runs_on();
    agent.kill();
    std::fs::remove_file(&status_file).unwrap();
    let loaded_before_restart = our_program_ids();
    let agent = Agent::start_with(&env, &manifests, &status_file, &flag);
    wait_until("all three pods are attached again", attached);
    watch.runs_on();
    assert_eq!(programs()["origin"], "adopted");
    assert_eq!(our_program_ids(), loaded_before_restart, "a restart loads (and verifies) no program");
    assert_eq!(attachments(&env), (progs.clone(), maps.clone()), "same programs and maps for every pod");
    assert_eq!(links(&env), linked, "same links");
    assert!(push.arrives(), "the flow lives across the restart");

    // Upgrade: other programs (here: other load-time settings, so another
    // version) are verified once and swapped into every pod's attachment.
    agent.kill();
    watch.runs_on();
    std::fs::remove_file(&status_file).unwrap();
    let agent =
        Agent::start_with(&env, &manifests, &status_file, &[&flag[..], &["--ebpf-log-level", "error"]].concat());
    wait_until("all three pods are attached after the upgrade", attached);
    assert_eq!(programs()["origin"], "verified");
    let new_ids = our_program_ids().difference(&loaded_before_restart).count();
    assert_eq!(new_ids, 2, "the new version is loaded once, not per pod");
    wait_until("every pod runs the new programs", || {
        let (now, _) = attachments(&env);
        now.iter().all(|p| !first.contains(&p.2)) && now.iter().map(|p| p.2).collect::<BTreeSet<_>>().len() == 2
    });
    assert_eq!(attachments(&env).1, maps, "the maps (conntrack included) are kept");
    let stale: Vec<String> = std::fs::read_dir(layout.programs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(programs()["version"].as_str().unwrap()))
        .collect();
    assert!(stale.is_empty(), "the old version's pins are gone: {stale:?}");
    assert_eq!(links(&env), linked, "the links were updated in place, never replaced");
    assert!(push.arrives(), "the flow lives across the upgrade");

    watch.runs_on();
    let (leaks, probes) = watch.finish();
    assert_eq!(leaks, 0, "c reached a {leaks} times in {probes} probes across restart and upgrade");
    assert!(env.reaches("x/b", "x/a", Probe::tcp(80)) && !env.reaches("x/c", "x/a", Probe::tcp(80)));
    // The flow held only by its tracked state: without it, it is cut.
    wipe_conntrack(&layout, "x/a");
    wipe_conntrack(&layout, "x/b");
    assert!(!push.arrives(), "a's replies pass only through conntrack");
    drop(agent);
}

/// Ifindex of each attached pod, from the agent's status file.
fn ifindexes(status_file: &std::path::Path) -> std::collections::BTreeMap<String, u32> {
    Status::read(status_file).unwrap().pods.iter().map(|p| (format!("{}/{}", p.namespace, p.name), p.ifindex)).collect()
}

#[test]
fn a_restart_forgets_pods_deleted_and_renews_pods_recreated_while_it_was_down() {
    let _alone = alone();
    let env = Env::with_pods(AttachMode::default(), &[("x", "a"), ("x", "b"), ("x", "c"), ("x", "d")]).unwrap();
    let layout = PinLayout::new(env.root());
    let manifests = Manifests::new();
    let status_file = manifests.1.join("status.json");
    let tcp80 = Probe::tcp(80);
    // Unenforced, everyone reaches b: a denial later is the policy's.
    assert!(env.reaches("x/a", "x/b", tcp80) && env.reaches("x/d", "x/b", tcp80));
    manifests.write("ns.yaml", &[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})]);
    let d = pod(&env, "x/d", "d");
    manifests.write("pods.yaml", &[pod(&env, "x/a", "a"), pod(&env, "x/b", "b"), pod(&env, "x/c", "c"), d.clone()]);
    manifests.write(
        "b-from-a.yaml",
        &[policy(
            "b-from-a",
            json!({"podSelector": {"matchLabels": {"app": "b"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]}),
        )],
    );
    let agent = Agent::start(&env, &manifests, &status_file);
    wait_until("all four pods are attached", || {
        status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 4)
    });
    assert!(env.reaches("x/a", "x/b", tcp80) && !env.reaches("x/d", "x/b", tcp80));
    let before = ifindexes(&status_file);
    let conntrack_of_b =
        || MapData::from_pin(layout.map(&PodId::new("x", "b"), MAP_CONNTRACK)).unwrap().info().unwrap().id();
    let old_flows = conntrack_of_b();

    // While the agent is down, c is deleted (its veth with it) and b's
    // sandbox is recreated: a new veth, a new uid, the same name and IPs.
    agent.kill();
    std::fs::remove_file(&status_file).unwrap();
    env.node.delete_veth("x/c").unwrap();
    env.node.recreate_veth("x/b").unwrap();
    let mut b2 = pod(&env, "x/b", "b");
    b2["metadata"]["uid"] = json!("uid-x/b-recreated");
    manifests.write("pods.yaml", &[pod(&env, "x/a", "a"), b2, d]);

    let agent = Agent::start(&env, &manifests, &status_file);
    wait_until("a, d and the new b are attached", || {
        status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 3)
    });
    let after = ifindexes(&status_file);
    assert_ne!(after["x/b"], before["x/b"], "b is known by its new veth");
    assert_eq!(after["x/a"], before["x/a"]);
    assert!(env.reaches("x/a", "x/b", tcp80) && !env.reaches("x/d", "x/b", tcp80), "the new b is enforced");
    let pods: BTreeSet<String> =
        inventory::pinned_pods(&layout).unwrap().iter().map(|p| p.as_str().to_owned()).collect();
    assert_eq!(pods, ["x_a", "x_b", "x_d"].map(String::from).into(), "c's pins are gone");
    let tables = na_agent::datapath::NodeTables::open(&layout).unwrap();
    let known: BTreeSet<u32> = tables.ifindexes().into_iter().collect();
    assert_eq!(known, BTreeSet::from([after["x/a"], after["x/b"], after["x/d"]]), "the dead veths' entries are gone");
    assert_ne!(conntrack_of_b(), old_flows, "no flow of the old sandbox is tracked for the new one");
    drop(agent);
}

#[test]
fn programs_swapped_in_a_loop_never_let_a_packet_through_or_drop_one() {
    let _alone = alone();
    let mut env = Env::new(AttachMode::default()).unwrap();
    let b = IpNet::from(IpAddr::V4(env.pod("x/b").ip));
    let rules = PodRules {
        ingress: DirectionRules {
            mode: Mode::PoliciesApplied,
            entries: [(b, vec![PortRule::ports(1, TCP, 80, 80)])].into_iter().collect(),
            audit: false,
        },
        egress: DirectionRules::default(),
    };
    assert!(env.reaches("x/c", "x/a", Probe::tcp(80)), "baseline: nothing attached yet");
    env.attach("x/a", &rules).unwrap();
    assert!(env.reaches("x/b", "x/a", Probe::tcp(80)) && !env.reaches("x/c", "x/a", Probe::tcp(80)));
    // Two versions of the programs (another load-time setting), both kept
    // pinned, so each swap after the first two is a link update, not a load.
    let versions = [env.dp.clone().with_log_level(KernelLogLevel::Error), env.dp.clone()];
    let (id, veth) = (PodId::new("x", "a"), env.pod("x/a").host_veth.clone());
    let programs = || listed(&env).iter().map(|a| a.prog_id).collect::<BTreeSet<_>>();
    let first = programs();
    let (leaks, refusals) = (Watch::start(&env, "x/c", "x/a", false), Watch::start(&env, "x/b", "x/a", true));
    // At least 40 swaps, and on until both probers have probed through 20
    // of them: how long a swap takes is the machine's business.
    const SWAPS: usize = 40;
    const PROBES: u32 = 20;
    let mut seen = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut swaps = 0;
    while swaps < SWAPS || leaks.probes() <= PROBES || refusals.probes() <= PROBES {
        assert!(std::time::Instant::now() < deadline, "the probers stalled");
        let dp = &versions[swaps % 2];
        env.node.netns().run(|| dp.attach_pod(&id, &veth, env.addrs("x/a"), &rules)).unwrap().unwrap();
        seen.insert(programs());
        swaps += 1;
        std::thread::sleep(Duration::from_millis(25));
    }
    let (leaked, denials) = leaks.finish();
    let (refused, allowed) = refusals.finish();
    println!("{swaps} swaps under {denials} denied and {allowed} allowed probes");
    assert_eq!(seen.len(), 2, "the pod alternated between two program pairs: {seen:?}");
    assert!(seen.contains(&first));
    assert_eq!(leaked, 0, "c reached a {leaked} times in {denials} probes while programs were swapped");
    assert_eq!(refused, 0, "b failed to reach a {refused} times in {allowed} probes while programs were swapped");
}
