//! Per-packet cost: TCP request/response rate on one connection (`rr`), a new
//! connection per transaction (`crr`), and bulk throughput between two pods
//! with (a) nothing attached, (b) our programs with an allow rule plus 1,
//! 1,000 or 10,000 other prefixes, (c) a stateless iptables chain with the
//! same prefixes ahead of the allow rule, (d) a stateful one as kube-router
//! and Calico's iptables mode build it (conntrack ESTABLISHED first, the
//! prefixes in one ipset). Every configuration is measured once per round,
//! rounds interleave them, and each figure is a ratio to (a) of the same
//! round.
//!
//! The kernel's own accounting (`BPF_ENABLE_STATS`, held only while this
//! section runs) gives our programs' nanoseconds per packet, on the
//! established connection and under the connection-per-transaction load,
//! next to a program that only passes packets, attached to the same hooks
//! (the floor of any TC program), and one that first does one hash-map
//! lookup (what each of ours adds). And our programs with 1,000
//! ClusterNetworkPolicy admin rules ahead of the same allow rule
//! (`ours_admin_1000`), to set against `ours_1`.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TestRun, TestRunOptions,
        tc::{self, NlOptions, TcAttachOptions},
    },
    sys::{Stats, enable_stats},
};
use ipnet::IpNet;
use na_agent::datapath::{AttachMode, DirectionRules, Mode, PROGRAMS, PodRules};
use na_common::policy::{PortRule, action};
use na_harness::Probe;
use na_policy::lpm::{self, Grant};
use serde_json::json;

use crate::{Figures, stats, support::Env};

const SIZES: [usize; 3] = [1, 1_000, 10_000];
/// Admin-tier rules in the `ours_admin` configuration.
const ADMIN_RULES: usize = 1_000;
pub const RR_PORT: u16 = 80;
pub const SINK_PORT: u16 = 5001;
/// The connection-per-transaction responder's port (the harness servers poll
/// for connections, which would cap that rate).
pub const CRR_PORT: u16 = 5002;
/// Bulk writes of this size.
const CHUNK: usize = 128 * 1024;

/// The client and server pods, the server's sink and responder running,
/// and the profile's rounds and measuring window.
pub struct ClientServer {
    pub env: Env,
    pub client: std::net::Ipv4Addr,
    pub server: std::net::Ipv4Addr,
    pub sink: Sink,
    pub rounds: usize,
    pub window: Duration,
}

pub fn client_server(full: bool) -> Result<ClientServer> {
    let (rounds, window) = if full { (7, Duration::from_secs(3)) } else { (3, Duration::from_secs(1)) };
    let env = Env::with_pods(AttachMode::default(), &[("x", "client"), ("x", "server")])?;
    let (client, server) = (env.pod("x/client").ip, env.pod("x/server").ip);
    let sink = Sink::start(&env)?;
    start_responder(&env)?;
    Ok(ClientServer { env, client, server, sink, rounds, window })
}

