//! Egress through Services on a real kernel: kube-proxy's iptables rules in
//! the node namespace, pods connecting to ClusterIPs and NodePorts, judged
//! on the endpoint DNAT picks. Needs root.
mod support;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use ipnet::IpNet;
use na_agent::datapath::{DirectionRules, Frontend, Mode, PodRules, ServiceTable};
use na_common::{
    events::{tier, verdict},
    policy::PortRule,
    protocol::{TCP, UDP},
};
use na_harness::{
    NODE_IP, NODE_IP6, Probe, Proto,
    kube_proxy::{KubeProxy, ProxyMode, ServicePort},
};
use serde_json::json;
use support::{
    Env, Events,
    agent::{Agent, Manifests, pod, policy, status, wait_until},
};

const DB4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const DB6: Ipv6Addr = Ipv6Addr::new(0xfd96, 0, 0, 0, 0, 0, 0, 0x10);
const OTHER4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const BOTH4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const BOTH6: Ipv6Addr = Ipv6Addr::new(0xfd96, 0, 0, 0, 0, 0, 0, 0x12);
/// Service port; every endpoint serves on [`TARGET`].
const PORT: u16 = 8080;
const TARGET: u16 = 80;
const NODE_PORT: u16 = 30080;

fn isolated(entries: impl IntoIterator<Item = (IpNet, Vec<PortRule>)>) -> DirectionRules {
    DirectionRules {
        mode: Mode::PoliciesApplied,
        entries: entries.into_iter().collect::<BTreeMap<_, _>>(),
        audit: false,
    }
}

fn svc(name: &str, proto: Proto, addrs: &[IpAddr], endpoints: Vec<(IpAddr, u16)>) -> ServicePort {
    ServicePort { name: name.into(), proto, addrs: addrs.to_vec(), port: PORT, node_port: None, endpoints }
}

/// Pods `x/a` (the client), `x/b` and `x/c` (servers), and Services:
/// `db` (both families, TCP and UDP) on `b`, `other` on `c`, `both` on `b`
/// and `c`, and a NodePort to `b`, translated by kube-proxy's iptables mode.
/// Nothing enforced yet.
fn env_with_services() -> (Env, KubeProxy) {
    env_with_services_in(ProxyMode::Iptables)
}

/// [`env_with_services`], translated by kube-proxy in `mode`.
fn env_with_services_in(mode: ProxyMode) -> (Env, KubeProxy) {
    let env = Env::new(na_agent::datapath::AttachMode::default()).unwrap();
    let (b, c) = (env.pod("x/b"), env.pod("x/c"));
    let (b4, b6, c4, c6) = (IpAddr::V4(b.ip), IpAddr::V6(b.ip6), IpAddr::V4(c.ip), IpAddr::V6(c.ip6));
    let db = [IpAddr::V4(DB4), IpAddr::V6(DB6)];
    let mut node_port = svc("x/db:nodeport", Proto::Tcp, &[], vec![(b4, TARGET), (b6, TARGET)]);
    node_port.node_port = Some(NODE_PORT);
    let proxy = KubeProxy {
        mode,
        services: vec![
            svc("x/db:tcp", Proto::Tcp, &db, vec![(b4, TARGET), (b6, TARGET)]),
            svc("x/db:udp", Proto::Udp, &db, vec![(b4, TARGET), (b6, TARGET)]),
            svc("x/other:tcp", Proto::Tcp, &[IpAddr::V4(OTHER4)], vec![(c4, TARGET)]),
            svc(
                "x/both:tcp",
                Proto::Tcp,
                &[BOTH4.into(), BOTH6.into()],
                vec![(b4, TARGET), (c4, TARGET), (b6, TARGET), (c6, TARGET)],
            ),
            node_port,
        ],
    };
    proxy.sync(env.node.netns()).unwrap();
    (env, proxy)
}

