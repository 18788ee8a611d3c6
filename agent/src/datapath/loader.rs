//! The agent's handle on the datapath: the node's program pair, loaded once,
//! and each pod's maps, attachments and rules.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use aya::{
    maps::{Map, MapData, MapError},
    programs::{ProgramError, SchedClassifier},
};
use na_common::{
    conntrack::{DEFAULT_FLOWS_PER_POD, FlowState, TimeoutClass, timeout, timeout_globals},
    names::{MAP_EGRESS, MAP_INGRESS, MAP_POD_TABLE},
    node::MAX_NODE_ADDRS,
    pod_state::MAX_PODS,
};
use thiserror::Error;

use na_policy::PodRules;

use super::{
    AttachMode, PROGRAMS, attach,
    programs::Programs,
    rules::open_pinned,
    rules::{PodAddrs, PodMaps, RulesError},
    slots::{PinnedMaps, Slots},
    tables::NodeTables,
};
use crate::{
    bpffs::{BpffsError, PinLayout},
    pod_id::PodId,
};

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("parsing the eBPF object: {0}")]
    Object(String),
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error("adding the clsact qdisc to {0}: {1}")]
    Clsact(String, #[source] aya::programs::TcError),
    #[error("TCX link: {0}")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("reading the attachments of {0}: {1}")]
    Query(String, std::io::Error),
    #[error("detaching from {0}: {1}")]
    Detach(String, String),
    #[error("pin {0}: {1}")]
    Pin(PathBuf, String),
    #[error("no interface {0} in this network namespace")]
    NoInterface(String),
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error(transparent)]
    Services(#[from] super::ServicesError),
    #[error("the DNAT hook: {0}")]
    DnatHook(#[from] super::dnat_hook::DnatHookError),
    #[error("the node's tables hold {MAX_PODS} pods, spare slots included: no slot is free")]
    NoSlot,
    #[error("the node has {0} IPv6 addresses; its table holds {MAX_NODE_ADDRS}")]
    TooManyNodeAddrs(usize),
}

/// Conntrack idle timeouts, baked into each pod's programs at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_established: Duration,
    /// TCP flows after FIN from one end.
    pub tcp_closing: Duration,
    /// TCP flows that are over: RST, or FIN from both ends.
    pub tcp_closed: Duration,
    pub udp: Duration,
    /// TCP, UDP and SCTP flows that have not seen a reply.
    pub unreplied: Duration,
    pub other: Duration,
    /// Flows the policy revoked, after their last packet.
    pub revoked: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_secs(timeout::TCP_ESTABLISHED_SECS),
            tcp_closing: Duration::from_secs(timeout::TCP_CLOSING_SECS),
            tcp_closed: Duration::from_secs(timeout::TCP_CLOSED_SECS),
            udp: Duration::from_secs(timeout::UDP_SECS),
            unreplied: Duration::from_secs(timeout::UNREPLIED_SECS),
            other: Duration::from_secs(timeout::OTHER_SECS),
            revoked: Duration::from_secs(timeout::REVOKED_SECS),
        }
    }
}

impl Timeouts {
    /// The idle timeout of a flow, as the programs apply it.
    pub fn idle_timeout_ns(&self, proto: u8, flow: &FlowState) -> u64 {
        let d = match TimeoutClass::of(proto, flow) {
            TimeoutClass::TcpClosing => self.tcp_closing,
            TimeoutClass::TcpClosed => self.tcp_closed,
            TimeoutClass::Revoked => self.revoked,
            TimeoutClass::TcpEstablished => self.tcp_established,
            TimeoutClass::Udp => self.udp,
            TimeoutClass::Unreplied => self.unreplied,
            TimeoutClass::Other => self.other,
        };
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }

    /// (object global, nanoseconds) pairs.
    pub(super) fn globals(&self) -> [(&'static str, u64); 7] {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        [
            (timeout_globals::TCP_ESTABLISHED, ns(self.tcp_established)),
            (timeout_globals::TCP_CLOSING, ns(self.tcp_closing)),
            (timeout_globals::TCP_CLOSED, ns(self.tcp_closed)),
            (timeout_globals::UDP, ns(self.udp)),
            (timeout_globals::UNREPLIED, ns(self.unreplied)),
            (timeout_globals::OTHER, ns(self.other)),
            (timeout_globals::REVOKED, ns(self.revoked)),
        ]
    }
}

/// Everything baked into the programs at load time (their version).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub timeouts: Timeouts,
    pub log_level: KernelLogLevel,
    /// Strict mode: a veth carrying our programs without a pod record drops.
    pub strict: bool,
}

