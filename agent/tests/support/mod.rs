//! A private node with pods, servers and its own bpffs root, torn down on drop.
//! Shared by the netns test targets and the demo (`examples/demo.rs`).
// Each test target uses its own part of this module.
#![allow(dead_code)]

pub mod agent;
pub mod cli;
pub mod deploy;
pub mod fake_apiserver;
pub mod raw;
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Result;
use na_agent::{
    bpffs::PinLayout,
    datapath::{AttachMode, Datapath, PodAddrs, PodMaps, PodRules},
    pod_id::PodId,
    veth::{DEFAULT_PREFIX, host_veth_name},
};
use na_harness::{Family, Node, Pod, Probe, Proto, Servers};

static ROOTS: AtomicU32 = AtomicU32::new(0);

/// Parent of every pin root the support module makes.
pub const ROOT_PREFIX: &str = "/sys/fs/bpf/na-test-";

pub struct Env {
    // Fields drop in order: servers stop before their namespaces go, and the
    // pin root goes last.
    _servers: Servers,
    pub node: Node,
    pub dp: Datapath,
    attached: Vec<(PodId, String)>,
    root: PinRoot,
}

/// A test's own bpffs directory, removed even when setup fails half-way.
pub struct PinRoot(pub PathBuf);

impl PinRoot {
    pub fn new() -> Self {
        Self(PathBuf::from(format!("{ROOT_PREFIX}{}-{}", std::process::id(), ROOTS.fetch_add(1, Ordering::Relaxed))))
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The node's verdict ring, read as the agent reads it.
pub struct Events(aya::maps::RingBuf<aya::maps::MapData>);

impl Events {
    /// Opens the ring pinned under `layout` (it exists once programs are
    /// loaded), skipping what is queued already.
    pub fn open(layout: &PinLayout) -> Self {
        let data = aya::maps::MapData::from_pin(layout.global_map(na_common::names::MAP_EVENTS)).expect("event ring");
        let map = aya::maps::Map::from_map_data(data).expect("event ring");
        let mut events = Self(aya::maps::RingBuf::try_from(map).expect("a ring buffer"));
        events.take();
        events
    }

    /// The events queued since the last call.
    pub fn take(&mut self) -> Vec<na_common::events::PolicyEvent> {
        std::iter::from_fn(|| self.0.next().map(|item| na_agent::flowlog::decode(&item).expect("a whole event")))
            .collect()
    }
}

/// Ports every pod serves, on TCP and UDP.
pub const PORTS: [u16; 2] = [80, 81];

impl Env {
    /// A node with pods `x/a`, `x/b`, `x/c` serving [`PORTS`], nothing attached.
    pub fn new(mode: AttachMode) -> Result<Self> {
        Self::with_pods(mode, &[("x", "a"), ("x", "b"), ("x", "c")])
    }

    /// A node with `pods` (namespace, name) serving [`PORTS`], nothing attached.
    pub fn with_pods(mode: AttachMode, pods: &[(&str, &str)]) -> Result<Self> {
        Self::build(mode, pods, true)
    }

    /// A node with `pods` serving nothing (for scale: no server threads).
    pub fn without_servers(mode: AttachMode, pods: &[(&str, &str)]) -> Result<Self> {
        Self::build(mode, pods, false)
    }

    fn build(mode: AttachMode, pods: &[(&str, &str)], serve: bool) -> Result<Self> {
        let root = PinRoot::new();
        let dp = Datapath::new(PinLayout::new(&root.0), mode)?;
        let mut node = Node::new()?;
        for (i, (namespace, name)) in pods.iter().enumerate() {
            let veth = host_veth_name(DEFAULT_PREFIX, namespace, name);
            let host = u8::try_from(i + 2).expect("fewer than 250 pods");
            let ip6 = Ipv6Addr::new(0xfd18, 0, 0, 0, 0, 0, 0, u16::from(host));
            node.add_pod(namespace, name, Ipv4Addr::new(198, 18, 0, host), ip6, &veth)?;
        }
        let mut servers = Servers::default();
        for pod in node.pods().iter().filter(|_| serve) {
            for port in PORTS {
                servers.start(pod, Proto::Tcp, port)?;
                servers.start(pod, Proto::Udp, port)?;
            }
        }
        Ok(Self { _servers: servers, node, dp, root, attached: Vec::new() })
    }

    pub fn pod(&self, key: &str) -> &Pod {
        self.node.pod(key).unwrap_or_else(|| panic!("no pod {key}"))
    }

    /// `key`'s addresses, as the datapath is told them.
    pub fn addrs(&self, key: &str) -> PodAddrs {
        let pod = self.pod(key);
        PodAddrs { ipv4: Some(pod.ip), ipv6: Some(pod.ip6) }
    }

    /// Loads and attaches `key`'s programs with `rules`, inside the node.
    pub fn attach(&mut self, key: &str, rules: &PodRules) -> Result<PodMaps> {
        let pod = self.pod(key);
        let (id, veth) = (PodId::new(&pod.namespace, &pod.name), pod.host_veth.clone());
        let (dp, addrs) = (&self.dp, self.addrs(key));
        let maps = self.node.netns().run(|| dp.attach_pod(&id, &veth, addrs, rules))??;
        self.attached.push((id, veth));
        Ok(maps)
    }

    /// Detaches `key`'s programs and removes its pins.
    pub fn detach(&mut self, key: &str) -> Result<()> {
        let pod = self.pod(key);
        let id = PodId::new(&pod.namespace, &pod.name);
        let veth = pod.host_veth.clone();
        let dp = &self.dp;
        self.node.netns().run(|| dp.detach_pod(&id, Some(&veth)))??;
        self.attached.retain(|(i, _)| *i != id);
        Ok(())
    }

    /// Whether `probe` from `from` reaches `to` over IPv4.
    pub fn reaches(&self, from: &str, to: &str, probe: Probe) -> bool {
        self.reaches_over(Family::V4, from, to, probe)
    }

    /// Whether `probe` from `from` reaches `to` over `family`.
    pub fn reaches_over(&self, family: Family, from: &str, to: &str, probe: Probe) -> bool {
        probe.run(self.pod(from), family.of(self.pod(to))).expect("probe ran")
    }

    /// Asserts that each (from, to, probe) reaches over `family`: the baseline
    /// that makes a later denial of the same probe the policy's doing, not a
    /// broken network's.
    pub fn assert_reach(&self, family: Family, probes: &[(&str, &str, Probe)]) {
        for (from, to, probe) in probes {
            assert!(
                self.reaches_over(family, from, to, *probe),
                "baseline: {probe} from {from} to {to} over {family:?}"
            );
        }
    }

    /// A TCP connection from `from` to `to`'s `port` (IPv4) that gives up on
    /// a read after 500 ms, for flows that must outlive what a test does.
    pub fn connect(&self, from: &str, to: &str, port: u16) -> std::net::TcpStream {
        let addr = std::net::SocketAddr::new(self.pod(to).ip.into(), port);
        let conn = self
            .pod(from)
            .netns()
            .run(move || std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)))
            .expect("entering the pod")
            .expect("connecting");
        conn.set_read_timeout(Some(std::time::Duration::from_millis(500))).expect("a read timeout");
        conn
    }

    pub fn root(&self) -> &PathBuf {
        &self.root.0
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for (id, veth) in std::mem::take(&mut self.attached) {
            let dp = &self.dp;
            let _ = self.node.netns().run(|| dp.detach_pod(&id, Some(&veth)));
        }
    }
}
