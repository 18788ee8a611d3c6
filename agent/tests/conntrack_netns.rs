//! Tracked flows on a real kernel: which updates they survive, when they
//! expire, and that no packet ever sees a half-written policy.
//! Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces).
mod support;

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use na_agent::datapath::{AttachMode, DirectionRules, Mode, PodRules, Timeouts};
use na_common::{
    conntrack::{FlowKey, FlowState, tcp_state},
    direction,
    events::{tier, verdict},
    policy::PortRule,
    protocol::{TCP, UDP},
};
use na_harness::{Pod, Probe};
use support::{Env, Events};

const WAIT: Duration = Duration::from_millis(400);

fn isolated(entries: Vec<(IpNet, Vec<PortRule>)>) -> DirectionRules {
    DirectionRules { mode: Mode::PoliciesApplied, entries: entries.into_iter().collect(), audit: false }
}

fn host(pod: &Pod) -> IpNet {
    IpNet::from(IpAddr::V4(pod.ip))
}

/// A TCP connection opened from inside `from` (the socket stays in its namespace).
fn connect(from: &Pod, to: IpAddr, port: u16) -> TcpStream {
    let addr = SocketAddr::new(to, port);
    let s = from.netns().run(move || TcpStream::connect_timeout(&addr, WAIT)).unwrap().unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn echoes(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

fn udp_socket(pod: &Pod, port: u16) -> UdpSocket {
    let s = pod.netns().run(move || UdpSocket::bind(("0.0.0.0", port))).unwrap().unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn udp_arrives(from: &UdpSocket, to: &UdpSocket, addr: SocketAddr) -> bool {
    let mut buf = [0u8; 8];
    from.send_to(b"hello", addr).is_ok() && to.recv_from(&mut buf).is_ok()
}

#[test]
fn established_flow_survives_an_update_that_allows_it_and_is_cut_by_one_that_does_not() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    let (b, c) = (host(env.pod("x/b")), host(env.pod("x/c")));
    let allow_b = (b, vec![PortRule::ports(1, TCP, 80, 80)]);
    // a's own egress must not allow b either: otherwise a's next packet to b
    // would legitimately open the flow again from a's side.
    let egress = || isolated(vec![(c, vec![PortRule::ports(3, UDP, 53, 53)])]);
    let mut maps = env.attach("x/a", &PodRules { ingress: isolated(vec![allow_b.clone()]), egress: egress() }).unwrap();
    let mut events = Events::open(env.dp.layout());
    let mut conn = connect(env.pod("x/b"), env.pod("x/a").ip.into(), 80);
    assert!(echoes(&mut conn));
    let revoked =
        |events: &mut Events| events.take().into_iter().filter(|e| e.tier == tier::REVOKED).collect::<Vec<_>>();
    // An unrelated change: the flow is judged again and still allowed.
    maps.apply(&PodRules {
        ingress: isolated(vec![allow_b, (c, vec![PortRule::ports(2, UDP, 81, 81)])]),
        egress: egress(),
    })
    .unwrap();
    assert!(echoes(&mut conn), "a flow the new policy still allows keeps going");
    assert_eq!(revoked(&mut events), [], "nothing was revoked");
    // b loses its rule: the established flow is cut, not grandfathered.
    maps.apply(&PodRules { ingress: isolated(vec![(c, vec![PortRule::ports(2, UDP, 81, 81)])]), egress: egress() })
        .unwrap();
    assert!(!echoes(&mut conn), "a flow the new policy forbids is cut");
    // By b's first packet after the update; the flow's later packets,
    // either way, meet the revocation too.
    let cut = revoked(&mut events);
    assert!(!cut.is_empty());
    let ports = |e: &na_common::events::PolicyEvent| [e.src_port.min(e.dst_port), e.src_port.max(e.dst_port)];
    assert!(cut.iter().all(|e| ports(e) == ports(&cut[0])), "all of that one flow, either way: {cut:?}");
    let (b_addr, a_addr) = (env.pod("x/b").ip.octets(), env.pod("x/a").ip.octets());
    let local = conn.local_addr().unwrap().port();
    assert_eq!(
        (cut[0].verdict, u32::from(cut[0].direction), cut[0].protocol),
        (verdict::DENY, direction::INGRESS, TCP)
    );
    assert_eq!((&cut[0].src_addr.0[..4], cut[0].src_port), (&b_addr[..], local));
    assert_eq!((&cut[0].dst_addr.0[..4], cut[0].dst_port), (&a_addr[..], 80));
}

#[test]
fn a_reply_that_meets_a_revoked_flow_says_whose_rules_revoked_it() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    let b = host(env.pod("x/b"));
    // b may send UDP to a:91; a's egress admits nothing of its own to b.
    let rules = |ingress| PodRules { ingress: isolated(ingress), egress: isolated(Vec::new()) };
    let mut maps = env.attach("x/a", &rules(vec![(b, vec![PortRule::ports(1, UDP, 91, 91)])])).unwrap();
    let mut events = Events::open(env.dp.layout());
    let (a_sock, b_sock) = (udp_socket(env.pod("x/a"), 91), udp_socket(env.pod("x/b"), 90));
    let (a_addr, b_addr) =
        (SocketAddr::new(env.pod("x/a").ip.into(), 91), SocketAddr::new(env.pod("x/b").ip.into(), 90));
    assert!(udp_arrives(&b_sock, &a_sock, a_addr), "b opens the flow into a");
    assert!(udp_arrives(&a_sock, &b_sock, b_addr), "a answers while it is tracked");
    events.take();
    // b loses its rule; a answers first after the update.
    maps.apply(&rules(Vec::new())).unwrap();
    assert!(!udp_arrives(&a_sock, &b_sock, b_addr), "the revoked flow carries no reply");
    let revoked: Vec<_> = events.take().into_iter().filter(|e| e.tier == tier::REVOKED).collect();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    // Met on a's egress, revoked by its ingress rules.
    assert_eq!((u32::from(revoked[0].direction), revoked[0].reply), (direction::EGRESS, 1));
}

#[test]
fn a_revoked_flow_is_not_reopened_mid_stream_by_its_peer() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    let b = host(env.pod("x/b"));
    let port = 7070;
    let listener = env.pod("x/b").netns().run(move || TcpListener::bind(("0.0.0.0", port))).unwrap().unwrap();
    // a admits any TCP from b, and may open TCP to b:7070 until its egress
    // loses that rule. A segment of the open connection from b, judged
    // afresh, would be one a's ingress admits, and a's own as its replies.
    let ingress = || isolated(vec![(b, vec![PortRule::ports(1, TCP, 1, 65535)])]);
    let egress =
        |to_b: bool| isolated(if to_b { vec![(b, vec![PortRule::ports(2, TCP, port, port)])] } else { vec![] });
    let mut maps = env.attach("x/a", &PodRules { ingress: ingress(), egress: egress(true) }).unwrap();
    let mut a_end = connect(env.pod("x/a"), env.pod("x/b").ip.into(), port);
    let (mut b_end, _) = listener.accept().unwrap();
    b_end.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 1];
    b_end.write_all(b"1").unwrap();
    assert!(a_end.read_exact(&mut buf).is_ok(), "b to a while a's egress allows the connection");
    a_end.write_all(b"2").unwrap();
    assert!(b_end.read_exact(&mut buf).is_ok(), "a to b");
    maps.apply(&PodRules { ingress: ingress(), egress: egress(false) }).unwrap();
    // b keeps sending: its segment and retransmissions (0.2 s, 0.6 s, 1.4 s
    // and 3 s after it) must all meet the revocation.
    b_end.write_all(b"3").unwrap();
    a_end.set_read_timeout(Some(Duration::from_millis(3500))).unwrap();
    assert!(a_end.read_exact(&mut buf).is_err(), "b's segments reopened the connection a's egress closed");
    a_end.write_all(b"4").unwrap();
    assert!(b_end.read_exact(&mut buf).is_err(), "a's segments left as replies");
}