/// The agent's handle on the datapath.
#[derive(Clone, Debug)]
pub struct Datapath {
    layout: PinLayout,
    attach_mode: AttachMode,
    settings: Settings,
    flows_per_pod: u32,
    /// Loaded on first use, once per handle (and so per agent).
    programs: Arc<Mutex<Option<Programs>>>,
    slots: Slots,
}

/// How much the programs log through aya-log (the agent forwards it to its own log).
/// Off costs one load and a branch per log site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
#[repr(u8)]
pub enum KernelLogLevel {
    #[default]
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl Datapath {
    /// Prepares `layout` (mounting bpffs if needed).
    pub fn new(layout: PinLayout, attach_mode: AttachMode) -> Result<Self, DatapathError> {
        layout.prepare()?;
        Ok(Self {
            slots: Slots::new(layout.clone(), DEFAULT_FLOWS_PER_POD, 0),
            layout,
            attach_mode,
            settings: Settings::default(),
            flows_per_pod: DEFAULT_FLOWS_PER_POD,
            programs: Arc::default(),
        })
    }

    /// Keeps `spares` slots ready (filled in the background once the
    /// programs are loaded), so a new pod's start waits for no RCU grace
    /// period on the node's arrays of maps. 0 (the default) fills each
    /// pod's slot when it starts.
    pub fn with_spare_slots(mut self, spares: usize) -> Self {
        self.slots = Slots::new(self.layout.clone(), self.flows_per_pod, spares);
        // Loaded already (a clone of a handle that loaded them): no load
        // will start the refill.
        if self.programs.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            self.slots.wake_refill();
        }
        self
    }

    pub fn with_log_level(self, log_level: KernelLogLevel) -> Self {
        let settings = Settings { log_level, ..self.settings };
        self.with_settings(settings)
    }

    pub fn with_timeouts(self, timeouts: Timeouts) -> Self {
        let settings = Settings { timeouts, ..self.settings };
        self.with_settings(settings)
    }

    pub fn with_strict(self, strict: bool) -> Self {
        let settings = Settings { strict, ..self.settings };
        self.with_settings(settings)
    }

    /// Capacity of the conntrack table of each pod attached from now on.
    pub fn with_flows_per_pod(mut self, flows: u32) -> Self {
        self.flows_per_pod = flows;
        self.slots = Slots::new(self.layout.clone(), flows, self.slots.target());
        self
    }

    /// Other settings mean other programs: the handle loads them afresh.
    fn with_settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self.programs = Arc::default();
        self
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    pub fn flows_per_pod(&self) -> u32 {
        self.flows_per_pod
    }

    /// How many spare slots are ready now.
    pub fn spare_slots(&self) -> Result<usize, DatapathError> {
        Ok(self.slots.spares()?.len())
    }

