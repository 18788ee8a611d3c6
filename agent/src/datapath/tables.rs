//! The node-wide maps that lead from a veth's ifindex to its pod: the pod
//! table, the maps of per-pod tries and conntrack tables, the counters.
use std::os::fd::{AsFd, OwnedFd};

use aya::maps::{HashMap, HashOfMaps, Map, MapData, MapError, PerCpuHashMap, PerCpuValues};
use na_common::{
    conntrack::{FlowKey, FlowState},
    names::{MAP_CONNTRACK_TABLES, MAP_COUNTERS, MAP_EGRESS_TRIES, MAP_INGRESS_TRIES, MAP_POD_TABLE},
    pod_state::{PodCounterSlots, PodRecord},
    policy::{LpmKeyData, MAX_PREFIXES, RuleSet},
};

use super::{
    rules::{RulesError, map_err, open_pinned},
    sys,
};
use crate::bpffs::PinLayout;

/// The node's pod-lookup maps, opened from their pins.
pub struct NodeTables {
    pub pods: HashMap<MapData, u32, PodRecord>,
    ingress: Outer,
    egress: Outer,
    conntrack: Outer,
    counters: PerCpuHashMap<MapData, u32, PodCounterSlots>,
}

/// A pod's own maps: what the node's maps of maps point at.
pub struct InnerMaps<'a> {
    pub ingress: &'a MapData,
    pub egress: &'a MapData,
    pub conntrack: &'a MapData,
}

impl NodeTables {
    pub fn open(layout: &PinLayout) -> Result<Self, RulesError> {
        Ok(Self {
            pods: open_pinned(&layout.global_map(MAP_POD_TABLE))?,
            ingress: Outer::open(&layout.global_map(MAP_INGRESS_TRIES))?,
            egress: Outer::open(&layout.global_map(MAP_EGRESS_TRIES))?,
            conntrack: Outer::open(&layout.global_map(MAP_CONNTRACK_TABLES))?,
            counters: open_pinned(&layout.global_map(MAP_COUNTERS))?,
        })
    }

    /// Points `ifindex` at a pod's maps and gives it counters (kept if it has
    /// them). The pod record is written separately, by the rules.
    ///
    /// Every update of a map of maps waits for an RCU grace period (the
    /// kernel makes sure no program still sees the old inner map), some
    /// 10-20 ms: entries that already point at the pod's maps (an agent
    /// restart) are left alone, and the others are written concurrently so
    /// their waits overlap.
    pub fn register(&mut self, ifindex: u32, maps: &InnerMaps) -> Result<(), RulesError> {
        let outer = [
            (&mut self.ingress, maps.ingress, MAP_INGRESS_TRIES),
            (&mut self.egress, maps.egress, MAP_EGRESS_TRIES),
            (&mut self.conntrack, maps.conntrack, MAP_CONNTRACK_TABLES),
        ];
        std::thread::scope(|s| {
            let writes: Vec<_> = outer
                .into_iter()
                .filter(|(table, inner, _)| !table.points_at(ifindex, map_id(inner)))
                .map(|(table, inner, name)| {
                    s.spawn(move || table.map.insert(ifindex, inner, 0).map_err(map_err("insert into", name)))
                })
                .collect();
            writes.into_iter().try_for_each(|w| w.join().expect("map update thread"))
        })?;
        self.ensure_counters(ifindex)
    }