/// What the agent would write for `proxy`'s Services: every frontend
/// address and NodePorts on the node's addresses.
fn frontends(proxy: &KubeProxy) -> BTreeMap<Frontend, u32> {
    let mut out = BTreeMap::new();
    for (id, svc) in proxy.services.iter().enumerate() {
        let protocol = if svc.proto == Proto::Tcp { TCP } else { UDP };
        for addr in &svc.addrs {
            out.insert(Frontend { addr: *addr, protocol, port: svc.port }, id as u32 + 1);
        }
        if let Some(port) = svc.node_port {
            for addr in [IpAddr::V4(NODE_IP), IpAddr::V6(NODE_IP6)] {
                out.insert(Frontend { addr, protocol, port }, id as u32 + 1);
            }
        }
    }
    out
}

/// `a`'s egress allows `b` (both families) on TCP and UDP [`TARGET`], nothing else.
fn a_may_reach_b(env: &Env) -> PodRules {
    let b = env.pod("x/b");
    let rules = vec![PortRule::ports(1, TCP, TARGET, TARGET), PortRule::ports(1, UDP, TARGET, TARGET)];
    let egress = isolated([(IpNet::from(IpAddr::V4(b.ip)), rules.clone()), (IpNet::from(IpAddr::V6(b.ip6)), rules)]);
    PodRules { ingress: DirectionRules::default(), egress }
}

fn enforce_services(env: &mut Env, proxy: &KubeProxy) {
    let dp = env.dp.clone();
    env.node.netns().run(|| dp.install_dnat_hook()).unwrap().unwrap();
    ServiceTable::open(env.dp.layout()).unwrap().sync(&frontends(proxy)).unwrap();
}

fn via(env: &Env, from: &str, probe: Probe, to: impl Into<IpAddr>) -> bool {
    probe.run(env.pod(from), to.into()).expect("probe ran")
}

#[test]
fn an_endpoint_the_egress_policy_allows_is_reached_through_its_service_iptables() {
    an_endpoint_the_egress_policy_allows_is_reached_through_its_service(ProxyMode::Iptables);
}

#[test]
fn an_endpoint_the_egress_policy_allows_is_reached_through_its_service_nftables() {
    an_endpoint_the_egress_policy_allows_is_reached_through_its_service(ProxyMode::Nftables);
}

fn an_endpoint_the_egress_policy_allows_is_reached_through_its_service(mode: ProxyMode) {
    let (mut env, proxy) = env_with_services_in(mode);
    for (probe, to) in [(Probe::tcp(PORT), IpAddr::V4(DB4)), (Probe::udp(PORT), IpAddr::V6(DB6))] {
        assert!(via(&env, "x/a", probe, to), "baseline: {probe} to {to}");
    }
    enforce_services(&mut env, &proxy);
    env.attach("x/a", &a_may_reach_b(&env)).unwrap();

    for probe in [Probe::tcp(PORT), Probe::udp(PORT)] {
        assert!(via(&env, "x/a", probe, DB4), "{probe} to db's IPv4 ClusterIP");
        assert!(via(&env, "x/a", probe, DB6), "{probe} to db's IPv6 ClusterIP");
    }
    assert!(via(&env, "x/a", Probe::tcp(NODE_PORT), NODE_IP), "db's NodePort on the node's IPv4 address");
    assert!(via(&env, "x/a", Probe::tcp(NODE_PORT), NODE_IP6), "db's NodePort on the node's IPv6 address");
    assert!(!via(&env, "x/a", Probe::tcp(PORT), OTHER4), "other's only endpoint is c, which a may not reach");
    assert!(env.reaches("x/a", "x/b", Probe::tcp(TARGET)), "b directly");
    assert!(!env.reaches("x/a", "x/c", Probe::tcp(TARGET)), "c directly");
    // The Service address itself is no endpoint: a port it does not
    // translate is judged as the address, which a may not reach.
    assert!(!via(&env, "x/a", Probe::tcp(TARGET), DB4), "db's address on a port that is no Service port");
}

#[test]
fn a_service_with_some_endpoints_allowed_reaches_only_those_iptables() {
    a_service_with_some_endpoints_allowed_reaches_only_those(ProxyMode::Iptables);
}