    /// The node's programs, adopted from their pins or loaded now.
    pub fn programs(&self) -> Result<MutexGuard<'_, Option<Programs>>, DatapathError> {
        let mut programs = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        if programs.is_none() {
            let loaded = Programs::load_or_adopt(&self.layout, &self.settings)?;
            NodeTables::open(&self.layout)?.ensure_counters(na_common::pod_state::UNKNOWN_POD)?;
            *programs = Some(loaded);
            self.slots.wake_refill();
        }
        Ok(programs)
    }

    /// See [`super::programs::bound_object`].
    pub fn bound_object(&self) -> Result<aya::Ebpf, DatapathError> {
        super::programs::bound_object(&self.layout)
    }

    /// See [`super::programs::global_map_entries`].
    pub fn global_map_entries(&self, name: &str) -> Result<(u32, Option<u32>), DatapathError> {
        super::programs::global_map_entries(&self.layout, name)
    }

    /// Links the node's netfilter program that judges pods' flows to
    /// Service addresses after DNAT, in this thread's network namespace (the
    /// node's), or keeps the links an earlier agent of this version left.
    /// On failure the hand over stays off: Service addresses are judged as
    /// any address, which denies what only an endpoint's rule allows.
    pub fn install_dnat_hook(&self) -> Result<(), DatapathError> {
        let version = self.programs()?.as_ref().expect("loaded").version().to_owned();
        super::dnat_hook::install(&self.layout, &version).inspect_err(|_| {
            let _ = super::dnat_hook::uninstall(&self.layout);
        })?;
        Ok(())
    }

    /// Makes the node's Service frontends `frontends` (see
    /// [`super::ServiceTable`]); returns how many entries changed.
    pub fn set_services(&self, frontends: &BTreeMap<super::Frontend, u32>) -> Result<usize, DatapathError> {
        drop(self.programs()?);
        Ok(super::ServiceTable::open(&self.layout)?.sync(frontends)?)
    }

    /// Makes the node's own IPv6 addresses, with which neighbour discovery
    /// passes, `addrs`; returns how many entries changed.
    pub fn set_node_addrs(&self, addrs: &BTreeSet<Ipv6Addr>) -> Result<usize, DatapathError> {
        if addrs.len() > MAX_NODE_ADDRS as usize {
            return Err(DatapathError::TooManyNodeAddrs(addrs.len()));
        }
        drop(self.programs()?);
        Ok(super::NodeAddrTable::open(&self.layout)?.sync(addrs)?)
    }

    /// The programs' version and how this handle got them, for the status file.
    pub fn programs_entry(&self) -> Result<crate::status::ProgramsEntry, DatapathError> {
        let programs = self.programs()?;
        let programs = programs.as_ref().expect("loaded");
        let (origin, verify_ms) = match programs.origin {
            super::Origin::Verified { millis } => ("verified", Some(u64::try_from(millis).unwrap_or(u64::MAX))),
            super::Origin::Adopted => ("adopted", None),
        };
        Ok(crate::status::ProgramsEntry { version: programs.version().to_owned(), origin: origin.into(), verify_ms })
    }

    /// Creates (or reuses, when pinned) `pod`'s maps, points the node's
    /// tables at them under `ifname`'s ifindex, writes `rules` and the pod's
    /// addresses (the only sources its packets may carry), and attaches the
    /// node's programs to `ifname`; returns once all of it is done. A pod
    /// already attached keeps its maps (conntrack included) and gets its
    /// programs swapped atomically.
    ///
    /// The attachments and the registration run at once: each waits for RCU
    /// grace periods (a TCX attachment under the RTNL lock, an update of the
    /// node's map-of-maps tables), and the waits overlap. Meanwhile the
    /// programs may already see the veth without its pod: they judge it as
    /// a veth of no pod (standard mode passes and counts, strict mode
    /// drops), which is no more than an unattached veth lets through.
    pub fn attach_pod(
        &self,
        pod: &PodId,
        ifname: &str,
        addrs: PodAddrs,
        rules: &PodRules,
    ) -> Result<PodMaps, DatapathError> {
        let ifindex =
            nix::net::if_::if_nametoindex(ifname).map_err(|_| DatapathError::NoInterface(ifname.to_owned()))?;
        let pins = {
            let programs = self.programs()?;
            let programs = programs.as_ref().expect("loaded above");
            PROGRAMS.map(|(name, _, hook)| (programs.pin(&self.layout, name), hook, self.layout.link(pod, name)))
        };
        let tables = NodeTables::open(&self.layout)?;
        let registered = tables.registrations_of_pod(&self.layout, pod).unwrap_or_default();
        // Whether the pod's pinned links (if any) belong to this device.
        let same_device = registered.iter().any(|(known, _)| *known == ifindex);
        std::thread::scope(|s| {
            let attaching: Vec<_> = pins
                .iter()
                .map(|(pin, hook, link)| {
                    s.spawn(move || {
                        let mut prog = SchedClassifier::from_pin(pin)?;
                        attach::attach_or_replace(&mut prog, ifname, *hook, self.attach_mode, link, same_device)
                    })
                })
                .collect();
            let loaded = self.load_registered(tables, registered, pod, ifindex, addrs, rules);
            attaching.into_iter().try_for_each(|a| a.join().expect("attach thread"))?;
            loaded
        })
    }

    /// Gives `pod` its maps under `ifindex` (those it has there, else a
    /// fresh slot's) and writes `rules`, without attaching anything.
    pub fn load_pod(
        &self,
        pod: &PodId,
        ifindex: u32,
        addrs: PodAddrs,
        rules: &PodRules,
    ) -> Result<PodMaps, DatapathError> {
        // The node's tables are created (and pinned) with the programs.
        drop(self.programs()?);
        let tables = NodeTables::open(&self.layout)?;
        let registered = tables.registrations_of_pod(&self.layout, pod).unwrap_or_default();
        self.load_registered(tables, registered, pod, ifindex, addrs, rules)
    }

    /// [`Self::load_pod`] with the (ifindex, slot) pairs the tables know
    /// `pod` by, read once by the caller (a scan of the pod table).
    fn load_registered(
        &self,
        mut tables: NodeTables,
        registered: Vec<(u32, u32)>,
        pod: &PodId,
        ifindex: u32,
        addrs: PodAddrs,
        rules: &PodRules,
    ) -> Result<PodMaps, DatapathError> {
        let (slot, maps, stale) = match registered.iter().find(|(i, _)| *i == ifindex) {
            // Known under this veth (an agent restart, new rules): its maps,
            // conntrack included, stay.
            Some(&(_, slot)) => (slot, PinnedMaps::of_pod(&self.layout, pod)?, None),
            // A new veth is a new sandbox (a new network namespace, perhaps
            // a new pod under the same name while no agent watched): no flow
            // of the old one can be alive, and none may be admitted as if it
            // were, so the pod gets fresh maps. Its old ones are freed below.
            None => {
                let old = (!registered.is_empty()).then(|| PinnedMaps::of_pod(&self.layout, pod)).transpose()?;
                let (slot, maps) = self.slots.take(&mut tables, pod)?;
                (slot, maps, old)
            }
        };
        tables.ensure_counters(ifindex)?;
        let typed = |data: MapData, name: &'static str| -> Result<super::rules::Trie, DatapathError> {
            let map = Map::from_map_data(data).map_err(|e| RulesError::Map { op: "open", map: name, source: e })?;
            Ok(map.try_into().map_err(|e: MapError| RulesError::Map { op: "open", map: name, source: e })?)
        };
        let (ingress, egress) = (typed(maps.ingress, MAP_INGRESS)?, typed(maps.egress, MAP_EGRESS)?);
        let pods = open_pinned(&self.layout.global_map(MAP_POD_TABLE))?;
        let mut pod_maps = PodMaps::new(ingress, egress, pods, ifindex, slot, addrs);
        pod_maps.apply(rules)?;
        for (old_ifindex, old_slot) in registered.into_iter().filter(|(i, _)| *i != ifindex) {
            // Checked again: another pod attached meanwhile may have taken
            // the freed ifindex (a narrow window remains; see the
            // concurrency note in `Reconciler::attach_all`).
            if tables.pods.get(&old_ifindex, 0).is_ok_and(|record| record.slot == old_slot) {
                tables.forget(old_ifindex)?;
            }
            if let Some(old) = &stale {
                tables.clear(old_slot, &old.inner())?;
            }
        }
        Ok(pod_maps)
    }

    /// Whether `pod` is enforced on its veth `ifindex` as this handle set it
    /// up: the node's programs on both hooks, and the veth's record leading
    /// to the pod's own maps. Either can be lost from under us: a filter
    /// removed (`tc qdisc del dev X clsact`), a link detached (`bpftool link
    /// detach`), a record removed or leading to another pod's slot (which is
    /// how two pods once came to share one). The veth is then judged by
    /// nothing, or by the wrong rules, until [`Self::attach_pod`] runs
    /// again; that keeps the pod's maps where its record still leads to them.
    pub fn is_enforcing(&self, pod: &PodId, ifindex: u32) -> Result<bool, DatapathError> {
        let ids = self.programs()?.as_ref().expect("loaded").ids;
        for ((_, _, hook), id) in PROGRAMS.into_iter().zip(ids) {
            let attached = attach::is_attached(ifindex, hook, self.attach_mode, id)
                .map_err(|e| DatapathError::Query(format!("device {ifindex}"), e))?;
            if !attached {
                return Ok(false);
            }
        }
        let tables = NodeTables::open(&self.layout)?;
        let record = match tables.pods.get(&ifindex, 0) {
            Ok(record) => record,
            Err(MapError::KeyNotFound) => return Ok(false),
            Err(e) => return Err(RulesError::Map { op: "read", map: MAP_POD_TABLE, source: e }.into()),
        };
        Ok(tables.holds(record.slot, &PinnedMaps::of_pod(&self.layout, pod)?.inner()))
    }

    /// Detaches the programs from `pod`'s veth `ifname` (if it still exists),
    /// removes its records from the node's tables, empties its slot and
    /// removes every pin of the pod.
    pub fn detach_pod(&self, pod: &PodId, ifname: Option<&str>) -> Result<(), DatapathError> {
        for (name, _, hook) in PROGRAMS {
            attach::detach(ifname, name, hook, &self.layout.link(pod, name))?;
        }
        let mut tables = NodeTables::open(&self.layout).ok();
        let mut slots = Vec::new();
        if let Some(tables) = &mut tables {
            for (ifindex, slot) in tables.registrations_of_pod(&self.layout, pod).unwrap_or_default() {
                tables.forget(ifindex)?;
                slots.push(slot);
            }
        }
        self.slots.release(tables.as_ref(), pod, &slots)
    }

    /// Removes `pod`'s conntrack entries idle past their timeout; returns how many.
    pub fn sweep_conntrack(&self, pod: &PodId) -> Result<usize, DatapathError> {
        Ok(super::sweep::sweep(&self.layout, pod, &self.settings.timeouts)?)
    }

    /// Removes the pins of program versions other than this agent's.
    pub fn remove_stale_programs(&self) -> Result<usize, DatapathError> {
        let programs = self.programs()?;
        programs.as_ref().expect("loaded").remove_stale(&self.layout)
    }
}