/// Flows each pod's table holds in the tests that fill one.
const CAPACITY: u32 = 64;

/// The pods, on a datapath whose tables hold [`CAPACITY`] flows and keep an
/// ended TCP flow `tcp_closed`.
fn small_tables(tcp_closed: Duration) -> Env {
    let mut env = Env::new(AttachMode::default()).unwrap();
    env.dp = env.dp.clone().with_timeouts(Timeouts { tcp_closed, ..Timeouts::default() }).with_flows_per_pod(CAPACITY);
    env
}

#[test]
fn a_peer_spraying_segments_the_pod_resets_holds_its_table_only_briefly() {
    let tcp_closed = Duration::from_millis(1500);
    let mut env = small_tables(tcp_closed);
    let (b, c) = (host(env.pod("x/b")), host(env.pod("x/c")));
    // a admits b and c on TCP/80, where it serves.
    let rules = |peer| (peer, vec![PortRule::ports(1, TCP, 80, 80)]);
    env.attach("x/a", &PodRules { ingress: isolated(vec![rules(b), rules(c)]), egress: isolated(vec![]) }).unwrap();
    let mut live = connect(env.pod("x/c"), env.pod("x/a").ip.into(), 80);
    assert!(echoes(&mut live));
    // b sprays bare ACKs from twice as many ports as a's table holds: each
    // is admitted by a's rules, and a's kernel answers each with RST.
    let (b_ip, a_ip) = (env.pod("x/b").ip, env.pod("x/a").ip);
    for i in 0..2 * CAPACITY as u16 {
        support::raw::send_tcp_from(env.pod("x/b"), (b_ip, 20000 + i), (a_ip, 80), 0x10, u32::from(i) * 1000);
    }
    std::thread::sleep(Duration::from_millis(200));
    let id = na_agent::pod_id::PodId::new("x", "a");
    let path = env.dp.layout().map(&id, na_common::names::MAP_CONNTRACK);
    let table: aya::maps::HashMap<_, FlowKey, FlowState> = na_agent::datapath::open_pinned(&path).unwrap();
    let sprayed: Vec<FlowState> = table
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| k.peer_addr.0[..4] == b_ip.octets())
        .map(|(_, v)| v)
        .collect();
    assert_eq!(sprayed.len() as u32, CAPACITY - 1, "the spray took the room the live flow left");
    let states: Vec<u8> = sprayed.iter().map(|f| f.tcp_state).collect();
    assert!(states.iter().all(|&s| s == tcp_state::RESET), "each one reset by a; states: {states:?}");
    assert!(echoes(&mut live), "the live flow keeps its entry");
    // Reset flows are reclaimed after the short reset timeout, not FIN's.
    std::thread::sleep(tcp_closed + Duration::from_millis(300));
    assert_eq!(env.dp.sweep_conntrack(&id).unwrap(), sprayed.len(), "the sweep reclaims the spray's entries");
    assert!(echoes(&mut live), "and only those");
    let mut fresh = connect(env.pod("x/b"), a_ip.into(), 80);
    assert!(echoes(&mut fresh), "b's real connection is tracked again");
}