#[test]
fn a_service_with_some_endpoints_allowed_reaches_only_those_nftables() {
    a_service_with_some_endpoints_allowed_reaches_only_those(ProxyMode::Nftables);
}

fn a_service_with_some_endpoints_allowed_reaches_only_those(mode: ProxyMode) {
    let (mut env, mut proxy) = env_with_services_in(mode);
    enforce_services(&mut env, &proxy);
    env.attach("x/a", &a_may_reach_b(&env)).unwrap();
    let mut events = Events::open(env.dp.layout());
    let (b, c) = (env.pod("x/b"), env.pod("x/c"));
    for (vip, b, c) in
        [(IpAddr::from(BOTH4), IpAddr::from(b.ip), IpAddr::from(c.ip)), (BOTH6.into(), b.ip6.into(), c.ip6.into())]
    {
        // Half of the connections go to each endpoint: 2^-23 that all pick one.
        let attempts = 24;
        let reached = (0..attempts).filter(|_| via(&env, "x/a", Probe::tcp(PORT), vip)).count();
        assert!(0 < reached && reached < attempts, "{reached} of {attempts} reached b through {vip}");
        let judged = judged_by_hook(&mut events);
        let allowed = judged.iter().filter(|(ip, v)| *ip == b && *v == verdict::ALLOW).count();
        let denied = judged.iter().filter(|(ip, v)| *ip == c && *v == verdict::DENY).count();
        assert_eq!(allowed, reached, "each connection that got through went to b: {judged:?}");
        assert!(denied >= attempts - reached, "each one that did not was bound for c: {judged:?}");
        assert!(!judged.iter().any(|(ip, v)| *ip == c && *v == verdict::ALLOW), "c admitted: {judged:?}");
    }
    // Endpoints come and go under the same Service address: nothing of ours
    // changes, each connection is judged on the endpoint of the moment.
    let both = proxy.services.iter().position(|s| s.name == "x/both:tcp").unwrap();
    let all = proxy.services[both].endpoints.clone();
    for (keep, reached) in [(c, false), (b, true)] {
        proxy.services[both].endpoints = all
            .iter()
            .filter(|(ip, _)| *ip == IpAddr::from(keep.ip) || *ip == IpAddr::from(keep.ip6))
            .copied()
            .collect();
        proxy.sync(env.node.netns()).unwrap();
        for vip in [IpAddr::from(BOTH4), BOTH6.into()] {
            for _ in 0..3 {
                assert_eq!(
                    via(&env, "x/a", Probe::tcp(PORT), vip),
                    reached,
                    "{vip} with only {} behind it",
                    keep.key()
                );
            }
        }
    }
}

/// (endpoint, verdict) of the hook's events since the last call (only `a`
/// is enforced, so they are all about its flows).
fn judged_by_hook(events: &mut Events) -> Vec<(IpAddr, u8)> {
    events
        .take()
        .iter()
        .filter(|e| e.service_id != 0 && e.dst_port == TARGET)
        .map(|e| {
            let dst = if e.family == na_common::family::IPV4 {
                IpAddr::V4(Ipv4Addr::new(e.dst_addr.0[0], e.dst_addr.0[1], e.dst_addr.0[2], e.dst_addr.0[3]))
            } else {
                IpAddr::V6(Ipv6Addr::from(e.dst_addr.0))
            };
            (dst, e.verdict)
        })
        .collect()
}

