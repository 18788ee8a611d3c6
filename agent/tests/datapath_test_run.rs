//! The programs against crafted packets (BPF_PROG_TEST_RUN): header shapes a
//! real stack rarely sends but an attacker can, and protocols this kernel
//! cannot carry (SCTP). Also records each program's size and how many
//! instructions the verifier processed.
//! Needs root (CAP_BPF).
mod support;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::{
    maps::{HashMap, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use ipnet::IpNet;
use na_agent::{
    bpffs::PinLayout,
    datapath::{
        AttachMode, Datapath, DirectionRules, Expired, KernelLogLevel, Mode, PodAddrs, PodRules, Timeouts, ktime_now_ns,
    },
    pod_id::PodId,
};
use na_common::{
    conntrack::{FlowKey, FlowState, replied, tcp_state},
    direction,
    events::{tier, verdict},
    names::{MAP_CONNTRACK, PROG_EGRESS, PROG_INGRESS},
    policy::PortRule,
    protocol::{ICMP, ICMPV6, SCTP, TCP, UDP},
};
use na_harness::Node;
use support::{Events, PinRoot};

/// `TCX_NEXT`: passed on to whatever comes after our program.
const OK: u32 = -1i32 as u32;
const SHOT: u32 = 2;
const POD4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const EMPTY4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const ANY4: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 1);
const OTHER4: Ipv4Addr = Ipv4Addr::new(10, 7, 7, 7);
/// The host side of a veth: IPv6 link-local.
const HOST_LL6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const OTHER_POD4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// The node's programs with pods registered under the veths of a private
/// namespace (unattached: packets are handed to the programs directly,
/// with the veth's ifindex in the context, as TC would).
struct Pod {
    ingress: Prog,
    egress: Prog,
    dp: Datapath,
    id: PodId,
    /// Another pod with other rules, on its own veth.
    other: u32,
    /// A veth with no pod registered.
    unknown: u32,
    _node: Node,
    _root: PinRoot,
}

/// One of the node's programs, run as if on veth `ifindex`.
struct Prog {
    prog: SchedClassifier,
    pin: std::path::PathBuf,
    ifindex: u32,
}

impl Prog {
    /// The same program, on another veth.
    fn on(&self, ifindex: u32) -> Prog {
        Prog { prog: SchedClassifier::from_pin(&self.pin).unwrap(), pin: self.pin.clone(), ifindex }
    }
}

fn pod() -> Pod {
    pod_with(|dp| dp)
}

/// The pod, on a datapath with the settings `configure` gives it.
fn pod_with(configure: impl FnOnce(Datapath) -> Datapath) -> Pod {
    let root = PinRoot::new();
    let node = Node::new().unwrap();
    for veth in ["tr-pod", "tr-other", "tr-unknown"] {
        let peer = format!("{veth}-p");
        let args = ["-n", node.netns().name(), "link", "add", veth, "type", "veth", "peer", "name", &peer];
        assert!(std::process::Command::new("ip").args(args).status().unwrap().success());
    }
    // This test's thread lives in the node from now on: the kernel resolves a
    // test run's ifindex there.
    nix::sched::setns(node.netns().open().unwrap(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let index = |name: &str| nix::net::if_::if_nametoindex(name).unwrap();
    let dp = configure(Datapath::new(PinLayout::new(&root.0), AttachMode::default()).unwrap());
    let id = PodId::new("t", "pod");
    let net = |ip: IpAddr| IpNet::from(ip);
    let ingress = DirectionRules {
        mode: Mode::PoliciesApplied,
        entries: [
            (net(PEER4.into()), vec![PortRule::ports(1, TCP, 80, 90), PortRule::ports(2, SCTP, 5000, 5000)]),
            (net(EMPTY4.into()), vec![]),
            ("10.9.0.0/16".parse().unwrap(), vec![PortRule::any(4)]),
            (net(PEER6.into()), vec![PortRule::ports(3, UDP, 53, 53), PortRule::ports(5, TCP, 443, 443)]),
        ]
        .into(),
        audit: false,
    };
    let addrs = PodAddrs { ipv4: Some(POD4), ipv6: Some(POD6) };
    dp.load_pod(&id, index("tr-pod"), addrs, &PodRules { ingress, egress: DirectionRules::default() }).unwrap();
    dp.load_pod(&PodId::new("t", "other"), index("tr-other"), OTHER_ADDRS, &other_rules()).unwrap();
    let version = dp.programs().unwrap().as_ref().unwrap().version().to_owned();
    let prog = |name: &str| {
        let pin = dp.layout().program(name, &version);
        Prog { prog: SchedClassifier::from_pin(&pin).unwrap(), pin, ifindex: index("tr-pod") }
    };
    Pod {
        ingress: prog(PROG_INGRESS),
        egress: prog(PROG_EGRESS),
        dp,
        id,
        other: index("tr-other"),
        unknown: index("tr-unknown"),
        _node: node,
        _root: root,
    }
}

/// The other pod has no IPv6 address.
const OTHER_ADDRS: PodAddrs = PodAddrs { ipv4: Some(OTHER_POD4), ipv6: None };

/// The other pod admits only OTHER4, and only on TCP/85; it may send nothing
/// but replies to what it admitted (egress isolated, no rule).
fn other_rules() -> PodRules {
    let ingress = DirectionRules {
        mode: Mode::PoliciesApplied,
        entries: [(IpNet::from(IpAddr::from(OTHER4)), vec![PortRule::ports(9, TCP, 85, 85)])].into(),
        audit: false,
    };
    PodRules {
        ingress,
        egress: DirectionRules { mode: Mode::PoliciesApplied, entries: Default::default(), audit: false },
    }
}

fn run(prog: &Prog, packet: &[u8]) -> u32 {
    let mut out = vec![0u8; packet.len() + 256];
    // `struct __sk_buff` up to `ifindex` (offset 40): the veth the packet is on.
    let mut ctx = [0u8; 44];
    ctx[40..].copy_from_slice(&prog.ifindex.to_ne_bytes());
    let opts =
        TestRunOptions { data_in: Some(packet), data_out: Some(&mut out), ctx_in: Some(&ctx), ..TestRunOptions::new() };
    prog.prog.test_run(opts).expect("test run").return_value
}

// ---- packet builders -------------------------------------------------------

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// Ports (and TCP flags) as they start every transport header we parse.
fn l4(proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.resize(if proto == TCP { 20 } else { 8 }, 0);
    if proto == TCP {
        h[12] = 0x50;
        h[13] = SYN;
    }
    h
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = l4(TCP, sport, dport);
    h[13] = flags;
    h
}

struct V4 {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: Vec<u8>,
    id: u16,
    frag: u16,
}

impl V4 {
    fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self { src, dst, proto, options: vec![], id: 7, frag: 0 }
    }

    fn header(&self, payload_len: usize) -> Vec<u8> {
        let hlen = 20 + self.options.len();
        let mut h = vec![0x40 | (hlen / 4) as u8, 0];
        h.extend_from_slice(&((hlen + payload_len) as u16).to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.extend_from_slice(&[64, self.proto, 0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        h
    }

    fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut p = self.header(payload.len());
        p.extend_from_slice(payload);
        eth(0x0800, &p)
    }
}

fn v4(src: Ipv4Addr, proto: u8, dport: u16) -> Vec<u8> {
    V4::new(src, POD4, proto).packet(&l4(proto, 40000, dport))
}

/// IPv6 with `ext` extension headers, each `(type, bytes)`, then `proto`.
fn v6_with(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, ext: &[(u8, Vec<u8>)], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (_, bytes)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |(t, _)| *t);
        let mut b = bytes.clone();
        b[0] = next;
        body.extend_from_slice(&b);
    }
    body.extend_from_slice(payload);
    let first = ext.first().map_or(proto, |(t, _)| *t);
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&[first, hop_limit]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&body);
    eth(0x86dd, &h)
}

/// An 8-byte options header (hop-by-hop, destination options) or routing header.
fn ext8() -> Vec<u8> {
    vec![0, 0, 1, 4, 0, 0, 0, 0]
}

/// A neighbour solicitation's first bytes.
fn ns() -> Vec<u8> {
    vec![135, 0, 0, 0, 0, 0, 0, 0]
}

fn frag6(offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![0, 0];
    h.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

// ---- the table -------------------------------------------------------------

#[test]
fn ipv4_ports_ranges_options_and_truncation() {
    let p = pod();
    let cases: &[(&str, Vec<u8>, u32)] = &[
        ("range start", v4(PEER4, TCP, 80), OK),
        ("range end", v4(PEER4, TCP, 90), OK),
        ("end + 1", v4(PEER4, TCP, 91), SHOT),
        ("start - 1", v4(PEER4, TCP, 79), SHOT),
        ("other protocol on an allowed port", v4(PEER4, UDP, 80), SHOT),
        ("SCTP port", v4(PEER4, SCTP, 5000), OK),
        ("SCTP other port", v4(PEER4, SCTP, 5001), SHOT),
        ("unknown peer", v4(OTHER4, TCP, 80), SHOT),
        ("entry with no rules (an except) matches nothing", v4(EMPTY4, TCP, 80), SHOT),
        ("any-protocol rule", v4(ANY4, UDP, 9999), OK),
        ("ICMP needs an any-protocol rule", V4::new(PEER4, POD4, ICMP).packet(&[8, 0, 0, 0, 0, 1, 0, 1]), SHOT),
        ("ICMP from an any-protocol peer", V4::new(ANY4, POD4, ICMP).packet(&[8, 0, 0, 0, 0, 1, 0, 1]), OK),
        ("ARP is never filtered", eth(0x0806, &[0; 28]), OK),
        (
            "truncated before the ports",
            {
                let mut v = v4(PEER4, TCP, 80);
                v.truncate(14 + 20 + 2);
                v
            },
            SHOT,
        ),
        (
            "header length below 20",
            {
                let mut v = v4(PEER4, TCP, 80);
                v[14] = 0x44;
                v
            },
            SHOT,
        ),
        (
            "IPv6 version in an IPv4 frame",
            {
                let mut v = v4(PEER4, TCP, 80);
                v[14] = 0x65;
                v
            },
            SHOT,
        ),
    ];
    for (name, packet, want) in cases {
        assert_eq!(run(&p.ingress, packet), *want, "{name}");
    }
}

#[test]
fn ipv4_options_are_skipped_not_read_as_ports() {
    let p = pod();
    // Options whose first bytes look like ports 40000 -> 80; the real
    // destination port behind them is 22.
    let mut fake = V4::new(PEER4, POD4, TCP);
    fake.options = vec![0x9c, 0x40, 0x00, 0x50, 0x01, 0x01, 0x01, 0x00];
    assert_eq!(run(&p.ingress, &fake.packet(&l4(TCP, 40000, 22))), SHOT);
    assert_eq!(run(&p.ingress, &fake.packet(&l4(TCP, 40000, 80))), OK);
}

#[test]
fn ipv4_fragments_follow_their_first_fragment() {
    let p = pod();
    let mut first = V4::new(PEER4, POD4, TCP);
    first.id = 99;
    first.frag = 0x2000; // more fragments, offset 0
    assert_eq!(run(&p.ingress, &first.packet(&l4(TCP, 40001, 80))), OK);
    let mut later = V4::new(PEER4, POD4, TCP);
    later.id = 99;
    later.frag = 0x0003; // offset 24 bytes, last fragment
    // The payload of a later fragment looks like an allowed port to nobody.
    assert_eq!(run(&p.ingress, &later.packet(&[0xde, 0xad, 0x00, 0x50, 0, 0, 0, 0])), OK, "same datagram");
    later.id = 100;
    assert_eq!(run(&p.ingress, &later.packet(&[0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 0])), SHOT, "no first fragment seen");
    let mut any = V4::new(ANY4, POD4, UDP);
    any.frag = 0x0003;
    assert_eq!(run(&p.ingress, &any.packet(&[0; 8])), OK, "all-protocol rules admit any fragment");
    // A first fragment to a port that is not allowed records nothing.
    first.id = 101;
    assert_eq!(run(&p.ingress, &first.packet(&l4(TCP, 40001, 22))), SHOT);
    later.id = 101;
    assert_eq!(run(&p.ingress, &later.packet(&[0; 8])), SHOT);
}

/// An ICMP destination-unreachable from `outer` about `quoted`, quoting its
/// IP header and the first 8 bytes after it (all RFC 792 promises).
fn unreachable(outer: &V4, quoted: &V4, sport: u16, dport: u16) -> Vec<u8> {
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    let l = &l4(quoted.proto, sport, dport)[..8];
    icmp.extend_from_slice(&quoted.header(l.len()));
    icmp.extend_from_slice(l);
    outer.packet(&icmp)
}

#[test]
fn icmp_errors_pass_only_about_live_flows_quoting_what_their_receiver_sent() {
    let p = pod();
    let (other_in, other_out) = (p.ingress.on(p.other), p.egress.on(p.other));
    let dns = Ipv4Addr::new(8, 8, 8, 8);
    let router = Ipv4Addr::new(10, 99, 0, 1);
    // The pod (egress open, nothing from 8.8.8.8 or the router admitted)
    // sends UDP to 8.8.8.8:53 and TCP to OTHER4:85: both tracked.
    assert_eq!(run(&p.egress, &V4::new(POD4, dns, UDP).packet(&l4(UDP, 5555, 53))), OK);
    assert_eq!(run(&p.egress, &V4::new(POD4, OTHER4, TCP).packet(&tcp(41000, 85, SYN))), OK);
    let arriving = |quoted: V4, sport, dport| unreachable(&V4::new(router, POD4, ICMP), &quoted, sport, dport);
    let cases = [
        ("from any router, quoting the pod's own packet", arriving(V4::new(POD4, dns, UDP), 5555, 53), OK),
        ("a TCP quote of 8 bytes: ports only", arriving(V4::new(POD4, OTHER4, TCP), 41000, 85), OK),
        ("about a flow nobody opened", arriving(V4::new(POD4, dns, UDP), 5556, 53), SHOT),
        ("quoting a packet the pod never sent", arriving(V4::new(dns, POD4, UDP), 53, 5555), SHOT),
    ];
    for (name, packet, want) in cases {
        assert_eq!(run(&p.ingress, &packet), want, "arriving: {name}");
    }

    // OTHER4 opens a flow to the other pod, which sends nothing unprompted.
    assert_eq!(run(&other_in, &V4::new(OTHER4, OTHER_POD4, TCP).packet(&tcp(40000, 85, SYN))), OK);
    let leaving = |to, quoted: V4, sport, dport| unreachable(&V4::new(OTHER_POD4, to, ICMP), &quoted, sport, dport);
    let peers_packet = || V4::new(OTHER4, OTHER_POD4, TCP);
    let cases = [
        ("to the flow's peer, quoting its packet", leaving(OTHER4, peers_packet(), 40000, 85), OK),
        ("to anyone else", leaving(PEER4, peers_packet(), 40000, 85), SHOT),
        ("quoting the pod's own packet", leaving(OTHER4, V4::new(OTHER_POD4, OTHER4, TCP), 85, 40000), SHOT),
    ];
    for (name, packet, want) in cases {
        assert_eq!(run(&other_out, &packet), want, "leaving: {name}");
    }

    // Judged under an older policy (the rules written again): no error
    // passes until a packet of the flow is judged under the new one.
    let index = p.other;
    p.dp.load_pod(&PodId::new("t", "other"), index, OTHER_ADDRS, &other_rules()).unwrap();
    let error = leaving(OTHER4, peers_packet(), 40000, 85);
    assert_eq!(run(&other_out, &error), SHOT, "the flow was not judged under the current policy");
    assert_eq!(run(&other_in, &V4::new(OTHER4, OTHER_POD4, TCP).packet(&tcp(40000, 85, ACK))), OK);
    assert_eq!(run(&other_out, &error), OK, "judged again, and still allowed");

    // Idle past its timeout, the flow is gone and so is its errors' pass.
    age(&p, &tracked(&p, UDP, 5555), Timeouts::default().unreplied + MARGIN);
    assert_eq!(run(&p.ingress, &arriving(V4::new(POD4, dns, UDP), 5555, 53)), SHOT, "about an expired flow");
}

#[test]
fn a_flow_opened_on_one_hook_admits_only_its_replies_on_the_other() {
    let p = pod();
    // The pod opens POD4:41000 -> OTHER4:85 (egress open; nothing from
    // OTHER4 is admitted on ingress).
    let opened = V4::new(POD4, OTHER4, TCP).packet(&tcp(41000, 85, SYN));
    assert_eq!(run(&p.egress, &opened), OK);
    assert_eq!(run(&p.ingress, &V4::new(OTHER4, POD4, TCP).packet(&tcp(85, 41000, SYN | ACK))), OK, "its reply");
    assert_eq!(run(&p.egress, &V4::new(POD4, OTHER4, TCP).packet(&tcp(41000, 85, ACK))), OK, "its continuation");
    // The opening packet's orientation, arriving on the ingress hook, is no
    // reply: it is judged by the rules, which do not admit it.
    let wrong_way = V4::new(POD4, OTHER4, TCP).packet(&tcp(41000, 85, ACK));
    assert_eq!(run(&p.ingress, &wrong_way), SHOT, "the flow's orientation on the other hook");
}

#[test]
fn packets_leaving_a_pod_from_addresses_not_its_own_are_dropped_as_spoofed() {
    let p = pod();
    let mut ring = Events::open(p.dp.layout());
    let other_out = p.egress.on(p.other);
    let udp = l4(UDP, 40000, 53);
    let pod_ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
    let solicited = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1);
    let (mld, mld_report) = (Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16), [143, 0, 0, 0, 0, 0, 0, 0]);
    // The pod's egress is open: only the source decides.
    let cases: &[(&str, &Prog, Vec<u8>, u32)] = &[
        ("the pod's IPv4 address", &p.egress, V4::new(POD4, OTHER4, UDP).packet(&udp), OK),
        ("its IPv6 address", &p.egress, v6_with(POD6, PEER6, 64, &[], UDP, &udp), OK),
        ("another pod's IPv4 address", &p.egress, V4::new(PEER4, OTHER4, UDP).packet(&udp), SHOT),
        ("another IPv6 address", &p.egress, v6_with(PEER6, POD6, 64, &[], UDP, &udp), SHOT),
        ("link-local, not neighbour discovery", &p.egress, v6_with(pod_ll, solicited, 1, &[], UDP, &udp), SHOT),
        ("link-local listener report", &p.egress, v6_with(pod_ll, mld, 1, &[], ICMPV6, &mld_report), OK),
        ("a listener report that could be routed", &p.egress, v6_with(pod_ll, mld, 64, &[], ICMPV6, &mld_report), SHOT),
        ("link-local neighbour discovery", &p.egress, v6_with(pod_ll, solicited, 255, &[], ICMPV6, &ns()), OK),
        (
            "duplicate address detection",
            &p.egress,
            v6_with(Ipv6Addr::UNSPECIFIED, solicited, 255, &[], ICMPV6, &ns()),
            OK,
        ),
        // The other pod has no IPv6 address and an isolated egress.
        ("no IPv6 address of its own", &other_out, v6_with(POD6, PEER6, 64, &[], UDP, &udp), SHOT),
        ("but neighbour discovery", &other_out, v6_with(pod_ll, solicited, 255, &[], ICMPV6, &ns()), OK),
        ("to the host's link-local address", &other_out, v6_with(pod_ll, HOST_LL6, 255, &[], ICMPV6, &ns()), OK),
        ("not to a global address", &other_out, v6_with(pod_ll, PEER6, 255, &[], ICMPV6, &ns()), SHOT),
    ];
    for (name, prog, packet, want) in cases {
        assert_eq!(run(prog, packet), *want, "{name}");
    }
    let spoofed: Vec<_> = ring.take().into_iter().filter(|e| e.tier == tier::SPOOFED).collect();
    assert_eq!(spoofed.len(), 5, "each spoofed packet is an event: {spoofed:?}");
    assert!(spoofed.iter().all(|e| e.verdict == verdict::DENY && e.direction == 1));
    assert_eq!(&spoofed[0].src_addr.0[..4], &PEER4.octets()[..], "the event carries the forged source");

