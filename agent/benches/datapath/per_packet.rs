//! Per-packet cost: TCP request/response rate and bulk throughput between two
//! pods with (a) nothing attached, (b) our programs with an allow rule plus
//! 1, 1,000 or 10,000 other prefixes, (c) an iptables chain with the same
//! prefixes ahead of the allow rule. Every configuration is measured once per
//! round, rounds interleave them, and each figure is a ratio to (a) of the
//! same round.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use ipnet::IpNet;
use na_agent::datapath::{AttachMode, DirectionRules, Mode, PodRules};
use na_common::policy::PortRule;
use serde_json::json;

use crate::{Figures, stats, support::Env};

const SIZES: [usize; 3] = [1, 1_000, 10_000];
const RR_PORT: u16 = 80;
const SINK_PORT: u16 = 5001;
/// Bulk writes of this size.
const CHUNK: usize = 128 * 1024;

pub fn run(full: bool) -> Result<Figures> {
    let (rounds, window) = if full { (7, Duration::from_secs(3)) } else { (3, Duration::from_secs(1)) };
    let mut env = Env::with_pods(AttachMode::Auto, &[("x", "client"), ("x", "server")])?;
    let (client, server) = (env.pod("x/client").ip, env.pod("x/server").ip);
    let sink = Sink::start(&env)?;
    let node = env.node.netns().name().to_owned();
    // config -> per-round (rr ratio, throughput ratio)
    let mut ratios: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut baseline = Vec::new();
    for round in 0..rounds {
        eprintln!("bench: per-packet round {}/{rounds}", round + 1);
        let none = measure(&env, &sink, window)?;
        baseline.push(none);
        let mut record =
            |name: String, m: (f64, f64)| ratios.entry(name).or_default().push((m.0 / none.0, m.1 / none.1));
        for &n in &SIZES {
            let rules = rules_with_others(client.into(), server.into(), n);
            let attached = env.attach("x/server", &rules.server).and_then(|_| env.attach("x/client", &rules.client));
            attached?;
            let m = measure(&env, &sink, window);
            env.detach("x/server")?;
            env.detach("x/client")?;
            record(format!("ours_{n}"), m?);
        }
        for &n in &SIZES {
            iptables_chain(&node, client.into(), server.into(), n)?;
            let m = measure(&env, &sink, window);
            iptables_remove(&node)?;
            record(format!("iptables_{n}"), m?);
        }
    }
    let mut f = Figures::new();
    for (name, per_round) in &ratios {
        let rr: Vec<f64> = per_round.iter().map(|r| r.0).collect();
        let tp: Vec<f64> = per_round.iter().map(|r| r.1).collect();
        for (kind, v) in [("rr", &rr), ("throughput", &tp)] {
            f.insert(format!("{kind}_ratio_{name}"), json!(stats::round(stats::median(v), 3)));
            f.insert(format!("{kind}_ratio_{name}_min"), json!(stats::round(stats::min(v), 3)));
            f.insert(format!("{kind}_ratio_{name}_max"), json!(stats::round(stats::max(v), 3)));
        }
    }
    let rr: Vec<f64> = baseline.iter().map(|b| b.0).collect();
    let tp: Vec<f64> = baseline.iter().map(|b| b.1).collect();
    f.insert("rr_none_per_sec".into(), json!(stats::round(stats::median(&rr), 0)));
    f.insert("throughput_none_gbit_s".into(), json!(stats::round(stats::median(&tp) * 8.0 / 1e9, 2)));
    f.insert("per_packet_rounds".into(), json!(rounds));
    f.insert("per_packet_window_s".into(), json!(window.as_secs_f64()));
    drop(sink);
    Ok(f)
}

/// Both pods isolated: the server admits the client on TCP (RR and sink
/// ports), the client may send to the server; `others` prefixes more in
/// each trie, none of which matches.
struct BenchRules {
    server: PodRules,
    client: PodRules,
}