#[test]
fn a_connection_through_a_service_is_judged_again_on_its_endpoint() {
    let (mut env, proxy) = env_with_services();
    enforce_services(&mut env, &proxy);
    env.attach("x/a", &a_may_reach_b(&env)).unwrap();
    let addr = SocketAddr::new(DB4.into(), PORT);
    let mut conn = env
        .pod("x/a")
        .netns()
        .run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
        .unwrap()
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let echo = |conn: &mut std::net::TcpStream| {
        let mut buf = [0u8; 4];
        conn.write_all(b"ping").is_ok() && conn.read_exact(&mut buf).is_ok()
    };
    assert!(echo(&mut conn));
    // A change that still allows b: the live flow is judged again on b, not
    // on the Service address, and lives on.
    let mut events = Events::open(env.dp.layout());
    let mut rules = a_may_reach_b(&env);
    rules.egress.entries.insert("203.0.113.0/24".parse().unwrap(), vec![PortRule::any(2)]);
    env.attach("x/a", &rules).unwrap();
    assert!(echo(&mut conn), "a policy change that still allows the endpoint cut the flow");
    // Not even a packet of it was dropped (judged on the Service address,
    // one would be, and the flow would then be judged anew after DNAT).
    let revoked: Vec<_> = events.take().into_iter().filter(|e| e.tier == tier::REVOKED).collect();
    assert!(revoked.is_empty(), "{revoked:?}");
    // One that no longer allows b cuts it. a's ingress is closed too: open,
    // it would admit b's retransmissions as new inbound traffic, and a's
    // packets as their replies.
    env.attach("x/a", &PodRules { ingress: isolated([]), egress: isolated([]) }).unwrap();
    assert!(!echo(&mut conn), "the flow outlived the rule that allowed its endpoint");
}

#[test]
fn a_connection_opened_before_its_pod_was_isolated_is_judged_on_its_endpoint() {
    let (mut env, proxy) = env_with_services();
    enforce_services(&mut env, &proxy);
    // Egress open: the flow is tracked on db's address, not handed over.
    env.attach("x/a", &PodRules::default()).unwrap();
    let addr = SocketAddr::new(DB4.into(), PORT);
    let mut conn = env.pod("x/a").netns().run(move || std::net::TcpStream::connect(addr)).unwrap().unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(support::agent::echoes(&mut conn));
    let mut events = Events::open(env.dp.layout());
    env.attach("x/a", &a_may_reach_b(&env)).unwrap();
    assert!(support::agent::echoes(&mut conn), "isolated, a may still reach b, db's endpoint");
    // Judged again on db's address it would be revoked (and, handed over
    // on its retransmission, admitted again): not one packet is dropped.
    let revoked: Vec<_> = events.take().into_iter().filter(|e| e.tier == tier::REVOKED).collect();
    assert!(revoked.is_empty(), "{revoked:?}");
}

