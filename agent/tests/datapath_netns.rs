//! The datapath on a real kernel: pods in network namespaces, real TCP/UDP.
//! Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces).
mod support;

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use na_agent::{
    datapath::{AttachMode, DirectionRules, Mode, NodeTables, PinnedMaps, PodAddrs, PodRules},
    pod_id::PodId,
};
use na_common::{
    names::MAP_INGRESS,
    policy::PortRule,
    protocol::{TCP, UDP},
};
use na_harness::{Family, Probe};
use support::{
    Env,
    raw::{send_frame_from, send_udp_from},
};

fn isolated(entries: impl IntoIterator<Item = (IpNet, Vec<PortRule>)>) -> DirectionRules {
    DirectionRules {
        mode: Mode::PoliciesApplied,
        entries: entries.into_iter().collect::<BTreeMap<_, _>>(),
        audit: false,
    }
}

fn host(env: &Env, key: &str) -> IpNet {
    IpNet::from(IpAddr::V4(env.pod(key).ip))
}

fn deny_all_ingress_drops_connect_while_egress_works(mode: AttachMode) {
    let mut env = Env::new(mode).unwrap();
    env.assert_reach(Family::V4, &[("x/b", "x/a", Probe::tcp(80)), ("x/c", "x/a", Probe::udp(81))]);
    env.attach("x/a", &PodRules { ingress: isolated([]), egress: DirectionRules::default() }).unwrap();

    assert!(!env.reaches("x/b", "x/a", Probe::tcp(80)), "deny-all ingress must drop TCP connect");
    assert!(!env.reaches("x/c", "x/a", Probe::udp(81)), "deny-all ingress must drop UDP");
    // Egress is open, and the replies come back through the deny-all ingress
    // hook because the flow is tracked.
    assert!(env.reaches("x/a", "x/b", Probe::tcp(80)));
    assert!(env.reaches("x/a", "x/c", Probe::udp(80)));
    // Pods that are not attached are untouched.
    assert!(env.reaches("x/b", "x/c", Probe::tcp(80)));
}

#[test]
fn deny_all_ingress_tcx() {
    deny_all_ingress_drops_connect_while_egress_works(AttachMode::Tcx);
}

#[test]
fn deny_all_ingress_netlink() {
    deny_all_ingress_drops_connect_while_egress_works(AttachMode::Netlink);
}

#[test]
fn allow_rule_admits_exactly_its_peer_protocol_and_port() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    env.assert_reach(
        Family::V4,
        &[("x/b", "x/a", Probe::tcp(81)), ("x/b", "x/a", Probe::udp(80)), ("x/c", "x/a", Probe::tcp(80))],
    );
    let b = host(&env, "x/b");
    env.attach(
        "x/a",
        &PodRules { ingress: isolated([(b, vec![PortRule::ports(7, TCP, 80, 80)])]), ..Default::default() },
    )
    .unwrap();
    assert!(env.reaches("x/b", "x/a", Probe::tcp(80)));
    assert!(!env.reaches("x/b", "x/a", Probe::tcp(81)), "other port");
    assert!(!env.reaches("x/b", "x/a", Probe::udp(80)), "other protocol");
    assert!(!env.reaches("x/c", "x/a", Probe::tcp(80)), "other peer");
}

#[test]
fn reply_of_allowed_flow_passes_a_peer_that_denies_it() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    env.assert_reach(
        Family::V4,
        &[("x/b", "x/a", Probe::tcp(80)), ("x/a", "x/b", Probe::tcp(81)), ("x/a", "x/c", Probe::tcp(80))],
    );
    let (a, b) = (host(&env, "x/a"), host(&env, "x/b"));
    // a may only open TCP/80 to b and accepts nothing; b accepts TCP/80 from a
    // and may open nothing. Every reply must ride on conntrack.
    env.attach(
        "x/a",
        &PodRules { ingress: isolated([]), egress: isolated([(b, vec![PortRule::ports(1, TCP, 80, 80)])]) },
    )
    .unwrap();
    env.attach(
        "x/b",
        &PodRules { ingress: isolated([(a, vec![PortRule::ports(2, TCP, 80, 80)])]), egress: isolated([]) },
    )
    .unwrap();
    assert!(env.reaches("x/a", "x/b", Probe::tcp(80)), "reply must pass both deny-all hooks");
    assert!(!env.reaches("x/b", "x/a", Probe::tcp(80)), "b may not open flows to a");
    assert!(!env.reaches("x/a", "x/b", Probe::tcp(81)), "a may not open other ports");
    assert!(!env.reaches("x/a", "x/c", Probe::tcp(80)), "a may not reach c");
}