    // The forged packet cannot open a flow for the real peer either: PEER4
    // may reach the pod on 80-90 only, and its packets to 22 stay denied.
    let forged = V4::new(PEER4, POD4, TCP).packet(&tcp(40000, 22, SYN));
    assert_eq!(run(&p.egress, &forged), SHOT);
    assert_eq!(run(&p.ingress, &forged), SHOT, "the peer's real packet to the denied port");
}

#[test]
fn neighbour_discovery_with_the_nodes_own_global_addresses_passes() {
    let p = pod();
    // A global address on the host side of a veth (CNI ptp puts the pod's
    // gateway there): the host solicits the pod from it, and the pod's
    // advertisements and probes go back to it.
    const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xfe);
    let other_out = p.egress.on(p.other);
    let other_ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 9);
    let na = vec![136, 0, 0, 0, 0, 0, 0, 0];
    // (case, program, packet)
    let cases = [
        (
            "a solicitation from the node's address into the pod",
            &p.ingress,
            v6_with(NODE6, POD6, 255, &[], ICMPV6, &ns()),
        ),
        ("an advertisement leaving the pod for it", &other_out, v6_with(other_ll, NODE6, 255, &[], ICMPV6, &na)),
        ("a probe leaving the pod for it", &other_out, v6_with(other_ll, NODE6, 255, &[], ICMPV6, &ns())),
    ];
    // Both directions are isolated and neither admits NODE6.
    for (name, prog, packet) in &cases {
        assert_eq!(run(prog, packet), SHOT, "{name}: judged as ICMPv6 while the address is not the node's");
    }
    let node: std::collections::BTreeSet<Ipv6Addr> = [NODE6].into();
    assert_eq!(p.dp.set_node_addrs(&node).unwrap(), 1);
    for (name, prog, packet) in &cases {
        assert_eq!(run(prog, packet), OK, "{name}");
    }
    let far = v6_with(NODE6, POD6, 64, &[], ICMPV6, &ns());
    assert_eq!(run(&p.ingress, &far), SHOT, "not with a hop limit below 255: routed, so not from the node");
    let to_peer = v6_with(other_ll, PEER6, 255, &[], ICMPV6, &na);
    assert_eq!(run(&other_out, &to_peer), SHOT, "nor to an address that is not the node's");
    assert_eq!(p.dp.set_node_addrs(&Default::default()).unwrap(), 1, "the address goes");
    assert_eq!(run(&p.ingress, &cases[0].2), SHOT, "and with it the exemption");
}