#[test]
fn packets_received_in_a_batch_are_never_let_through_unjudged() {
    let (mut env, mut proxy) = env_with_services();
    let c = env.pod("x/c");
    proxy.services.push(svc("x/other:udp", Proto::Udp, &[OTHER4.into()], vec![(c.ip.into(), TARGET)]));
    proxy.sync(env.node.netns()).unwrap();
    enforce_services(&mut env, &proxy);
    env.attach("x/a", &a_may_reach_b(&env)).unwrap();
    // GRO on a's host veth (and UDP GRO forwarding, without which a veth
    // takes a local socket's packets past NAPI): it receives in batches,
    // and the TC hook runs for each packet of a batch before PREROUTING
    // sees any of them.
    let veth = env.pod("x/a").host_veth.clone();
    let gro = std::process::Command::new("ip")
        .args(["netns", "exec", env.node.netns().name(), "ethtool", "-K", &veth, "gro", "on"])
        .args(["rx-udp-gro-forwarding", "on"])
        .status()
        .unwrap();
    assert!(gro.success(), "ethtool -K {veth} gro on (cargo xtask setup installs ethtool)");
    assert!(via(&env, "x/a", Probe::udp(PORT), DB4), "a request to db, whose endpoint a may reach");
    // Bursts of new flows to other, whose only endpoint a may not reach (a
    // flow per socket, so that GRO merges none of them), from both cores at
    // once, so that one core's NAPI run finds the other's packets waiting
    // and takes them as one batch: none may get there.
    let ns = env.pod("x/a").netns().open().unwrap();
    let echoed: usize = std::thread::scope(|s| {
        let senders: Vec<_> = (0..2)
            .map(|_| {
                let ns = ns.try_clone().unwrap();
                s.spawn(move || -> std::io::Result<usize> {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                    let sockets = (0..16)
                        .map(|_| {
                            let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
                            socket.connect(SocketAddr::new(OTHER4.into(), PORT))?;
                            socket.set_read_timeout(Some(Duration::from_millis(20)))?;
                            Ok(socket)
                        })
                        .collect::<std::io::Result<Vec<_>>>()?;
                    for _ in 0..200 {
                        for socket in &sockets {
                            socket.send(b"ping")?;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(300));
                    let mut buf = [0u8; 16];
                    Ok(sockets.iter().map(|s| std::iter::from_fn(|| s.recv(&mut buf).ok()).count()).sum())
                })
            })
            .collect();
        senders.into_iter().map(|t| t.join().unwrap().unwrap()).sum()
    });
    assert_eq!(echoed, 0, "datagrams reached c, and its echoes came back");
}

#[test]
fn without_the_hook_a_service_address_is_judged_as_the_address_it_is() {
    let (mut env, proxy) = env_with_services();
    enforce_services(&mut env, &proxy);
    env.attach("x/a", &a_may_reach_b(&env)).unwrap();
    assert!(via(&env, "x/a", Probe::tcp(PORT), DB4));
    na_agent::datapath::dnat_hook::uninstall(env.dp.layout()).unwrap();
    assert!(!via(&env, "x/a", Probe::tcp(PORT), DB4), "no hook, yet a Service-bound flow passed unjudged");
    // Installing again (as a restarted agent does) restores it.
    enforce_services(&mut env, &proxy);
    assert!(via(&env, "x/a", Probe::tcp(PORT), DB4));
}

/// EndpointSlices of `db` (on `b`) and `other` (on `c`), as the
/// EndpointSlice controller writes them.
fn endpoint_slices(env: &Env) -> Vec<serde_json::Value> {
    let slice = |service: &str, pod: &str, ports: serde_json::Value| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"namespace": "x", "name": format!("{service}-1"), "labels": {"kubernetes.io/service-name": service}},
               "addressType": "IPv4", "endpoints": [{"addresses": [env.pod(pod).ip.to_string()], "conditions": {"ready": true}}],
               "ports": ports})
    };
    vec![
        slice(
            "db",
            "x/b",
            json!([{"name": "tcp", "port": TARGET}, {"name": "udp", "protocol": "UDP", "port": TARGET}]),
        ),
        slice("other", "x/c", json!([{"port": TARGET}])),
    ]
}

/// `na-cli -o json trace` on the node, as an operator runs it.
fn cli_trace(env: &Env, status_file: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", env.node.netns().name()))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_na-cli"))
        .arg("--bpffs-root")
        .arg(env.root())
        .arg("--status-file")
        .arg(status_file)
        .args(["-o", "json", "trace"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "na-cli trace {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The Services of [`env_with_services`] as manifests: `db` with a named
/// target port, `other`, and the NodePort.
fn service_manifests() -> Vec<serde_json::Value> {
    let svc = |name: &str, spec: serde_json::Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "x", "name": name}, "spec": spec});
    vec![
        svc(
            "db",
            json!({"clusterIP": DB4.to_string(), "clusterIPs": [DB4.to_string(), DB6.to_string()],
                   "ipFamilyPolicy": "PreferDualStack", "selector": {"app": "b"},
                   "ports": [{"name": "tcp", "port": PORT, "targetPort": "http"},
                             {"name": "udp", "protocol": "UDP", "port": PORT, "targetPort": TARGET}]}),
        ),
        svc(
            "other",
            json!({"clusterIP": OTHER4.to_string(), "selector": {"app": "c"}, "ports": [{"port": PORT, "targetPort": TARGET}]}),
        ),
        svc(
            "db-nodeport",
            json!({"type": "NodePort", "clusterIP": "10.96.0.13", "selector": {"app": "b"},
                   "ports": [{"port": PORT, "targetPort": TARGET, "nodePort": NODE_PORT}]}),
        ),
    ]
}