#[test]
fn rules_update_in_place_and_detach_leaves_nothing() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    env.assert_reach(Family::V4, &[("x/c", "x/a", Probe::udp(80)), ("x/b", "x/a", Probe::udp(80))]);
    let c = host(&env, "x/c");
    let mut maps = env.attach("x/a", &PodRules { ingress: isolated([]), ..Default::default() }).unwrap();
    assert!(!env.reaches("x/c", "x/a", Probe::udp(80)));
    maps.apply(&PodRules { ingress: isolated([(c, vec![PortRule::ports(3, UDP, 79, 80)])]), ..Default::default() })
        .unwrap();
    assert!(env.reaches("x/c", "x/a", Probe::udp(80)), "new rule live without reattaching");
    assert!(!env.reaches("x/b", "x/a", Probe::udp(80)));
    maps.apply(&PodRules::default()).unwrap();
    assert!(env.reaches("x/b", "x/a", Probe::tcp(81)), "default allow");

    env.attach("x/a", &PodRules { ingress: isolated([]), ..Default::default() }).unwrap();
    assert!(!env.reaches("x/b", "x/a", Probe::tcp(81)), "re-attach replaced the programs");
    env.detach("x/a").unwrap();
    assert!(env.reaches("x/b", "x/a", Probe::tcp(81)), "detached");
    for dir in ["programs", "maps", "links"] {
        let left: Vec<_> = std::fs::read_dir(env.root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("x_a_"))
            .collect();
        assert!(left.is_empty(), "pins left in {dir}: {left:?}");
    }
}

fn host6(env: &Env, key: &str) -> IpNet {
    IpNet::from(IpAddr::V6(env.pod(key).ip6))
}

#[test]
fn ipv6_is_filtered_by_the_same_programs() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    env.assert_reach(
        Family::V6,
        &[("x/b", "x/a", Probe::tcp(80)), ("x/b", "x/a", Probe::udp(80)), ("x/c", "x/a", Probe::tcp(80))],
    );
    env.assert_reach(Family::V4, &[("x/b", "x/a", Probe::tcp(80))]);
    let b6 = host6(&env, "x/b");
    env.attach(
        "x/a",
        &PodRules { ingress: isolated([(b6, vec![PortRule::ports(4, TCP, 80, 81)])]), ..Default::default() },
    )
    .unwrap();
    assert!(env.reaches_over(Family::V6, "x/b", "x/a", Probe::tcp(80)));
    assert!(env.reaches_over(Family::V6, "x/b", "x/a", Probe::tcp(81)), "end of the range");
    assert!(!env.reaches_over(Family::V6, "x/b", "x/a", Probe::udp(80)), "other protocol");
    assert!(!env.reaches_over(Family::V6, "x/c", "x/a", Probe::tcp(80)), "other peer");
    assert!(!env.reaches_over(Family::V4, "x/b", "x/a", Probe::tcp(80)), "IPv4 has no entry: isolated too");
    // Egress stays open over IPv6 and replies come back through conntrack.
    assert!(env.reaches_over(Family::V6, "x/a", "x/c", Probe::udp(81)));
}

#[test]
fn more_specific_empty_entry_carves_out_an_except() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    for family in [Family::V4, Family::V6] {
        env.assert_reach(family, &[("x/b", "x/a", Probe::tcp(80))]);
    }
    let (b, b6) = (host(&env, "x/b"), host6(&env, "x/b"));
    let any = vec![PortRule::any(5)];
    let ingress = isolated([
        ("198.18.0.0/24".parse().unwrap(), any.clone()),
        ("fd18::/64".parse().unwrap(), any),
        (b, vec![]),
        (b6, vec![]),
    ]);
    env.attach("x/a", &PodRules { ingress, ..Default::default() }).unwrap();
    for family in [Family::V4, Family::V6] {
        assert!(env.reaches_over(family, "x/c", "x/a", Probe::tcp(80)), "{family:?}: inside the block");
        assert!(!env.reaches_over(family, "x/b", "x/a", Probe::tcp(80)), "{family:?}: excepted");
    }
}