#[test]
fn frames_neither_ip_nor_arp_pass_only_where_the_pod_is_not_isolated() {
    let p = pod();
    let mut ring = Events::open(p.dp.layout());
    let vlan = eth(0x8100, &[0, 1, 0x08, 0x00, 0x45, 0, 0, 20]);
    let cases: &[(&str, Vec<u8>)] = &[
        ("802.1Q", vlan.clone()),
        ("802.1ad", eth(0x88a8, &[0, 1, 0x81, 0x00, 0, 1, 0x08, 0x00])),
        ("PPPoE session", eth(0x8864, &[0x11, 0, 0, 1, 0, 2, 0, 0x21])),
        ("MPLS", eth(0x8847, &[0, 0, 0x11, 64])),
        ("unknown", eth(0x88b5, &[0; 8])),
    ];
    for (name, frame) in cases {
        // The pod's ingress is isolated, its egress is not.
        assert_eq!(run(&p.ingress, frame), SHOT, "{name} into an isolated pod");
        assert_eq!(run(&p.egress, frame), OK, "{name} from a pod whose egress is open");
        assert_eq!(run(&p.egress.on(p.other), frame), SHOT, "{name} from a pod whose egress is isolated");
    }
    let arp = eth(0x0806, &[0; 28]);
    assert_eq!(run(&p.ingress, &arp), OK, "ARP passes");
    assert_eq!(run(&p.egress.on(p.other), &arp), OK, "ARP passes");
    let events = ring.take();
    assert_eq!(events.iter().filter(|e| e.tier == tier::NOT_IP && e.verdict == verdict::DENY).count(), 10);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let p = pod();
    let udp = |port| l4(UDP, 40000, port);
    let cases: &[(&str, Vec<u8>, u32)] = &[
        ("plain", v6_with(PEER6, POD6, 64, &[], UDP, &udp(53)), OK),
        ("other port", v6_with(PEER6, POD6, 64, &[], UDP, &udp(54)), SHOT),
        (
            "hop-by-hop, routing, destination options",
            v6_with(PEER6, POD6, 64, &[(0, ext8()), (43, ext8()), (60, ext8())], UDP, &udp(53)),
            OK,
        ),
        ("same, other port", v6_with(PEER6, POD6, 64, &[(0, ext8()), (43, ext8()), (60, ext8())], UDP, &udp(54)), SHOT),
        ("more extension headers than walked", v6_with(PEER6, POD6, 64, &vec![(60, ext8()); 9], UDP, &udp(53)), SHOT),
        (
            "truncated inside an extension header",
            {
                let mut v = v6_with(PEER6, POD6, 64, &[(0, ext8())], UDP, &udp(53));
                v.truncate(14 + 40 + 4);
                v
            },
            SHOT,
        ),
        ("unknown peer", v6_with(Ipv6Addr::LOCALHOST, POD6, 64, &[], UDP, &udp(53)), SHOT),
        ("TCP 443", v6_with(PEER6, POD6, 64, &[], TCP, &l4(TCP, 40000, 443)), OK),
        ("neighbour solicitation from the host", v6_with(HOST_LL6, POD6, 255, &[], ICMPV6, &ns()), OK),
        ("neighbour solicitation from a global address", v6_with(PEER6, POD6, 255, &[], ICMPV6, &ns()), SHOT),
        (
            "NS-looking message routed from afar",
            v6_with(PEER6, POD6, 64, &[], ICMPV6, &[135, 0, 0, 0, 0, 0, 0, 0]),
            SHOT,
        ),
        (
            "echo request needs an any-protocol rule",
            v6_with(PEER6, POD6, 64, &[], ICMPV6, &[128, 0, 0, 0, 0, 1, 0, 1]),
            SHOT,
        ),
    ];
    for (name, packet, want) in cases {
        assert_eq!(run(&p.ingress, packet), *want, "{name}");
    }
}