    /// Gives `ifindex` counters unless it has them (the programs only add
    /// to existing ones).
    pub fn ensure_counters(&mut self, ifindex: u32) -> Result<(), RulesError> {
        if self.counters.get(&ifindex, 0).is_err() {
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| map_err("size", MAP_COUNTERS)(MapError::IoError(e)))?;
            let zero = PerCpuValues::try_from(vec![PodCounterSlots::default(); cpus])
                .map_err(|e| map_err("size", MAP_COUNTERS)(MapError::IoError(e)))?;
            self.counters.insert(ifindex, zero, 0).map_err(map_err("insert into", MAP_COUNTERS))?;
        }
        Ok(())
    }

    /// Whether `ifindex`'s ingress trie is the map `trie`: the pod was
    /// registered under this very veth before.
    pub fn has_trie(&self, ifindex: u32, trie: &MapData) -> bool {
        self.ingress.points_at(ifindex, map_id(trie))
    }

    /// Removes everything keyed by `ifindex`; absent entries are fine.
    pub fn forget(&mut self, ifindex: u32) -> Result<(), RulesError> {
        let gone = |r: Result<(), MapError>, map: &'static str| match r {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(map_err("delete from", map)(e)),
        };
        // The record first: from then on the veth counts as no pod's.
        gone(self.pods.remove(&ifindex), MAP_POD_TABLE)?;
        gone(self.ingress.map.remove(&ifindex), MAP_INGRESS_TRIES)?;
        gone(self.egress.map.remove(&ifindex), MAP_EGRESS_TRIES)?;
        gone(self.conntrack.map.remove(&ifindex), MAP_CONNTRACK_TABLES)?;
        gone(self.counters.remove(&ifindex), MAP_COUNTERS)
    }

    /// Every ifindex whose ingress trie is the map `trie`.
    pub fn ifindexes_of(&self, trie: &MapData) -> Vec<u32> {
        let id = map_id(trie);
        self.ifindexes().into_iter().filter(|k| self.ingress.points_at(*k, id)).collect()
    }

    /// The ifindexes under which the tables know `pod` (normally one; none
    /// when it is not registered), found by its pinned trie.
    pub fn ifindexes_of_pod(&self, layout: &PinLayout, pod: &crate::pod_id::PodId) -> Result<Vec<u32>, RulesError> {
        let path = layout.map(pod, na_common::names::MAP_INGRESS);
        let trie =
            MapData::from_pin(&path).map_err(|source| RulesError::Open { path: path.display().to_string(), source })?;
        Ok(self.ifindexes_of(&trie))
    }

    /// Every ifindex the tables know a pod by.
    pub fn ifindexes(&self) -> Vec<u32> {
        self.ingress.map.keys().filter_map(Result::ok).collect()
    }

    /// A pod's per-CPU counters.
    pub fn counters(&self, ifindex: u32) -> Result<PerCpuValues<PodCounterSlots>, RulesError> {
        self.counters.get(&ifindex, 0).map_err(map_err("read", MAP_COUNTERS))
    }
}

/// Whether `table` maps `ifindex` to the very map `inner`.
/// `map`'s kernel id; None (logged) when it cannot be read, which makes
/// it point nowhere.
fn map_id(map: &MapData) -> Option<u32> {
    map.info().map(|i| i.id()).map_err(|e| tracing::warn!("reading a pod map's id: {e}")).ok()
}

/// A map of maps: aya's handle writes it, and a descriptor of its own reads
/// which inner map a key holds (by id, as [`sys::inner_map_id`] explains).
struct Outer {
    map: HashOfMaps<MapData, u32>,
    fd: OwnedFd,
}

impl Outer {
    /// Whether the entry under `ifindex` is the map with id `inner`. An
    /// error other than a missing entry is logged: read as "no" silently,
    /// it would leave stale entries behind unnoticed (as reading through
    /// aya, which needs CAP_SYS_ADMIN, once did).
    fn points_at(&self, ifindex: u32, inner: Option<u32>) -> bool {
        match sys::inner_map_id(self.fd.as_fd(), ifindex) {
            Ok(found) => found.is_some() && found == inner,
            Err(e) => {
                tracing::warn!(ifindex, "reading a map of maps: {e}");
                false
            }
        }
    }

    fn open(path: &std::path::Path) -> Result<Self, RulesError> {
        let open = |source| RulesError::Open { path: path.display().to_string(), source };
        let data = MapData::from_pin(path).map_err(open)?;
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(|e| open(MapError::IoError(e)))?;
        let map = HashOfMaps::try_from(Map::from_map_data(data).map_err(open)?).map_err(open)?;
        Ok(Self { map, fd })
    }
}

/// Creates a pod's trie: the same type, sizes and flags as the programs'
/// inner-map template, as the kernel requires of an inner map.
pub fn create_trie(name: &str) -> Result<MapData, RulesError> {
    create(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LPM_TRIE,
        size_of::<aya::maps::lpm_trie::Key<LpmKeyData>>(),
        size_of::<RuleSet>(),
        MAX_PREFIXES,
        name,
    )
}

/// Creates a pod's conntrack table holding up to `capacity` flows.
pub fn create_conntrack(name: &str, capacity: u32) -> Result<MapData, RulesError> {
    create(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH,
        size_of::<FlowKey>(),
        size_of::<FlowState>(),
        capacity,
        name,
    )
}

fn create(
    map_type: aya_obj::generated::bpf_map_type,
    key: usize,
    value: usize,
    max_entries: u32,
    name: &str,
) -> Result<MapData, RulesError> {
    // Inner maps are not preallocated: an idle pod costs next to nothing, and
    // a replaced entry is freed only after the programs are done with it.
    let no_prealloc = aya_obj::generated::BPF_F_NO_PREALLOC;
    let def = aya_obj::Map::new_from_params(map_type as u32, key as u32, value as u32, max_entries, no_prealloc);
    MapData::create(def, name, None).map_err(|source| RulesError::Create { name: name.to_owned(), source })
}