#[test]
fn strict_default_deny_keeps_the_node_and_is_per_direction() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    env.assert_reach(Family::V4, &[("x/b", "x/a", Probe::tcp(80))]);
    let node = IpNet::from(IpAddr::V4(na_harness::NODE_IP));
    let ingress = DirectionRules {
        mode: Mode::DefaultDeny,
        entries: [(node, vec![PortRule::any(na_common::policy::POLICY_ID_HOST)])].into(),
        audit: false,
    };
    env.attach("x/a", &PodRules { ingress, egress: DirectionRules::default() }).unwrap();
    assert!(!env.reaches("x/b", "x/a", Probe::tcp(80)), "ingress default deny");
    assert!(env.reaches("x/a", "x/b", Probe::tcp(80)), "egress is its own direction");
    let from_node = Probe::tcp(80).run_in(env.node.netns(), env.pod("x/a").ip.into()).unwrap();
    assert!(from_node, "the node (kubelet probes) still reaches the pod");
}

#[test]
fn pods_come_and_go_while_others_carry_traffic() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    env.assert_reach(Family::V4, &[("x/c", "x/a", Probe::tcp(80))]);
    let b = host(&env, "x/b");
    env.attach(
        "x/a",
        &PodRules { ingress: isolated([(b, vec![PortRule::ports(1, TCP, 80, 80)])]), ..Default::default() },
    )
    .unwrap();
    let mut conn = env.connect("x/b", "x/a", 80);
    assert!(support::agent::echoes(&mut conn));
    let c_ifindex =
        env.node.netns().run(|| nix::net::if_::if_nametoindex(env.pod("x/c").host_veth.as_str())).unwrap().unwrap();
    let layout = env.dp.layout().clone();
    let tables = || na_agent::datapath::NodeTables::open(&layout).unwrap().ifindexes();
    for round in 0..3 {
        assert!(env.reaches("x/b", "x/c", Probe::tcp(80)), "round {round}: c open before it is attached");
        env.attach("x/c", &PodRules { ingress: isolated([]), ..Default::default() }).unwrap();
        assert!(!env.reaches("x/b", "x/c", Probe::tcp(80)), "round {round}: c enforced once attached");
        assert!(tables().contains(&c_ifindex));
        assert!(support::agent::echoes(&mut conn), "round {round}: b's flow to a lives on");
        assert!(!env.reaches("x/c", "x/a", Probe::tcp(80)), "round {round}: a's policy still holds");
        env.detach("x/c").unwrap();
        assert!(!tables().contains(&c_ifindex), "round {round}: c's entries are gone with it");
        assert!(support::agent::echoes(&mut conn), "round {round}: b's flow to a lives on");
        assert!(env.reaches("x/b", "x/a", Probe::tcp(80)));
    }
}

#[test]
fn a_refused_probe_is_an_error_not_a_denial() {
    let env = Env::new(AttachMode::default()).unwrap();
    let a = IpAddr::V4(env.pod("x/a").ip);
    // Nothing listens on port 9: the kernel refuses, no policy is involved.
    for probe in [Probe::tcp(9), Probe::udp(9)] {
        let result = probe.run(env.pod("x/b"), a);
        assert!(result.as_ref().is_err_and(|e| e.to_string().contains("refused")), "{probe}: {result:?}");
    }
    assert!(env.reaches("x/b", "x/a", Probe::tcp(80)));
}