#[test]
fn ipv6_fragments_follow_their_first_fragment() {
    let p = pod();
    let first = v6_with(PEER6, POD6, 64, &[(44, frag6(0, true, 7))], UDP, &l4(UDP, 40000, 53));
    assert_eq!(run(&p.ingress, &first), OK);
    let later = |id| v6_with(PEER6, POD6, 64, &[(44, frag6(3, false, id))], UDP, &[0, 0, 0, 53, 0, 0, 0, 0]);
    assert_eq!(run(&p.ingress, &later(7)), OK, "same datagram");
    assert_eq!(run(&p.ingress, &later(8)), SHOT, "no first fragment seen");
}

#[test]
fn verdicts_are_counted_and_logged_with_their_rule() {
    let p = pod();
    let mut ring = Events::open(p.dp.layout());

    let allowed = v4(PEER4, TCP, 85);
    let denied = v4(OTHER4, TCP, 85);
    for _ in 0..3 {
        assert_eq!(run(&p.ingress, &allowed), OK);
    }
    for _ in 0..2 {
        assert_eq!(run(&p.ingress, &denied), SHOT);
    }
    let c = na_agent::datapath::pod_counters(p.dp.layout(), &p.id).unwrap();
    assert_eq!((c.ingress_allowed.packets, c.ingress_denied.packets), (3, 2));
    assert_eq!(c.ingress_allowed.bytes, 3 * allowed.len() as u64);
    assert_eq!((c.egress_allowed.packets, c.egress_denied.packets), (0, 0));

    let mut short = v4(PEER4, TCP, 80);
    short.truncate(14 + 20 + 2);
    assert_eq!(run(&p.ingress, &short), SHOT);

    // One event for the first allowed packet (the rest ride conntrack), one per
    // denial, one for the malformed packet.
    let mut events = ring.take();
    assert_eq!(events.len(), 4, "{events:?}");
    let malformed = events.pop().unwrap();
    assert_eq!((malformed.verdict, malformed.tier, malformed.family), (verdict::DENY, tier::MALFORMED, 0));
    let first = events[0];
    assert_eq!((first.verdict, first.tier, first.policy_id), (verdict::ALLOW, tier::NETWORK_POLICY, 1));
    assert_eq!((&first.src_addr.0[..4], first.dst_port, first.protocol), (&PEER4.octets()[..], 85, TCP));
    assert!(
        events[1..]
            .iter()
            .all(|e| e.verdict == verdict::DENY && e.policy_id == 0 && e.src_addr.0[..4] == OTHER4.octets())
    );
}

#[test]
fn verifier_statistics() {
    let p = pod();
    for (name, prog) in [(PROG_INGRESS, &p.ingress), (PROG_EGRESS, &p.egress)] {
        let info = prog.prog.info().unwrap();
        let xlated = info.size_translated().unwrap_or(0) / 8;
        let verified = info.verified_instruction_count().unwrap_or(0);
        println!("{name}: {xlated} instructions, {verified} processed by the verifier");
        assert!(xlated > 0 && verified >= xlated, "{name}: {xlated} / {verified}");
    }
}

/// Collects what the kernel logged.
struct Capture(std::sync::Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        self.0.lock().unwrap().push(record.args().to_string());
    }

    fn flush(&self) {}
}