#[test]
fn the_agent_judges_flows_to_the_services_it_reads_on_their_endpoints() {
    let (env, _proxy) = env_with_services();
    let manifests = Manifests::new();
    let status_file = manifests.1.join("status.json");
    manifests.write("pods.yaml", &[pod(&env, "x/a", "a"), pod(&env, "x/b", "b"), pod(&env, "x/c", "c")]);
    manifests.write("services.yaml", &service_manifests());
    manifests.write("endpoints.yaml", &endpoint_slices(&env));
    let to_b = json!([{"to": [{"podSelector": {"matchLabels": {"app": "b"}}}],
                       "ports": [{"protocol": "TCP", "port": TARGET}, {"protocol": "UDP", "port": TARGET}]}]);
    let a_to_b = policy(
        "a-to-b",
        json!({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"], "egress": to_b}),
    );
    manifests.write("policy.yaml", &[a_to_b]);
    let agent = Agent::start(&env, &manifests, &status_file);
    let attached = || status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 3);
    wait_until("all three pods are attached", attached);
    assert!(via(&env, "x/a", Probe::tcp(PORT), DB4), "db's IPv4 ClusterIP, named target port");
    // A connection through the Service outlives an agent crash and restart,
    // and new ones are judged meanwhile (the hook stays linked).
    let addr = SocketAddr::new(DB4.into(), PORT);
    let mut conn = env.pod("x/a").netns().run(move || std::net::TcpStream::connect(addr)).unwrap().unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    agent.kill();
    assert!(via(&env, "x/a", Probe::tcp(PORT), DB4) && !via(&env, "x/a", Probe::tcp(PORT), OTHER4), "agent down");
    let _agent = Agent::start(&env, &manifests, &status_file);
    wait_until("the restarted agent reports the pods", attached);
    assert!(support::agent::echoes(&mut conn), "the flow through db survived the restart");
    assert!(via(&env, "x/a", Probe::udp(PORT), DB6), "db's IPv6 ClusterIP over UDP");
    assert!(via(&env, "x/a", Probe::tcp(NODE_PORT), NODE_IP), "db's NodePort");
    assert!(!via(&env, "x/a", Probe::tcp(PORT), OTHER4), "other's endpoint is c");
    // The flow log names the Service and the endpoint.
    let b = env.pod("x/b").ip.to_string();
    wait_until("the flow log names db", || {
        std::fs::read_to_string(status_file.with_extension("flows")).is_ok_and(|log| {
            log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).any(|l| {
                l["service"] == "x/db"
                    && l["dst_ip"] == b.as_str()
                    && l["dst_port"] == TARGET
                    && l["verdict"] == "ACCEPT"
            })
        })
    });
    // na-cli explains a flow to a Service by the endpoints it leads to.
    let (a, b, c) = (env.pod("x/a").ip.to_string(), env.pod("x/b").ip.to_string(), env.pod("x/c").ip.to_string());
    let db = cli_trace(&env, &status_file, &[&a, &DB4.to_string(), &format!("tcp/{PORT}")]);
    assert_eq!((&db["service"], &db["allowed"]), (&json!("x/db"), &json!(true)), "{db}");
    assert_eq!(
        db["endpoints"]
            .as_array()
            .map(|e| e.iter().map(|t| (t["dst"].clone(), t["port"].clone(), t["allowed"].clone())).collect::<Vec<_>>()),
        Some(vec![(json!(b), json!(TARGET), json!(true))]),
        "{db}"
    );
    let other = cli_trace(&env, &status_file, &[&a, &OTHER4.to_string(), &format!("tcp/{PORT}")]);
    assert_eq!(
        (&other["service"], &other["allowed"], &other["endpoints"][0]["dst"]),
        (&json!("x/other"), &json!(false), &json!(c)),
        "{other}"
    );
    // A Service the agent no longer knows is only an address again, which
    // no pod selector allows.
    manifests.write("services.yaml", &service_manifests()[1..]);
    wait_until("db's address is judged as itself", || !via(&env, "x/a", Probe::tcp(PORT), DB4));
    assert!(via(&env, "x/a", Probe::tcp(NODE_PORT), NODE_IP), "the NodePort Service is still there");
}