#[test]
fn a_recreated_veth_is_enforced_on_its_new_device() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    env.assert_reach(Family::V4, &[("x/b", "x/a", Probe::tcp(80))]);
    let rules = PodRules { ingress: isolated([]), ..Default::default() };
    env.attach("x/a", &rules).unwrap();
    assert!(!env.reaches("x/b", "x/a", Probe::tcp(80)));
    let index = |env: &Env| {
        env.node.netns().run(|| nix::net::if_::if_nametoindex(env.pod("x/a").host_veth.as_str())).unwrap().unwrap()
    };
    let old = index(&env);
    // The sandbox is recreated: same name and addresses, a new device. Its
    // pinned link now belongs to a device that is gone.
    env.node.recreate_veth("x/a").unwrap();
    let new = index(&env);
    assert_ne!(old, new);
    assert!(env.reaches("x/b", "x/a", Probe::tcp(80)), "nothing on the new device yet");
    env.attach("x/a", &rules).unwrap();
    assert!(!env.reaches("x/b", "x/a", Probe::tcp(80)), "enforced on the new device");
    let known = na_agent::datapath::NodeTables::open(env.dp.layout()).unwrap().ifindexes();
    assert!(known.contains(&new) && !known.contains(&old), "{known:?}");
}

#[test]
fn a_pod_cannot_send_from_another_pods_address() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    let (a, b, c) = (env.pod("x/a").ip, env.pod("x/b").ip, env.pod("x/c").ip);
    let port = 9999;
    let receiver = env.pod("x/c").netns().run(|| std::net::UdpSocket::bind(("0.0.0.0", port))).unwrap().unwrap();
    receiver.set_read_timeout(Some(std::time::Duration::from_millis(400))).unwrap();
    let arrives = |env: &Env, src| {
        send_udp_from(env.pod("x/a"), src, c, port);
        let mut buf = [0u8; 16];
        receiver.recv_from(&mut buf).is_ok_and(|(n, from)| &buf[..n] == b"hello" && from.ip() == IpAddr::V4(src))
    };
    assert!(arrives(&env, b), "baseline: nothing attached, a forged source gets through");
    // a's policy is wide open both ways: only the source is judged.
    env.attach("x/a", &PodRules::default()).unwrap();
    assert!(arrives(&env, a), "from a's own address");
    assert!(!arrives(&env, b), "from b's address");
    assert!(!arrives(&env, std::net::Ipv4Addr::new(8, 8, 8, 8)), "from anywhere else");
    let counters = na_agent::datapath::pod_counters(env.dp.layout(), &na_agent::pod_id::PodId::new("x", "a")).unwrap();
    assert_eq!(counters.egress_denied.packets, 2);
}

#[test]
fn a_pod_cannot_open_its_peers_way_in_with_one_forged_packet() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    let (a, b) = (env.pod("x/a").ip, env.pod("x/b").ip);
    // b sends to a's UDP/81 from its port 40000; a admits nothing from b
    // and may send anything.
    let b_sock = env.pod("x/b").netns().run(|| std::net::UdpSocket::bind(("0.0.0.0", 40000))).unwrap().unwrap();
    b_sock.set_read_timeout(Some(std::time::Duration::from_millis(400))).unwrap();
    let echoed = || {
        let mut buf = [0u8; 16];
        b_sock.send_to(b"hello", (a, 81)).is_ok() && b_sock.recv_from(&mut buf).is_ok()
    };
    assert!(echoed(), "baseline: nothing attached");
    env.attach("x/a", &PodRules { ingress: isolated([]), egress: DirectionRules::default() }).unwrap();
    assert!(!echoed(), "a's ingress denies b");
    // a sends, out of its own eth0, the very packet b sends: were it tracked
    // on a's egress hook as a flow a opened, b's real packets would pass as
    // its replies.
    let mut udp = Vec::new();
    for field in [40000u16, 81, 13, 0] {
        udp.extend_from_slice(&field.to_be_bytes());
    }
    udp.extend_from_slice(b"hello");
    send_frame_from(env.pod("x/a"), 0x0800, &support::raw::ipv4(b, a, 17, &udp));
    assert!(!echoed(), "b's packets ride a flow a forged in b's name");
}

#[test]
fn the_node_keeps_resolving_an_isolated_pods_ipv6_address() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    // The host side of the veth has only its link-local address: the node
    // solicits from it, from its own address fd19::1 on lo.
    keeps_resolving(&mut env, na_harness::NODE_IP6);
}