fn kernel_log_after_a_denial(level: KernelLogLevel) -> Vec<String> {
    let p = pod_with(|dp| dp.with_log_level(level));
    let capture: &'static Capture = Box::leak(Box::new(Capture(Default::default())));
    let mut logger =
        aya_log::EbpfLogger::init_from_id_with_logger(p.ingress.prog.info().unwrap().id(), capture).unwrap();
    assert_eq!(run(&p.ingress, &v4(OTHER4, TCP, 85)), SHOT);
    logger.flush();
    capture.0.lock().unwrap().clone()
}

#[test]
fn kernel_log_is_off_by_default_and_speaks_when_asked() {
    assert!(kernel_log_after_a_denial(KernelLogLevel::Off).is_empty());
    let lines = kernel_log_after_a_denial(KernelLogLevel::Debug);
    assert!(lines.iter().any(|l| l.contains("port 85 denied")), "{lines:?}");
}

#[test]
fn each_veth_is_judged_by_its_own_pods_maps_only() {
    let p = pod();
    let other = p.ingress.on(p.other);
    // PEER4 may reach the pod, OTHER4 the other pod: never the reverse.
    assert_eq!(run(&p.ingress, &v4(PEER4, TCP, 85)), OK);
    assert_eq!(run(&other, &v4(PEER4, TCP, 85)), SHOT, "the pod's rule must not open the other pod");
    assert_eq!(run(&other, &v4(OTHER4, TCP, 85)), OK);
    assert_eq!(run(&p.ingress, &v4(OTHER4, TCP, 85)), SHOT, "the other pod's rule must not open the pod");
    // A flow tracked on one veth is not tracked on another: the PEER4 flow
    // the pod admitted (and tracked) is still judged afresh on the other.
    assert_eq!(run(&p.ingress, &v4(PEER4, TCP, 85)), OK);
    assert_eq!(run(&other, &v4(PEER4, TCP, 85)), SHOT);
    // Counters are the veth's own.
    let c = na_agent::datapath::pod_counters(p.dp.layout(), &p.id).unwrap();
    assert_eq!((c.ingress_allowed.packets, c.ingress_denied.packets), (2, 1));
    let o = na_agent::datapath::pod_counters(p.dp.layout(), &PodId::new("t", "other")).unwrap();
    assert_eq!((o.ingress_allowed.packets, o.ingress_denied.packets), (1, 2));
}

#[test]
fn a_veth_without_a_pod_passes_in_standard_mode_and_drops_in_strict_mode() {
    let standard = pod();
    assert_eq!(run(&standard.ingress.on(standard.unknown), &v4(OTHER4, TCP, 22)), OK);
    assert_eq!(run(&standard.egress.on(standard.unknown), &v4(OTHER4, TCP, 22)), OK);
    let strict = pod_with(|dp| dp.with_strict(true));
    assert_eq!(run(&strict.ingress.on(strict.unknown), &v4(OTHER4, TCP, 22)), SHOT);
    assert_eq!(run(&strict.egress.on(strict.unknown), &v4(OTHER4, TCP, 22)), SHOT);
    // Registered pods are judged by their rules in both.
    assert_eq!(run(&strict.ingress, &v4(PEER4, TCP, 85)), OK);
    // Counted, under the slot of veths without a pod.
    let tables = na_agent::datapath::NodeTables::open(strict.dp.layout()).unwrap();
    let unknown = na_agent::datapath::counters(&tables.counters(na_common::pod_state::UNKNOWN_POD).unwrap());
    assert_eq!((unknown.ingress_denied.packets, unknown.egress_denied.packets), (1, 1));
}

#[test]
fn a_flood_of_flows_fills_only_its_own_pods_table_and_evicts_nothing_live() {
    const CAPACITY: u32 = 16;
    let p = pod_with(|dp| dp.with_flows_per_pod(CAPACITY));
    let other_in = p.ingress.on(p.other);
    let other_out = p.egress.on(p.other);
    // The other pod's replies pass only as part of a tracked flow.
    let reply = V4::new(OTHER_POD4, OTHER4, TCP).packet(&l4(TCP, 85, 40000));
    let first = V4::new(OTHER4, OTHER_POD4, TCP).packet(&l4(TCP, 40000, 85));
    assert_eq!(run(&other_out, &reply), SHOT, "nothing tracked yet");
    assert_eq!(run(&other_in, &first), OK);
    assert_eq!(run(&other_out, &reply), OK, "the reply of the tracked flow");
    // The pod's own first flow, also tracked.
    assert_eq!(run(&p.ingress, &v4(PEER4, TCP, 85)), OK);
    // A flood of new allowed flows into the pod: far more than its table holds.
    for sport in 0..(CAPACITY as u16 * 4) {
        let syn = V4::new(PEER4, POD4, TCP).packet(&l4(TCP, 20000 + sport, 85));
        assert_eq!(run(&p.ingress, &syn), OK, "allowed by the rules, tracked or not");
    }
    // Nothing live was evicted: the other pod's flow and the pod's first one.
    assert_eq!(run(&other_out, &reply), OK, "another pod's flow survives the flood");
    // And the other pod still has room for new flows.
    let later_reply = V4::new(OTHER_POD4, OTHER4, TCP).packet(&l4(TCP, 85, 40001));
    let later = V4::new(OTHER4, OTHER_POD4, TCP).packet(&l4(TCP, 40001, 85));
    assert_eq!(run(&other_in, &later), OK);
    assert_eq!(run(&other_out, &later_reply), OK, "another pod's new flow is tracked despite the flood");
    let table = conntrack(&p);
    assert_eq!(table.keys().count(), CAPACITY as usize, "the pod's table is full at its own capacity");
    assert!(
        table.keys().filter_map(Result::ok).any(|k| k.peer_port == 40000 && k.peer_addr.0[..4] == PEER4.octets()),
        "the pod's own first flow is still tracked"
    );
}

// ---- conntrack expiry --------------------------------------------------------

/// Idle timeouts at least a second apart, so which one an entry gets is told from
/// its neighbours by ageing the entry to just under and just over it.
const TIMEOUTS: Timeouts = Timeouts {
    other: Duration::from_secs(2),
    unreplied: Duration::from_secs(3),
    tcp_closing: Duration::from_secs(4),
    tcp_closed: Duration::from_secs(5),
    udp: Duration::from_secs(6),
    revoked: Duration::from_secs(7),
    tcp_established: Duration::from_secs(8),
};
const MARGIN: Duration = Duration::from_millis(500);

fn conntrack(p: &Pod) -> HashMap<MapData, FlowKey, FlowState> {
    na_agent::datapath::open_pinned(&p.dp.layout().map(&p.id, MAP_CONNTRACK)).unwrap()
}

/// The key of the pod's tracked flow of `protocol` from its port `sport`.
fn tracked(p: &Pod, protocol: u8, sport: u16) -> FlowKey {
    let key = conntrack(p).keys().filter_map(Result::ok).find(|k| k.protocol == protocol && k.pod_port == sport);
    key.unwrap_or_else(|| panic!("no tracked flow of protocol {protocol} from port {sport}"))
}

/// Makes `key`'s entry idle for `idle`. The programs compare the entry's
/// stamp with their clock, so this is the wait without the waiting.
fn age(p: &Pod, key: &FlowKey, idle: Duration) {
    let mut table = conntrack(p);
    let mut flow = table.get(key, 0).unwrap();
    let idle = u64::try_from(idle.as_nanos()).unwrap();
    flow.last_seen_ns = ktime_now_ns().checked_sub(idle).expect("up for longer than the longest timeout");
    table.insert(key, flow, 0).unwrap();
}