#[test]
fn a_pod_serving_many_short_connections_keeps_room_for_new_ones() {
    let tcp_closed = Duration::from_millis(1000);
    let mut env = small_tables(tcp_closed);
    let b = host(env.pod("x/b"));
    // a serves b on TCP/80 and may send nothing of its own: every answer
    // needs its connection's entry.
    let ingress = isolated(vec![(b, vec![PortRule::ports(1, TCP, 80, 80)])]);
    env.attach("x/a", &PodRules { ingress, egress: isolated(vec![]) }).unwrap();
    let id = na_agent::pod_id::PodId::new("x", "a");
    let a = env.pod("x/a").ip.into();
    // Each round opens as many connections, one after another, as a's table
    // holds, and closes each: finished, both ends' FINs seen, they are kept
    // only the short closed timeout, so the sweep after it makes room for
    // the next round. Kept as long as a half-closed one, they would fill
    // the table, and the next round's answers would be dropped.
    for round in 0..3 {
        for i in 0..CAPACITY {
            let mut conn = connect(env.pod("x/b"), a, 80);
            assert!(echoes(&mut conn), "round {round}, connection {i}");
        }
        std::thread::sleep(tcp_closed + Duration::from_millis(500));
        let reclaimed = env.dp.sweep_conntrack(&id).unwrap();
        assert!(reclaimed + 2 >= CAPACITY as usize, "round {round}: only {reclaimed} finished connections reclaimed");
    }
}