#[test]
fn the_node_keeps_resolving_an_isolated_pod_from_a_global_address_on_its_veth() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    // As CNI ptp does: the pod's gateway address on the host side of its
    // veth. The node's packets to the pod come from it, and so do its
    // solicitations.
    let gateway: std::net::Ipv6Addr = "fd18::fe".parse().unwrap();
    let veth = env.pod("x/a").host_veth.clone();
    let node = env.node.netns().name().to_owned();
    let add = ["-n", &node, "addr", "add", "fd18::fe/128", "dev", &veth, "nodad"];
    assert!(std::process::Command::new("ip").args(add).status().unwrap().success());
    env.dp.set_node_addrs(&[gateway].into()).unwrap();
    keeps_resolving(&mut env, gateway);
}

/// Attaches x/a admitting only `node_source`'s TCP/80 and sending nothing
/// unprompted, then checks three times over that the node resolves a's
/// IPv6 address from scratch (a multicast solicitation, a's advertisement)
/// and by unicast probes: the node's solicitations in and a's answers out
/// pass as neighbour discovery between the pod and its host, not by any rule.
fn keeps_resolving(env: &mut Env, node_source: std::net::Ipv6Addr) {
    let node = env.node.netns().name().to_owned();
    let (veth, ip6) = (env.pod("x/a").host_veth.clone(), env.pod("x/a").ip6.to_string());
    let from_node = [(IpNet::from(IpAddr::V6(node_source)), vec![PortRule::ports(1, TCP, 80, 80)])];
    env.attach("x/a", &PodRules { ingress: isolated(from_node), egress: isolated([]) }).unwrap();
    let neigh = |args: &[&str]| {
        let out = std::process::Command::new("ip").args(["-n", &node, "-6", "neigh"]).args(args).output().unwrap();
        assert!(out.status.success(), "ip neigh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let state = || neigh(&["show", &ip6, "dev", &veth]);
    for round in 0..3 {
        neigh(&["flush", "dev", &veth]);
        let addr = std::net::SocketAddr::new(IpAddr::V6(env.pod("x/a").ip6), 80);
        let timeout = std::time::Duration::from_millis(1500);
        let connected = env.node.netns().run(move || std::net::TcpStream::connect_timeout(&addr, timeout)).unwrap();
        let connected = connected.unwrap_or_else(|e| panic!("round {round}: the node reaches a: {e} ({})", state()));
        assert_eq!(connected.local_addr().unwrap().ip(), IpAddr::V6(node_source), "the node's source");
        // Unreachability detection: unicast solicitations until a answers.
        neigh(&["change", &ip6, "dev", &veth, "nud", "probe"]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !state().contains("REACHABLE") {
            assert!(std::time::Instant::now() < deadline, "round {round}: a never answered the probe: {}", state());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

#[test]
fn frames_neither_ip_nor_arp_leave_a_pod_only_where_its_egress_is_open() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    let id = na_agent::pod_id::PodId::new("x", "a");
    let counted = |env: &Env| {
        let c = na_agent::datapath::pod_counters(env.dp.layout(), &id).unwrap();
        (c.egress_allowed.packets, c.egress_denied.packets)
    };
    // A UDP datagram from a to c's port 9999, which a's egress allows.
    let (a, c) = (env.pod("x/a").ip.octets(), env.pod("x/c").ip.octets());
    let mut udp = vec![0x45, 0, 0, 33, 0, 0, 0x40, 0, 64, 17, 0, 0];
    udp.extend_from_slice(&a);
    udp.extend_from_slice(&c);
    udp.extend_from_slice(&[0x9c, 0x40, 0x27, 0x0f, 0, 13, 0, 0]);
    udp.extend_from_slice(b"hello");
    let tagged: Vec<u8> = [&[0, 1, 0x08, 0x00][..], &udp].concat();
    let mpls: &[u8] = &[0, 0, 0x11, 64];
    let to_c = [(IpNet::from(IpAddr::V4(env.pod("x/c").ip)), vec![PortRule::ports(1, UDP, 9999, 9999)])];
    // The counters count every frame a sends: IPv6 off, a sends nothing of
    // its own (its gateway's address is resolved statically), so they count
    // only these frames.
    env.pod("x/a").netns().run(|| std::fs::write("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", "1")).unwrap().unwrap();
    env.attach("x/a", &PodRules { ingress: DirectionRules::default(), egress: isolated(to_c) }).unwrap();
    let before = counted(&env);
    send_frame_from(env.pod("x/a"), 0x0800, &udp);
    assert_eq!(counted(&env), (before.0 + 1, before.1), "the datagram itself passes");
    // Tagged (the kernel strips the tag before TC sees the frame) and MPLS:
    // neither is IP as sent, and a's egress is isolated.
    send_frame_from(env.pod("x/a"), 0x8100, &tagged);
    send_frame_from(env.pod("x/a"), 0x8847, mpls);
    assert_eq!(counted(&env), (before.0 + 1, before.1 + 2), "tagged and MPLS frames are dropped");
    // With a's egress open they pass.
    env.attach("x/a", &PodRules::default()).unwrap();
    let before = counted(&env);
    send_frame_from(env.pod("x/a"), 0x8100, &tagged);
    send_frame_from(env.pod("x/a"), 0x8847, mpls);
    assert_eq!(counted(&env), (before.0 + 2, before.1));
}

/// The spare slots under `env`'s pin root: slot and ingress trie id.
fn spares(env: &Env) -> BTreeMap<u32, u32> {
    let dir = env.dp.layout().spares_dir();
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let (slot, map) = na_agent::bpffs::PinLayout::parse_spare_pin(&name)?;
            (map == MAP_INGRESS).then_some(slot)
        })
        .map(|slot| (slot, map_id(&env.dp.layout().spare(slot, MAP_INGRESS))))
        .collect()
}

fn map_id(pin: &std::path::Path) -> u32 {
    aya::maps::MapData::from_pin(pin).unwrap().info().unwrap().id()
}

/// Waits (bounded) until `env` has `n` spare slots.
fn await_spares(env: &Env, n: usize) -> BTreeMap<u32, u32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = spares(env);
        if found.len() == n {
            return found;
        }
        assert!(std::time::Instant::now() < deadline, "{} spare slots, not {n}", found.len());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn slot_of(env: &Env, key: &str) -> u32 {
    let pod = env.pod(key);
    let ifindex = env.node.netns().run(|| nix::net::if_::if_nametoindex(pod.host_veth.as_str())).unwrap().unwrap();
    let tables = NodeTables::open(env.dp.layout()).unwrap();
    tables.records().into_iter().find(|(i, _)| *i == ifindex).expect("the pod's record").1.slot
}

#[test]
fn pods_take_slots_made_ahead_and_leave_them_emptied() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    env.dp = env.dp.clone().with_spare_slots(2);
    drop(env.dp.programs().unwrap());
    let ready = await_spares(&env, 2);
    let b = host(&env, "x/b");
    env.attach(
        "x/a",
        &PodRules { ingress: isolated([(b, vec![PortRule::ports(1, TCP, 80, 80)])]), ..Default::default() },
    )
    .unwrap();
    // The pod's maps are a spare's, made and registered before it started.
    let slot = slot_of(&env, "x/a");
    let trie = map_id(&env.dp.layout().map(&PodId::new("x", "a"), MAP_INGRESS));
    assert_eq!(ready.get(&slot), Some(&trie), "a took spare {slot}? spares were {ready:?}");
    assert!(env.reaches("x/b", "x/a", Probe::tcp(80)) && !env.reaches("x/c", "x/a", Probe::tcp(80)));
    // Made again in the background, elsewhere.
    let again = await_spares(&env, 2);
    assert!(!again.contains_key(&slot), "{again:?}");
    env.detach("x/a").unwrap();
    assert!(env.reaches("x/c", "x/a", Probe::tcp(80)));
    // Emptied in the background, so a's maps are freed.
    let tables = NodeTables::open(env.dp.layout()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tables.trie_at(slot).is_some() {
        assert!(std::time::Instant::now() < deadline, "a's slot still holds its maps");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_spare_whose_slot_was_refilled_by_someone_else_is_not_taken() {
    let mut env = Env::new(AttachMode::default()).unwrap();
    env.dp = env.dp.clone().with_spare_slots(1);
    drop(env.dp.programs().unwrap());
    env.attach("x/c", &PodRules::default()).unwrap();
    let (&spare, _) = await_spares(&env, 1).iter().next().unwrap();
    // Another agent (another handle on the same pins) put other maps in the
    // spare's slot: c's.
    let c = PinnedMaps::of_pod(env.dp.layout(), &PodId::new("x", "c")).unwrap();
    NodeTables::open(env.dp.layout()).unwrap().register(spare, &c.inner()).unwrap();
    let b = host(&env, "x/b");
    env.attach(
        "x/a",
        &PodRules { ingress: isolated([(b, vec![PortRule::ports(1, TCP, 80, 80)])]), ..Default::default() },
    )
    .unwrap();
    assert_ne!(slot_of(&env, "x/a"), spare);
    // Judged by a's own rules, not by the maps the slot held.
    assert!(env.reaches("x/b", "x/a", Probe::tcp(80)), "a's rules admit b");
    assert!(!env.reaches("x/c", "x/a", Probe::tcp(80)), "a's rules isolate it from c");
}

#[test]
fn pods_starting_while_spares_are_made_never_share_a_slot() {
    // No veths needed: slots are taken by loading pods under made-up ifindexes.
    let root = support::PinRoot::new();
    let dp = na_agent::datapath::Datapath::new(na_agent::bpffs::PinLayout::new(&root.0), AttachMode::default())
        .unwrap()
        .with_spare_slots(8);
    drop(dp.programs().unwrap());
    let load_together = |pods: &[(PodId, u32)]| -> Vec<_> {
        std::thread::scope(|s| {
            let loading: Vec<_> = pods
                .iter()
                .map(|(pod, ifindex)| {
                    let dp = &dp;
                    s.spawn(move || dp.load_pod(pod, *ifindex, PodAddrs::default(), &PodRules::default()))
                })
                .collect();
            loading.into_iter().map(|l| l.join().unwrap()).collect()
        })
    };
    // A node's worth of pods that stay: each search for a free slot reads
    // all their pins, which is when a claim could slip by unseen.
    let resident: Vec<(PodId, u32)> = (0..96).map(|i| (PodId::new("y", &format!("p{i}")), 2000 + i)).collect();
    for chunk in resident.chunks(16) {
        load_together(chunk).into_iter().for_each(|r| drop(r.unwrap()));
    }
    let pods: Vec<(PodId, u32)> = (0..16).map(|i| (PodId::new("x", &format!("p{i}")), 1000 + i)).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for round in 0.. {
        // Together, as pods of one sync start: half take spares, the rest
        // fill slots of their own, while the background worker makes spares
        // again and empties the slots of the rounds before.
        let loaded = load_together(&pods);
        let tables = NodeTables::open(dp.layout()).unwrap();
        let records: BTreeMap<u32, u32> = tables.records().into_iter().map(|(i, r)| (i, r.slot)).collect();
        let mut slots = BTreeMap::new();
        let mut out_of_slots = false;
        for ((pod, ifindex), result) in pods.iter().zip(loaded) {
            match result {
                Ok(_) => {}
                // This loop outruns the worker emptying slots (a grace
                // period each): the test has seen enough.
                Err(na_agent::datapath::DatapathError::NoSlot) => {
                    out_of_slots = true;
                    continue;
                }
                Err(e) => panic!("round {round}: loading {pod}: {e}"),
            }
            let slot = records[ifindex];
            let maps = PinnedMaps::of_pod(dp.layout(), pod).unwrap();
            assert!(tables.holds(slot, &maps.inner()), "round {round}: {pod}'s slot {slot} holds other maps");
            let trie = maps.ingress.info().unwrap().id();
            assert!(slots.insert(slot, trie).is_none(), "round {round}: slot {slot} given to two pods: {records:?}");
            dp.detach_pod(pod, None).unwrap();
        }
        if out_of_slots || std::time::Instant::now() > deadline {
            break;
        }
    }
    for (pod, _) in &resident {
        dp.detach_pod(pod, None).unwrap();
    }
}