/// Asserts that the peer's `reply` to the flow under `key` passes while the
/// flow is idle for just under `timeout`, and not once it is idle for just
/// over it (when the program also removes the entry).
fn expires_after(p: &Pod, name: &str, key: &FlowKey, reply: &[u8], timeout: Duration) {
    age(p, key, timeout - MARGIN);
    assert_eq!(run(&p.ingress, reply), OK, "{name}: tracked until its timeout");
    age(p, key, timeout + MARGIN);
    assert_eq!(run(&p.ingress, reply), SHOT, "{name}: gone after its timeout");
    assert!(conntrack(p).get(key, 0).is_err(), "{name}: the program removed the expired entry");
}

/// The packets that close a TCP flow, in order: (sent by the pod, flags, the state after it).
type Closing = &'static [(bool, u8, u8)];

#[test]
fn tcp_flows_keep_the_long_timeout_until_fin_and_a_short_one_once_over() {
    use tcp_state::{CLOSED, CLOSING, CLOSING_REPLY, RESET};
    let p = pod_with(|dp| dp.with_timeouts(TIMEOUTS));
    // The pod's egress is open; its ingress admits nothing from OTHER4, so
    // the peer's packets pass only as part of a tracked flow.
    let out = |sport, flags| V4::new(POD4, OTHER4, TCP).packet(&tcp(sport, 85, flags));
    let back = |sport, flags| V4::new(OTHER4, POD4, TCP).packet(&tcp(85, sport, flags));
    // (case, source port, what closes the flow, the timeout after it)
    let cases: [(&str, u16, Closing, Duration); 8] = [
        ("established", 41000, &[], TIMEOUTS.tcp_established),
        ("FIN from the pod only", 41006, &[(true, FIN | ACK, CLOSING)], TIMEOUTS.tcp_closing),
        ("FIN from the peer only", 41007, &[(false, FIN | ACK, CLOSING_REPLY)], TIMEOUTS.tcp_closing),
        (
            "FIN from the pod, then the peer",
            41001,
            &[(true, FIN | ACK, CLOSING), (false, FIN | ACK, CLOSED)],
            TIMEOUTS.tcp_closed,
        ),
        (
            "FIN from the peer, then the pod",
            41002,
            &[(false, FIN | ACK, CLOSING_REPLY), (true, FIN | ACK, CLOSED)],
            TIMEOUTS.tcp_closed,
        ),
        ("RST from the pod", 41003, &[(true, RST, RESET)], TIMEOUTS.tcp_closed),
        ("RST from the peer", 41004, &[(false, RST, RESET)], TIMEOUTS.tcp_closed),
        (
            "FIN, then RST, then FIN",
            41005,
            &[(true, FIN | ACK, CLOSING), (false, RST, RESET), (true, FIN | ACK, RESET)],
            TIMEOUTS.tcp_closed,
        ),
    ];
    for (name, sport, closing, timeout) in cases {
        assert_eq!(run(&p.egress, &out(sport, SYN)), OK);
        assert_eq!(run(&p.ingress, &back(sport, SYN | ACK)), OK, "{name}: the peer answers a tracked flow");
        assert_eq!(run(&p.egress, &out(sport, ACK)), OK);
        let key = tracked(&p, TCP, sport);
        let state = || conntrack(&p).get(&key, 0).unwrap().tcp_state;
        assert_eq!(state(), tcp_state::OPEN, "{name}");
        for (by_pod, flags, after) in closing {
            let (prog, packet) =
                if *by_pod { (&p.egress, out(sport, *flags)) } else { (&p.ingress, back(sport, *flags)) };
            assert_eq!(run(prog, &packet), OK, "{name}");
            assert_eq!(state(), *after, "{name}: after flags {flags:#x}");
        }
        expires_after(&p, name, &key, &back(sport, ACK), timeout);
    }
}

#[test]
fn a_new_connection_on_a_finished_ones_port_starts_afresh() {
    let p = pod_with(|dp| dp.with_timeouts(TIMEOUTS));
    let out = |flags| V4::new(POD4, OTHER4, TCP).packet(&tcp(41100, 85, flags));
    let back = |flags| V4::new(OTHER4, POD4, TCP).packet(&tcp(85, 41100, flags));
    for (prog, packet) in [(&p.egress, out(SYN)), (&p.ingress, back(SYN | ACK)), (&p.ingress, back(RST))] {
        assert_eq!(run(prog, &packet), OK);
    }
    let key = tracked(&p, TCP, 41100);
    let entry = || conntrack(&p).get(&key, 0).unwrap();
    assert_eq!((entry().tcp_state, entry().replied), (tcp_state::RESET, replied::STREAM));
    // The pod connects again from the same port: a new connection, not the
    // old one's 10 s remainder.
    assert_eq!(run(&p.egress, &out(SYN)), OK);
    assert_eq!((entry().tcp_state, entry().replied), (tcp_state::OPEN, replied::NONE));
    assert_eq!(run(&p.ingress, &back(SYN | ACK)), OK);
    expires_after(&p, "reopened", &key, &back(ACK), TIMEOUTS.tcp_established);
}

#[test]
fn a_revoked_flow_stays_cut_both_ways_until_it_idles_out_or_is_allowed_again() {
    let p = pod_with(|dp| dp.with_timeouts(TIMEOUTS));
    let mut ring = Events::open(p.dp.layout());
    // The pod's ingress admits PEER4 to its TCP ports 80-90; its egress is
    // open. It opens a flow from its port 85 to PEER4:7000, so the peer's
    // half of that flow is also what the ingress rules admit as new.
    let out = |flags| V4::new(POD4, PEER4, TCP).packet(&tcp(85, 7000, flags));
    let back = |flags| V4::new(PEER4, POD4, TCP).packet(&tcp(7000, 85, flags));
    assert_eq!(run(&p.egress, &out(SYN)), OK);
    assert_eq!(run(&p.ingress, &back(SYN | ACK)), OK);
    let key = tracked(&p, TCP, 85);
    let ingress = || DirectionRules {
        mode: Mode::PoliciesApplied,
        entries: [(IpNet::from(IpAddr::from(PEER4)), vec![PortRule::ports(1, TCP, 80, 90)])].into(),
        audit: false,
    };
    let addrs = PodAddrs { ipv4: Some(POD4), ipv6: Some(POD6) };
    let mut maps = p
        .dp
        .load_pod(&p.id, p.ingress.ifindex, addrs, &PodRules { ingress: ingress(), egress: DirectionRules::default() })
        .unwrap();
    let closed = PodRules {
        ingress: ingress(),
        egress: DirectionRules { mode: Mode::PoliciesApplied, entries: Default::default(), audit: false },
    };
    maps.apply(&closed).unwrap();
    ring.take();
    // The pod's egress no longer admits the flow. The peer keeps sending
    // (retransmitting, or on purpose): its packets must not reopen the flow
    // as one its ingress admits, which would carry the pod's packets out as
    // replies.
    for round in 0..3 {
        assert_eq!(run(&p.ingress, &back(ACK)), SHOT, "round {round}: the peer's packet meets the revocation");
        assert_eq!(run(&p.egress, &out(ACK)), SHOT, "round {round}: the pod's packet too");
    }
    let events = ring.take();
    assert!(events.len() >= 6 && events.iter().all(|e| e.tier == tier::REVOKED), "{events:?}");
    assert_eq!(conntrack(&p).get(&key, 0).unwrap().revoked, 1);
    // Allowed again: the flow goes on where it was.
    maps.apply(&PodRules { ingress: ingress(), egress: DirectionRules::default() }).unwrap();
    assert_eq!(run(&p.egress, &out(ACK)), OK, "allowed again");
    assert_eq!(run(&p.ingress, &back(ACK)), OK);
    assert_eq!(conntrack(&p).get(&key, 0).unwrap().revoked, 0);
    // Revoked again, and left idle past the revoked timeout: the entry is
    // gone, and the peer's next packet is judged as the new flow it looks like.
    maps.apply(&closed).unwrap();
    assert_eq!(run(&p.ingress, &back(ACK)), SHOT);
    age(&p, &key, TIMEOUTS.revoked - MARGIN);
    assert_eq!(run(&p.ingress, &back(ACK)), SHOT, "revoked until its timeout");
    age(&p, &key, TIMEOUTS.revoked + MARGIN);
    assert_eq!(run(&p.ingress, &back(ACK)), OK, "after it: a new flow the ingress rules admit");
    let reopened = conntrack(&p).get(&key, 0).unwrap();
    assert_eq!((u32::from(reopened.direction), reopened.revoked), (direction::INGRESS, 0));
}