#[test]
fn conntrack_entries_expire_after_their_idle_timeout() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    let udp = Duration::from_millis(1000);
    env.dp = env.dp.clone().with_timeouts(Timeouts { udp, ..Timeouts::default() });
    let b = host(env.pod("x/b"));
    // a accepts nothing, but may send UDP to b:90.
    env.attach(
        "x/a",
        &PodRules { ingress: isolated(vec![]), egress: isolated(vec![(b, vec![PortRule::ports(1, UDP, 90, 90)])]) },
    )
    .unwrap();
    let (a_sock, b_sock) = (udp_socket(env.pod("x/a"), 91), udp_socket(env.pod("x/b"), 90));
    let (a_addr, b_addr) =
        (SocketAddr::new(env.pod("x/a").ip.into(), 91), SocketAddr::new(env.pod("x/b").ip.into(), 90));
    assert!(udp_arrives(&a_sock, &b_sock, b_addr));
    assert!(udp_arrives(&b_sock, &a_sock, a_addr), "b answers while the flow is tracked");
    // On after the answer: a stream, with UDP's own timeout.
    assert!(udp_arrives(&a_sock, &b_sock, b_addr));
    std::thread::sleep(udp + Duration::from_millis(600));
    assert!(!udp_arrives(&b_sock, &a_sock, a_addr), "after the idle timeout b's packet is a new, denied flow");
    assert!(udp_arrives(&a_sock, &b_sock, b_addr), "a can open the flow again");
    assert!(udp_arrives(&b_sock, &a_sock, a_addr));
}

#[test]
fn no_packet_sees_a_half_written_policy() {
    let b = |env: &Env| host(env.pod("x/b"));
    // Both versions allow b on UDP 80 and never c; a writer that deleted
    // before inserting would drop some of b's packets or admit c's.
    hammer(|env, flip| PodRules {
        ingress: isolated(vec![(
            b(env),
            vec![PortRule::ports(1, UDP, 80, 80), PortRule::ports(2, TCP, 81 + u16::from(flip), 81 + u16::from(flip))],
        )]),
        ..Default::default()
    });
}

#[test]
fn a_grant_moving_between_prefixes_is_never_seen_half_moved() {
    // b is admitted by its own /32, then by the pods' /24 with c's /32
    // carved out: a writer that overwrote in place would, for a moment,
    // have the /24 without its except (admitting c) or neither grant
    // (dropping b).
    hammer(|env, flip| {
        let udp80 = vec![PortRule::ports(1, UDP, 80, 80)];
        let entries = if flip {
            vec![("198.18.0.0/24".parse().unwrap(), udp80), (host(env.pod("x/c")), Vec::new())]
        } else {
            vec![(host(env.pod("x/b")), udp80)]
        };
        PodRules { ingress: isolated(entries), ..Default::default() }
    });
}