fn rules_with_others(client: IpAddr, server: IpAddr, others: usize) -> BenchRules {
    let allow = vec![
        PortRule::ports(1, na_common::protocol::TCP, RR_PORT, RR_PORT),
        PortRule::ports(1, na_common::protocol::TCP, SINK_PORT, SINK_PORT),
    ];
    let direction = |peer: IpAddr| {
        let mut entries: BTreeMap<IpNet, Vec<PortRule>> = (0..others)
            .map(|i| (IpNet::from(other_prefix(i)), vec![PortRule::ports(2, na_common::protocol::TCP, 80, 80)]))
            .collect();
        entries.insert(IpNet::from(peer), allow.clone());
        DirectionRules { mode: Mode::PoliciesApplied, entries }
    };
    BenchRules {
        server: PodRules { ingress: direction(client), egress: DirectionRules::default() },
        client: PodRules { ingress: DirectionRules::default(), egress: direction(server) },
    }
}

/// The `i`th non-matching prefix: a /32 in 10/8 (the pods are in 198.18/24).
fn other_prefix(i: usize) -> IpAddr {
    IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

/// The iptables counterpart in the node's FORWARD path: `others` rules, one
/// per prefix, that every packet walks before the rules that accept the two
/// pods' traffic, then a drop. Stateless on purpose: the cost being compared
/// is a rule walk per packet.
fn iptables_chain(node: &str, client: IpAddr, server: IpAddr, others: usize) -> Result<()> {
    let mut rules = String::from("*filter\n:NA-BENCH - [0:0]\n-A FORWARD -j NA-BENCH\n");
    for i in 0..others {
        rules.push_str(&format!("-A NA-BENCH -s {}/32 -p tcp --dport 80 -j ACCEPT\n", other_prefix(i)));
    }
    rules.push_str(&format!("-A NA-BENCH -s {client}/32 -d {server}/32 -p tcp -j ACCEPT\n"));
    rules.push_str(&format!("-A NA-BENCH -s {server}/32 -d {client}/32 -p tcp -j ACCEPT\n"));
    rules.push_str("-A NA-BENCH -j DROP\nCOMMIT\n");
    let mut child = Command::new("ip")
        .args(["netns", "exec", node, "iptables-restore", "--noflush", "-w"])
        .stdin(Stdio::piped())
        .spawn()
        .context("running iptables-restore (is iptables installed?)")?;
    child.stdin.take().context("stdin")?.write_all(rules.as_bytes())?;
    ensure!(child.wait()?.success(), "iptables-restore failed");
    Ok(())
}

fn iptables_remove(node: &str) -> Result<()> {
    for args in [&["-D", "FORWARD", "-j", "NA-BENCH"][..], &["-F", "NA-BENCH"], &["-X", "NA-BENCH"]] {
        let ok = Command::new("ip").args(["netns", "exec", node, "iptables", "-w"]).args(args).status()?.success();
        ensure!(ok, "iptables {args:?} failed");
    }
    Ok(())
}

/// (transactions per second, bytes per second) from client to server.
fn measure(env: &Env, sink: &Sink, window: Duration) -> Result<(f64, f64)> {
    Ok((request_response(env, window)?, sink.throughput(env, window)?))
}

/// One connection, one byte each way per transaction, for `window`.
fn request_response(env: &Env, window: Duration) -> Result<f64> {
    let to = SocketAddr::new(env.pod("x/server").ip.into(), RR_PORT);
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

/// A server in the server pod that reads connections to the end and reports
/// how many bytes each carried.
struct Sink {
    counts: mpsc::Receiver<u64>,
}

impl Sink {
    fn start(env: &Env) -> Result<Self> {
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
    fn throughput(&self, env: &Env, window: Duration) -> Result<f64> {
        let to = SocketAddr::new(env.pod("x/server").ip.into(), SINK_PORT);
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