#[test]
fn a_revoked_datagram_flow_is_forgotten_so_the_peers_next_datagram_is_judged_as_new() {
    let p = pod();
    // The pod's ingress admits SCTP from PEER4 to its port 5000; its egress
    // is open. It opens SCTP from that port to PEER4:7000.
    let out = V4::new(POD4, PEER4, SCTP).packet(&l4(SCTP, 5000, 7000));
    let back = V4::new(PEER4, POD4, SCTP).packet(&l4(SCTP, 7000, 5000));
    assert_eq!(run(&p.egress, &out), OK);
    assert_eq!(run(&p.ingress, &back), OK);
    let ingress = DirectionRules {
        mode: Mode::PoliciesApplied,
        entries: [(IpNet::from(IpAddr::from(PEER4)), vec![PortRule::ports(2, SCTP, 5000, 5000)])].into(),
        audit: false,
    };
    let closed = DirectionRules { mode: Mode::PoliciesApplied, entries: Default::default(), audit: false };
    let addrs = PodAddrs { ipv4: Some(POD4), ipv6: Some(POD6) };
    p.dp.load_pod(&p.id, p.ingress.ifindex, addrs, &PodRules { ingress, egress: closed }).unwrap();
    // The pod's egress no longer admits it: the packet that meets the change
    // is dropped and the flow forgotten. No handshake tells the peer's next
    // datagram from one opening a flow of its own, which the pod's ingress
    // admits: it is judged as that, and the pod answers it.
    assert_eq!(run(&p.ingress, &back), SHOT, "the revoked flow's packet");
    assert_eq!(run(&p.ingress, &back), OK, "the peer's next datagram, a flow the ingress rules admit");
    assert_eq!(run(&p.egress, &out), OK, "answered");
    let entry = conntrack(&p).get(&tracked(&p, SCTP, 5000), 0).unwrap();
    assert_eq!((u32::from(entry.direction), entry.revoked), (direction::INGRESS, 0));
}

#[test]
fn other_protocols_expire_after_their_own_timeouts() {
    let p = pod_with(|dp| dp.with_timeouts(TIMEOUTS));
    const GRE: u8 = 47;
    let echo = |kind: u8| vec![kind, 0, 0, 0, 0, 1, 0, 1];
    // (case, protocol, source port in the key, the pod's payload, the peer's, timeout)
    let cases = [
        ("UDP", UDP, 42000, l4(UDP, 42000, 53), l4(UDP, 53, 42000), TIMEOUTS.udp),
        ("SCTP", SCTP, 42001, l4(SCTP, 42001, 5000), l4(SCTP, 5000, 42001), TIMEOUTS.udp),
        ("ICMP echo", ICMP, 0, echo(8), echo(0), TIMEOUTS.other),
        ("GRE", GRE, 0, vec![0; 4], vec![0; 4], TIMEOUTS.other),
    ];
    for (name, protocol, sport, sent, answer, timeout) in cases {
        let (sent, answer) =
            (V4::new(POD4, OTHER4, protocol).packet(&sent), V4::new(OTHER4, POD4, protocol).packet(&answer));
        assert_eq!(run(&p.egress, &sent), OK, "{name}");
        assert_eq!(run(&p.ingress, &answer), OK, "{name}: the peer answers");
        assert_eq!(run(&p.egress, &sent), OK, "{name}: and the conversation goes on");
        let key = tracked(&p, protocol, sport);
        expires_after(&p, name, &key, &answer, timeout);
    }
}

#[test]
fn flows_that_never_saw_a_reply_or_only_one_answer_expire_after_the_short_timeout() {
    let p = pod_with(|dp| dp.with_timeouts(TIMEOUTS));
    // (case, protocol, the pod's payload, the peer's, timeout once answered)
    let cases = [
        ("TCP", TCP, 44000, tcp(44000, 85, SYN), tcp(85, 44000, SYN | ACK), TIMEOUTS.tcp_established),
        ("UDP", UDP, 44001, l4(UDP, 44001, 53), l4(UDP, 53, 44001), TIMEOUTS.udp),
    ];
    for (name, protocol, sport, sent, answer, answered) in cases {
        let (sent, answer) =
            (V4::new(POD4, OTHER4, protocol).packet(&sent), V4::new(OTHER4, POD4, protocol).packet(&answer));
        // Unanswered: the short timeout, whatever the protocol's own.
        assert_eq!(run(&p.egress, &sent), OK, "{name}");
        let key = tracked(&p, protocol, sport);
        assert_eq!(conntrack(&p).get(&key, 0).unwrap().replied, 0, "{name}");
        age(&p, &key, TIMEOUTS.unreplied + MARGIN);
        assert_eq!(run(&p.ingress, &answer), SHOT, "{name}: an unanswered flow is gone after the unreplied timeout");
        // Answered: TCP's own timeout; for UDP, one request and its answer
        // (a DNS lookup) keep the short one.
        assert_eq!(run(&p.egress, &sent), OK, "{name}");
        assert_eq!(run(&p.ingress, &answer), OK, "{name}");
        assert_eq!(conntrack(&p).get(&key, 0).unwrap().replied, replied::ONCE, "{name}: the answer marks the flow");
        if protocol == UDP {
            age(&p, &key, TIMEOUTS.unreplied + MARGIN);
            assert_eq!(run(&p.ingress, &answer), SHOT, "{name}: one answer and no more, gone after the short timeout");
            // A conversation: the pod speaks again after the answer.
            for (prog, packet) in [(&p.egress, &sent), (&p.ingress, &answer), (&p.egress, &sent)] {
                assert_eq!(run(prog, packet), OK, "{name}");
            }
            assert_eq!(conntrack(&p).get(&key, 0).unwrap().replied, replied::STREAM, "{name}");
        }
        expires_after(&p, name, &key, &answer, answered);
    }
}