/// Flips a's rules between `version(false)` and `version(true)` while new
/// UDP flows from b (admitted by both) and c (admitted by neither) probe it.
fn hammer(version: impl Fn(&Env, bool) -> PodRules) {
    let mut env = Env::new(AttachMode::default()).unwrap();
    assert!(env.reaches("x/c", "x/a", Probe::udp(80)), "baseline: nothing attached yet");
    let (first, second) = (version(&env, false), version(&env, true));
    let mut maps = env.attach("x/a", &first).unwrap();
    let a_addr = SocketAddr::new(env.pod("x/a").ip.into(), 80);
    let (pod_b, pod_c) = (env.pod("x/b"), env.pod("x/c"));
    const PROBES: u32 = 150;
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (flips, (b_ok, b_total, c_through), (blasted, leaked)) = std::thread::scope(|s| {
        // c sends as fast as it can: a half-written policy lasts microseconds,
        // and only a dense stream is sure to meet one. Each packet is judged
        // by the rules (c is never admitted, so never tracked); a's echo of
        // any of them is a leak.
        let blaster = s.spawn(|| {
            let sc = udp_socket(pod_c, 0);
            sc.set_nonblocking(true).unwrap();
            let (mut sent, mut echoed) = (0u64, 0u64);
            let mut buf = [0u8; 8];
            while !done.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                sent += u64::from(sc.send_to(b"leak?", a_addr).is_ok());
                while sc.recv_from(&mut buf).is_ok() {
                    echoed += 1;
                }
            }
            (sent, echoed)
        });
        let prober = s.spawn(|| {
            let (mut ok, mut total, mut through) = (0u32, 0u32, 0u32);
            while total < PROBES && Instant::now() < deadline {
                // A fresh source port each time: a new flow, judged by the rules.
                let (sb, sc) = (udp_socket(pod_b, 0), udp_socket(pod_c, 0));
                sc.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                total += 1;
                ok += u32::from(udp_arrives(&sb, &sb, a_addr));
                through += u32::from(udp_arrives(&sc, &sc, a_addr));
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            (ok, total, through)
        });
        // Flip for as long as the prober runs.
        let mut flips = 0u32;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            maps.apply(if flips.is_multiple_of(2) { &second } else { &first }).unwrap();
            flips += 1;
        }
        (flips, prober.join().unwrap(), blaster.join().unwrap())
    });
    println!("{flips} policy flips under {b_total} probes and {blasted} packets from c");
    assert_eq!(leaked, 0, "{leaked} of {blasted} packets from c, allowed by neither version, got through");
    assert!(flips >= 100 && b_total == PROBES, "too little overlap: {flips} flips, {b_total} probes");
    assert_eq!(b_ok, b_total, "every packet allowed by both versions passed");
    assert_eq!(c_through, 0, "no packet allowed by neither version passed");
}

fn ip(args: &[&str]) {
    let status = std::process::Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

/// Writes `len` bytes on `s` and reads them back from the echo server.
fn echoes_bulk(s: &mut TcpStream, len: usize) -> bool {
    let sent: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; len];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (writer, reader) = (s.try_clone().unwrap(), s);
    let writing = std::thread::spawn(move || {
        let mut w = writer;
        w.write_all(&sent).map(|()| sent)
    });
    let read = reader.read_exact(&mut back).is_ok();
    writing.join().unwrap().is_ok_and(|sent| read && sent == back)
}

#[test]
fn path_mtu_discovery_works_for_a_pod_isolated_both_ways() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    let node = env.node.netns().name().to_owned();
    // Jumbo frames on every veth, but 1500 on the node's route to b: a's big
    // segments to b meet an MTU step, and only the node's "fragmentation
    // needed" / "packet too big" tells a to send smaller ones.
    for key in ["x/a", "x/b"] {
        let pod = env.pod(key);
        ip(&["-n", &node, "link", "set", &pod.host_veth, "mtu", "9001"]);
        ip(&["-n", pod.netns().name(), "link", "set", "eth0", "mtu", "9001"]);
    }
    let b = {
        let p = env.pod("x/b");
        (p.ip, p.ip6, p.host_veth.clone())
    };
    ip(&["-n", &node, "route", "replace", &format!("{}/32", b.0), "dev", &b.2, "scope", "link", "mtu", "1500"]);
    ip(&["-n", &node, "-6", "route", "replace", &format!("{}/128", b.1), "dev", &b.2, "mtu", "1500"]);
    // a admits nothing (not even the node) and sends only to b's TCP/80: the
    // node's ICMP errors reach it only as errors about a's own flow.
    let to_b = vec![PortRule::ports(1, TCP, 80, 80)];
    let egress = isolated(vec![(IpNet::from(IpAddr::V4(b.0)), to_b.clone()), (IpNet::from(IpAddr::V6(b.1)), to_b)]);
    env.attach("x/a", &PodRules { ingress: isolated(vec![]), egress }).unwrap();
    for to in [IpAddr::V4(b.0), IpAddr::V6(b.1)] {
        let mut conn = connect(env.pod("x/a"), to, 80);
        assert!(echoes_bulk(&mut conn, 256 * 1024), "{to}: 256 KiB through a 1500-byte hop");
    }
}