pub fn run(full: bool) -> Result<Figures> {
    let ClientServer { mut env, client, server, sink, rounds, window } = client_server(full)?;
    let node = env.node.netns().name().to_owned();
    // Run-time statistics are on for as long as this descriptor is open.
    let _stats = enable_stats(Stats::RunTime).context("enabling BPF run-time statistics")?;
    let ours = ours_program_ids(&env)?;
    let mut floors = [Floor::load("pass")?, Floor::load("pass_after_lookup")?];
    // config -> per-round (rr, crr, throughput) ratios
    let mut ratios: BTreeMap<String, Vec<[f64; 3]>> = BTreeMap::new();
    // config -> per-round (established, new-flow) nanoseconds per packet
    let mut ns: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut baseline = Vec::new();
    let mut hot = Vec::new();
    for round in 0..rounds {
        eprintln!("bench: per-packet round {}/{rounds}", round + 1);
        let none = measure(&env, &sink, server.into(), window, &[])?.rates;
        baseline.push(none);
        let mut record = |name: String, m: Measured| {
            let r = m.rates;
            ratios.entry(name.clone()).or_default().push([r[0] / none[0], r[1] / none[1], r[2] / none[2]]);
            if let Some(per_packet) = m.ns_per_packet {
                ns.entry(name).or_default().push(per_packet);
            }
        };
        let configs =
            SIZES.iter().map(|&n| (format!("ours_{n}"), rules_with_others(client.into(), server.into(), n))).chain([(
                format!("ours_admin_{ADMIN_RULES}"),
                rules_with_admin(client.into(), server.into(), ADMIN_RULES),
            )]);
        for (name, rules) in configs {
            let attached = env.attach("x/server", &rules.server).and_then(|_| env.attach("x/client", &rules.client));
            attached?;
            // Enforcement is on: what the rules do not admit is dropped.
            let enforced = !env.reaches("x/client", "x/server", Probe::tcp(81));
            let m = measure(&env, &sink, server.into(), window, &ours);
            if round == 0 && name == "ours_1" {
                hot.extend(hot_ns(&env, client, server)?);
            }
            env.detach("x/server")?;
            env.detach("x/client")?;
            ensure!(enforced, "the programs did not enforce (TCP/81 reached the server)");
            record(name, m?);
        }
        for (floor, name) in floors.iter_mut().zip(["floor", "floor_lookup"]) {
            let floor_ids = floor.attach(&env)?;
            if round == 0 {
                let (frame, veth) = (tcp_frame(client, server, 40000, RR_PORT, ACK), &env.pod("x/server").host_veth);
                hot.push((format!("ns_per_run_{name}_hot"), best_run(&env, &floor.prog, veth, &frame)?));
            }
            let m = measure(&env, &sink, server.into(), window, &floor_ids);
            floor.detach();
            record(name.into(), m?);
        }
        for stateful in [false, true] {
            for &n in &SIZES {
                iptables_chain(&node, client.into(), server.into(), n, stateful)?;
                let m = measure(&env, &sink, server.into(), window, &[]);
                iptables_remove(&node, stateful)?;
                let kind = if stateful { "iptables_stateful" } else { "iptables" };
                record(format!("{kind}_{n}"), m?);
            }
        }
    }
    let mut f = Figures::new();
    for (key, ns) in hot {
        f.insert(key, json!(stats::round(ns, 0)));
    }
    stats::insert_ratios(&mut f, ratios.iter().map(|(name, r)| (name.as_str(), r.as_slice())));
    for (name, per_round) in &ns {
        let est: Vec<f64> = per_round.iter().map(|r| r.0).collect();
        let new: Vec<f64> = per_round.iter().map(|r| r.1).collect();
        let (est_key, new_key) = match name.strip_prefix("ours_") {
            Some(n) => (format!("ns_per_packet_established_{n}"), format!("ns_per_packet_new_flow_{n}")),
            None => (format!("ns_per_packet_{name}"), format!("ns_per_packet_{name}_new_flow")),
        };
        stats::insert_spread(&mut f, &est_key, &est, 0);
        stats::insert_spread(&mut f, &new_key, &new, 0);
    }
    // What the admin rules add, per packet, against the same allow rule
    // alone: medians of the same rounds.
    let admin = format!("ours_admin_{ADMIN_RULES}");
    for (kind, pick) in [("established", 0), ("new_flow", 1)] {
        let median =
            |name: &str| stats::median(&ns[name].iter().map(|r| if pick == 0 { r.0 } else { r.1 }).collect::<Vec<_>>());
        f.insert(
            format!("ns_per_packet_{kind}_admin_{ADMIN_RULES}_vs_none_ratio"),
            json!(stats::round(median(&admin) / median("ours_1"), 2)),
        );
    }
    for (i, kind) in ["rr", "crr"].iter().enumerate() {
        let v: Vec<f64> = baseline.iter().map(|b| b[i]).collect();
        f.insert(format!("{kind}_none_per_sec"), json!(stats::round(stats::median(&v), 0)));
    }
    let tp: Vec<f64> = baseline.iter().map(|b| b[2]).collect();
    f.insert("throughput_none_gbit_s".into(), json!(stats::round(stats::median(&tp) * 8.0 / 1e9, 2)));
    f.insert("per_packet_rounds".into(), json!(rounds));
    f.insert("per_packet_window_s".into(), json!(window.as_secs_f64()));
    drop(sink);
    Ok(f)
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// The server's ingress program with its data in cache: nanoseconds per run
/// of BPF_PROG_TEST_RUN repeating one packet from the client, on a flow the
/// rules admitted and tracked (established), and as a new flow the rules
/// deny (judged afresh each run, its event sent). What the instructions
/// cost, without the cache misses of real traffic (the `ns_per_packet_*`
/// figures).
fn hot_ns(env: &Env, client: Ipv4Addr, server: Ipv4Addr) -> Result<Vec<(String, f64)>> {
    let programs = env.dp.programs()?;
    let pin = programs.as_ref().context("no programs")?.pin(env.dp.layout(), na_common::names::PROG_INGRESS);
    let prog = SchedClassifier::from_pin(pin)?;
    let veth = &env.pod("x/server").host_veth;
    best_run(env, &prog, veth, &tcp_frame(client, server, 40100, RR_PORT, SYN))?;
    Ok(vec![
        (
            "ns_per_run_established_hot".into(),
            best_run(env, &prog, veth, &tcp_frame(client, server, 40100, RR_PORT, ACK))?,
        ),
        (
            "ns_per_run_new_flow_denied_hot".into(),
            best_run(env, &prog, veth, &tcp_frame(client, server, 40101, 81, SYN))?,
        ),
    ])
}

/// `prog`'s nanoseconds per run on `frame` arriving on `veth`: the best of
/// 5 batches of 200,000 (the kernel times each batch).
fn best_run(env: &Env, prog: &SchedClassifier, veth: &str, frame: &[u8]) -> Result<f64> {
    const RUNS: u32 = 200_000;
    env.node.netns().run(|| -> Result<f64> {
        // `struct __sk_buff` up to `ifindex` (offset 40), which the kernel
        // resolves in this namespace.
        let mut ctx = [0u8; 44];
        ctx[40..].copy_from_slice(&nix::net::if_::if_nametoindex(veth)?.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let mut best = f64::MAX;
        for _ in 0..5 {
            let opts = TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: RUNS,
                ..TestRunOptions::new()
            };
            // The kernel reports the batch's mean time per run.
            best = best.min(prog.test_run(opts)?.duration.as_nanos() as f64);
        }
        Ok(best)
    })?
}

/// An Ethernet frame of a TCP segment with `flags`, no payload.
fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 7, 0, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

/// Kernel ids of the node's two programs.
pub fn ours_program_ids(env: &Env) -> Result<Vec<u32>> {
    let programs = env.dp.programs()?;
    let programs = programs.as_ref().context("no programs")?;
    Ok(programs.ids.to_vec())
}

/// (run time in ns, runs) of programs `ids`, summed.
pub fn run_stats(ids: &[u32]) -> Result<(u64, u64)> {
    let mut total = (0, 0);
    for info in aya::programs::loaded_programs() {
        let info = info?;
        if ids.contains(&info.id()) {
            total.0 += info.run_time().as_nanos() as u64;
            total.1 += info.run_count();
        }
    }
    Ok(total)
}

/// A program of the floor object (`ebpf/src/floor.rs`) on both pods'
/// veths, both hooks, as ours sit.
struct Floor {
    object: Ebpf,
    prog: SchedClassifier,
    links: Vec<aya::programs::tc::SchedClassifierLinkId>,
}

static FLOOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/na-ebpf-floor"));

impl Floor {
    fn load(name: &str) -> Result<Self> {
        let mut object = Ebpf::load(FLOOR_OBJECT)?;
        let prog: &mut SchedClassifier = object.program_mut(name).context("no such floor program")?.try_into()?;
        prog.load()?;
        let prog = SchedClassifier::from_program_info(prog.info()?, name.to_owned().into())?;
        Ok(Self { object, prog, links: Vec::new() })
    }

    /// Attaches; returns the program's id.
    fn attach(&mut self, env: &Env) -> Result<Vec<u32>> {
        let veths = [env.pod("x/client").host_veth.clone(), env.pod("x/server").host_veth.clone()];
        let prog = &mut self.prog;
        let mut devices: aya::maps::HashMap<_, u32, u32> =
            self.object.map_mut("devices").context("no devices map")?.try_into()?;
        let links = env.node.netns().run(|| -> Result<Vec<_>> {
            let mut links = Vec::new();
            for veth in &veths {
                // What `pass_after_lookup` finds.
                devices.insert(nix::net::if_::if_nametoindex(veth.as_str())?, 0, 0)?;
                // As ours are attached: a filter on the veth's clsact qdisc.
                let _ = tc::qdisc_add_clsact(veth);
                for (_, _, hook) in PROGRAMS {
                    links.push(prog.attach_with_options(veth, hook, TcAttachOptions::Netlink(NlOptions::default()))?);
                }
            }
            Ok(links)
        })??;
        self.links = links;
        Ok(vec![self.prog.info()?.id()])
    }

    fn detach(&mut self) {
        for link in self.links.drain(..) {
            let _ = self.prog.detach(link);
        }
    }
}

/// Both pods isolated: the server admits the client on TCP (RR and sink
/// ports), the client may send to the server; `others` prefixes more in
/// each trie, none of which matches.
pub struct BenchRules {
    pub server: PodRules,
    pub client: PodRules,
}

pub fn rules_with_others(client: IpAddr, server: IpAddr, others: usize) -> BenchRules {
    let allow = vec![
        PortRule::ports(1, na_common::protocol::TCP, RR_PORT, RR_PORT),
        PortRule::ports(1, na_common::protocol::TCP, SINK_PORT, CRR_PORT),
    ];
    let direction = |peer: IpAddr| {
        let mut entries: BTreeMap<IpNet, Vec<PortRule>> = (0..others)
            .map(|i| (IpNet::from(other_prefix(i)), vec![PortRule::ports(2, na_common::protocol::TCP, 80, 80)]))
            .collect();
        entries.insert(IpNet::from(peer), allow.clone());
        DirectionRules { mode: Mode::PoliciesApplied, entries, audit: false }
    };
    BenchRules {
        server: PodRules { ingress: direction(client), egress: DirectionRules::default() },
        client: PodRules { ingress: DirectionRules::default(), egress: direction(server) },
    }
}

/// [`rules_with_others`] with one other prefix, and `admin` admin-tier
/// rules on the client's egress ahead of its allow rule, ordered and
/// merged by the compiler's own builder: one in 25 (one per policy, the
/// most upstream allows in a policy) denies a TCP port of every address, so
/// it sits in the server's entry too and every packet's scan passes it; the
/// others deny a /32 each elsewhere.
pub fn rules_with_admin(client: IpAddr, server: IpAddr, admin: usize) -> BenchRules {
    let mut rules = rules_with_others(client, server, 1);
    let mut grants: Vec<Grant> = rules
        .client
        .egress
        .entries
        .iter()
        .map(|(prefix, r)| Grant::allow(*prefix, Vec::new(), r.clone().into()))
        .collect();
    for i in 0..admin {
        let id = 100 + i as u32;
        let (prefix, rule) = if i % 25 == 0 {
            let port = 9000 + (i / 25) as u16;
            ("0.0.0.0/0".parse().expect("literal"), PortRule::ports(id, na_common::protocol::TCP, port, port))
        } else {
            (IpNet::from(other_prefix(1 + i)), PortRule::any(id))
        };
        grants.push(Grant {
            prefix,
            except: Vec::new(),
            rank: lpm::rank::admin(i),
            rules: vec![rule.with_action(action::ADMIN_DENY)].into(),
        });
    }
    rules.client.egress.entries = lpm::build(&grants);
    rules
}

/// The `i`th non-matching prefix: a /32 in 10/8 (the pods are in 198.18/24).
fn other_prefix(i: usize) -> IpAddr {
    IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

/// Name of the stateful variant's set of peer prefixes.
const IPSET: &str = "NA-BENCH-PEERS";

/// The iptables counterpart in the node's FORWARD path, then a drop.
/// Stateless: `others` rules, one per prefix, that every packet walks before
/// the rules that accept the two pods' traffic (the cost compared is a rule
/// walk per packet). Stateful: established flows accepted first, the
/// prefixes matched in one ipset lookup, as kube-router and Calico's
/// iptables mode do.
fn iptables_chain(node: &str, client: IpAddr, server: IpAddr, others: usize, stateful: bool) -> Result<()> {
    let mut rules = String::from("*filter\n:NA-BENCH - [0:0]\n-A FORWARD -j NA-BENCH\n");
    if stateful {
        let mut set = format!("create {IPSET} hash:net maxelem {}\n", others.max(1024) * 2);
        for i in 0..others {
            set.push_str(&format!("add {IPSET} {}/32\n", other_prefix(i)));
        }
        run_with_stdin(&["netns", "exec", node, "ipset", "restore"], &set).context("ipset (is ipset installed?)")?;
        rules.push_str("-A NA-BENCH -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
        rules.push_str(&format!("-A NA-BENCH -m set --match-set {IPSET} src -p tcp --dport 80 -j ACCEPT\n"));
    } else {
        for i in 0..others {
            rules.push_str(&format!("-A NA-BENCH -s {}/32 -p tcp --dport 80 -j ACCEPT\n", other_prefix(i)));
        }
    }
    rules.push_str(&format!("-A NA-BENCH -s {client}/32 -d {server}/32 -p tcp -j ACCEPT\n"));
    rules.push_str(&format!("-A NA-BENCH -s {server}/32 -d {client}/32 -p tcp -j ACCEPT\n"));
    rules.push_str("-A NA-BENCH -j DROP\nCOMMIT\n");
    run_with_stdin(&["netns", "exec", node, "iptables-restore", "--noflush", "-w"], &rules)
        .context("iptables-restore (is iptables installed?)")
}

/// Runs `ip` with `args`, `input` on its standard input.
fn run_with_stdin(args: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new("ip").args(args).stdin(Stdio::piped()).spawn()?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    ensure!(child.wait()?.success(), "ip {args:?} failed");
    Ok(())
}

fn iptables_remove(node: &str, stateful: bool) -> Result<()> {
    for args in [&["-D", "FORWARD", "-j", "NA-BENCH"][..], &["-F", "NA-BENCH"], &["-X", "NA-BENCH"]] {
        let ok = Command::new("ip").args(["netns", "exec", node, "iptables", "-w"]).args(args).status()?.success();
        ensure!(ok, "iptables {args:?} failed");
    }
    if stateful {
        let ok = Command::new("ip").args(["netns", "exec", node, "ipset", "destroy", IPSET]).status()?.success();
        ensure!(ok, "ipset destroy failed");
    }
    Ok(())
}

/// One configuration's figures.
pub struct Measured {
    /// Transactions per second on one connection, transactions per second
    /// with a connection each, bytes per second.
    pub rates: [f64; 3],
    /// Nanoseconds per program run on the established connection and under
    /// the connection-per-transaction load, when `programs` were given.
    pub ns_per_packet: Option<(f64, f64)>,
}

/// The three rates from the client to the server, which it reaches at `to`.
pub fn measure(env: &Env, sink: &Sink, to: IpAddr, window: Duration, programs: &[u32]) -> Result<Measured> {
    let before = run_stats(programs)?;
    let rr = request_response(env, to, window)?;
    let between = run_stats(programs)?;
    let crr = connect_request_response(env, to, window)?;
    let after = run_stats(programs)?;
    let per_run = |a: (u64, u64), b: (u64, u64)| (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64;
    let ns_per_packet = (!programs.is_empty()).then(|| (per_run(before, between), per_run(between, after)));
    Ok(Measured { rates: [rr, crr, sink.throughput(env, to, window)?], ns_per_packet })
}

/// Transactions per second with a new connection each, for `window`.
fn connect_request_response(env: &Env, to: IpAddr, window: Duration) -> Result<f64> {
    let (done, took) = connections(env, to, window)?;
    Ok(done as f64 / took.as_secs_f64())
}

/// A new connection per one-byte transaction, for `window`: how many, in
/// how long.
pub fn connections(env: &Env, to: IpAddr, window: Duration) -> Result<(u64, Duration)> {
    let to = SocketAddr::new(to, CRR_PORT);
    env.pod("x/client").netns().run(move || -> Result<(u64, Duration)> {
        let (mut done, mut byte) = (0u64, [0u8; 1]);
        let start = Instant::now();
        while start.elapsed() < window {
            let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
            conn.set_nodelay(true)?;
            conn.set_read_timeout(Some(Duration::from_secs(1)))?;
            conn.write_all(b"x")?;
            conn.read_exact(&mut byte)?;
            done += 1;
        }
        Ok((done, start.elapsed()))
    })?
}

/// One connection, one byte each way per transaction, for `window`.
fn request_response(env: &Env, to: IpAddr, window: Duration) -> Result<f64> {
    let to = SocketAddr::new(to, RR_PORT);
    let mut conn =
        env.pod("x/client").netns().run(move || TcpStream::connect_timeout(&to, Duration::from_secs(1)))??;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    let (mut done, mut byte) = (0u64, [0u8; 1]);
    let start = Instant::now();
    while start.elapsed() < window {
        conn.write_all(b"x")?;
        conn.read_exact(&mut byte)?;
        done += 1;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// A server in the server pod answering each byte with itself, one
/// connection at a time, blocking in `accept` (no polling delay). The thread
/// ends with the bench process; the namespace goes with `Env`.
fn start_responder(env: &Env) -> Result<()> {
    let listener = env.pod("x/server").netns().run(|| TcpListener::bind(("0.0.0.0", CRR_PORT)))??;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_nodelay(true);
            let mut byte = [0u8; 1];
            while conn.read_exact(&mut byte).is_ok() && conn.write_all(&byte).is_ok() {}
        }
    });
    Ok(())
}

/// A server in the server pod that reads connections to the end and reports
/// how many bytes each carried.
pub struct Sink {
    counts: mpsc::Receiver<u64>,
}

impl Sink {
    pub fn start(env: &Env) -> Result<Self> {
        let listener = env.pod("x/server").netns().run(|| TcpListener::bind(("0.0.0.0", SINK_PORT)))??;
        let (tx, counts) = mpsc::channel();
        // The thread ends with the bench process; the namespace goes with Env.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = vec![0u8; CHUNK];
                let mut total = 0u64;
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                if tx.send(total).is_err() {
                    return;
                }
            }
        });
        Ok(Self { counts })
    }

    /// Writes for `window`, then waits for the sink to have read it all.
    fn throughput(&self, env: &Env, to: IpAddr, window: Duration) -> Result<f64> {
        let to = SocketAddr::new(to, SINK_PORT);
        let mut conn =
            env.pod("x/client").netns().run(move || TcpStream::connect_timeout(&to, Duration::from_secs(1)))??;
        conn.set_write_timeout(Some(Duration::from_secs(2)))?;
        let chunk = vec![7u8; CHUNK];
        let start = Instant::now();
        while start.elapsed() < window {
            conn.write_all(&chunk)?;
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        let bytes = self.counts.recv_timeout(Duration::from_secs(5)).context("the sink did not report")?;
        Ok(bytes as f64 / start.elapsed().as_secs_f64())
    }
}