#[test]
fn the_sweep_removes_expired_entries_only_and_never_one_tracked_again_since_it_read_them() {
    let p = pod_with(|dp| dp.with_timeouts(TIMEOUTS));
    let open = |sport| V4::new(POD4, OTHER4, UDP).packet(&l4(UDP, sport, 53));
    let reply = |sport| V4::new(OTHER4, POD4, UDP).packet(&l4(UDP, 53, sport));
    let (live, idle, revived) = (43000, 43001, 43002);
    // Streams, each: a request, its answer, and more.
    for sport in [live, idle, revived] {
        assert_eq!(run(&p.egress, &open(sport)), OK);
        assert_eq!(run(&p.ingress, &reply(sport)), OK, "port {sport}: the peer answers a tracked flow");
        assert_eq!(run(&p.egress, &open(sport)), OK);
    }
    let ports = || conntrack(&p).keys().filter_map(Result::ok).map(|k| k.pod_port).collect::<BTreeSet<_>>();
    age(&p, &tracked(&p, UDP, live), TIMEOUTS.udp - MARGIN);
    for sport in [idle, revived] {
        age(&p, &tracked(&p, UDP, sport), TIMEOUTS.udp + MARGIN);
    }
    let expired = Expired::find(p.dp.layout(), &p.id, &TIMEOUTS).unwrap();
    let found: BTreeSet<u16> = expired.flows().iter().map(|(k, _)| k.pod_port).collect();
    assert_eq!(found, [idle, revived].into());
    // Between the sweep's read and its removal the pod sends on `revived`
    // again: the program drops the expired entry and tracks the flow anew,
    // under the same key.
    assert_eq!(run(&p.egress, &open(revived)), OK);
    assert_eq!(expired.remove(), 1, "only the entry that was still as read");
    assert_eq!(ports(), [live, revived].into());
    assert_eq!(run(&p.ingress, &reply(revived)), OK, "the flow tracked again lives on");
    assert_eq!(run(&p.ingress, &reply(idle)), SHOT, "the expired flow is gone");
    // The agent's own sweep, with the timeouts it loaded the programs with.
    age(&p, &tracked(&p, UDP, live), TIMEOUTS.udp + MARGIN);
    assert_eq!(p.dp.sweep_conntrack(&p.id).unwrap(), 1);
    assert_eq!(ports(), [revived].into());
}

/// Cluster tiers in the programs: ordered rules with their actions, a Pass
/// that hands the packet on, a miss that passes where no NetworkPolicy
/// isolates; and an audited direction that passes what NetworkPolicy would
/// drop, says so, and counts it.
#[test]
fn cluster_tiers_decide_in_order_and_audit_passes_what_network_policy_denies() {
    use na_common::policy::action;
    let p = pod();
    let mut ring = Events::open(p.dp.layout());
    let ingress = DirectionRules {
        mode: Mode::ClusterPolicies,
        entries: [
            (
                IpNet::from(IpAddr::from(PEER4)),
                vec![
                    PortRule::ports(11, TCP, 80, 80).with_action(action::ADMIN_PASS),
                    PortRule::ports(12, TCP, 80, 81).with_action(action::ADMIN_DENY),
                    PortRule::ports(14, TCP, 82, 82).with_action(action::BASELINE_DENY),
                ],
            ),
            ("10.9.0.0/16".parse().unwrap(), vec![PortRule::any(15).with_action(action::ADMIN_ACCEPT)]),
        ]
        .into(),
        audit: false,
    };
    let egress = DirectionRules { mode: Mode::PoliciesApplied, entries: Default::default(), audit: true };
    let addrs = PodAddrs { ipv4: Some(POD4), ipv6: Some(POD6) };
    p.dp.load_pod(&p.id, p.ingress.ifindex, addrs, &PodRules { ingress, egress }).unwrap();
    ring.take();

    let cases = [
        (PEER4, 80, OK, verdict::ALLOW, tier::DEFAULT_ALLOW, 0),
        (PEER4, 81, SHOT, verdict::DENY, tier::ADMIN, 12),
        (PEER4, 82, SHOT, verdict::DENY, tier::BASELINE, 14),
        (PEER4, 83, OK, verdict::ALLOW, tier::DEFAULT_ALLOW, 0),
        (ANY4, 81, OK, verdict::ALLOW, tier::ADMIN, 15),
        (EMPTY4, 81, OK, verdict::ALLOW, tier::DEFAULT_ALLOW, 0),
    ];
    for (src, port, action, ..) in cases {
        assert_eq!(run(&p.ingress, &v4(src, TCP, port)), action, "{src} TCP/{port}");
    }
    let events = ring.take();
    let seen: Vec<_> = events.iter().map(|e| (e.dst_port, e.verdict, e.tier, e.policy_id)).collect();
    let want: Vec<_> = cases.iter().map(|&(_, port, _, v, t, id)| (port, v, t, id)).collect();
    assert_eq!(seen, want);

    let out = V4::new(POD4, PEER4, TCP).packet(&l4(TCP, 40000, 443));
    assert_eq!(run(&p.egress, &out), OK, "audited: NetworkPolicy would drop it, it passes");
    let events = ring.take();
    assert_eq!(
        events.iter().map(|e| (e.verdict, e.tier)).collect::<Vec<_>>(),
        [(verdict::AUDIT, tier::NETWORK_POLICY)]
    );
    let c = na_agent::datapath::pod_counters(p.dp.layout(), &p.id).unwrap();
    assert_eq!((c.egress_audited.packets, c.egress_allowed.packets), (1, 1), "counted as a would-be drop, and passed");
    assert_eq!(run(&p.egress, &out), OK, "its flow is tracked");
    assert!(ring.take().is_empty(), "judged once");
}

/// A pod that cluster Deny rules apply to may not reach a Service address
/// its flow cannot be judged on the endpoint of (here: no DNAT hook): the
/// rules name endpoints, so judged on the Service address it would pass
/// them. Without Deny rules the Service address is judged as before.
#[test]
fn cluster_deny_rules_close_service_addresses_not_judged_on_their_endpoint() {
    use na_common::policy::action;
    let p = pod();
    let frontend = Ipv4Addr::new(10, 96, 0, 10);
    let services = std::collections::BTreeMap::from([(
        na_agent::datapath::Frontend { addr: IpAddr::from(frontend), protocol: TCP, port: 80 },
        1,
    )]);
    p.dp.set_services(&services).unwrap();
    let mut ring = Events::open(p.dp.layout());
    let egress = |rule: PortRule| DirectionRules {
        mode: Mode::ClusterPolicies,
        entries: [(IpNet::from(IpAddr::from(OTHER4)), vec![rule])].into(),
        audit: false,
    };
    let addrs = PodAddrs { ipv4: Some(POD4), ipv6: Some(POD6) };
    let load = |rule| {
        let rules = PodRules { ingress: DirectionRules::default(), egress: egress(rule) };
        p.dp.load_pod(&p.id, p.ingress.ifindex, addrs, &rules).unwrap();
    };
    let to_service = |sport| V4::new(POD4, frontend, TCP).packet(&l4(TCP, sport, 80));

    load(PortRule::any(7).with_action(action::ADMIN_DENY));
    ring.take();
    assert_eq!(run(&p.egress, &to_service(40001)), SHOT);
    let events = ring.take();
    assert_eq!(
        events.iter().map(|e| (e.verdict, e.tier)).collect::<Vec<_>>(),
        [(verdict::DENY, tier::SERVICE_UNRESOLVED)]
    );
    assert_eq!(run(&p.egress, &V4::new(POD4, PEER4, TCP).packet(&l4(TCP, 40001, 80))), OK, "other addresses as before");

    load(PortRule::any(8).with_action(action::ADMIN_ACCEPT));
    assert_eq!(run(&p.egress, &to_service(40002)), OK, "no Deny rule: the Service address is judged as an address");
}
