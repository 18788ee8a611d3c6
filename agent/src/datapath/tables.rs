//! The node-wide maps that lead from a veth's ifindex to its pod: the pod
//! table, the arrays of per-pod tries and conntrack tables (by the slot the
//! pod's record names), the counters.
use std::os::fd::{AsFd, OwnedFd};

use aya::maps::{ArrayOfMaps, HashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues};
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

    /// Puts a pod's maps at `slot` of the node's arrays of maps.
    ///
    /// Every update of a map of maps waits for an RCU grace period (the
    /// kernel makes sure no program still sees the old inner map), some
    /// 10-20 ms: the three are written concurrently so their waits overlap,
    /// and slots are filled ahead of the pods that take them (`slots`).
    pub fn register(&mut self, slot: u32, maps: &InnerMaps) -> Result<(), RulesError> {
        let outer = [
            (&mut self.ingress, maps.ingress, MAP_INGRESS_TRIES),
            (&mut self.egress, maps.egress, MAP_EGRESS_TRIES),
            (&mut self.conntrack, maps.conntrack, MAP_CONNTRACK_TABLES),
        ];
        at_once(outer.map(|(table, inner, name)| move || table.map.set(slot, inner, 0).map_err(map_err("write", name))))
    }

    /// Empties `slot` if it holds the maps `maps` (concurrently, as
    /// [`Self::register`]), so they are freed; a slot someone filled since
    /// is left alone.
    pub fn clear(&self, slot: u32, maps: &InnerMaps) -> Result<(), RulesError> {
        let outer = [
            (&self.ingress, maps.ingress, MAP_INGRESS_TRIES),
            (&self.egress, maps.egress, MAP_EGRESS_TRIES),
            (&self.conntrack, maps.conntrack, MAP_CONNTRACK_TABLES),
        ];
        at_once(outer.into_iter().filter(|(table, inner, _)| table.points_at(slot, map_id(inner))).map(
            |(table, _, name)| {
                move || sys::delete_elem(table.fd.as_fd(), slot).map_err(|e| map_err("delete from", name)(e.into()))
            },
        ))
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

    /// Whether `slot` holds exactly `maps`.
    pub fn holds(&self, slot: u32, maps: &InnerMaps) -> bool {
        self.ingress.points_at(slot, map_id(maps.ingress))
            && self.egress.points_at(slot, map_id(maps.egress))
            && self.conntrack.points_at(slot, map_id(maps.conntrack))
    }

    /// The id of the ingress trie at `slot`, if any.
    pub fn trie_at(&self, slot: u32) -> Option<u32> {
        self.ingress.id_at(slot)
    }

    /// Removes `ifindex`'s record and counters: from then on the veth counts
    /// as no pod's. The record's slot keeps its maps (see [`Self::clear`]).
    pub fn forget(&mut self, ifindex: u32) -> Result<(), RulesError> {
        let gone = |r: Result<(), MapError>, map: &'static str| match r {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(map_err("delete from", map)(e)),
        };
        gone(self.pods.remove(&ifindex), MAP_POD_TABLE)?;
        gone(self.counters.remove(&ifindex), MAP_COUNTERS)
    }

    /// Every pod record: ifindex and slot.
    pub fn records(&self) -> Vec<(u32, PodRecord)> {
        self.pods.iter().filter_map(Result::ok).collect()
    }

    /// Every (ifindex, slot) whose record leads to the ingress trie `trie`.
    pub fn registrations_of(&self, trie: &MapData) -> Vec<(u32, u32)> {
        let id = map_id(trie);
        self.records()
            .into_iter()
            .filter(|(_, record)| self.ingress.points_at(record.slot, id))
            .map(|(ifindex, record)| (ifindex, record.slot))
            .collect()
    }

    /// Every (ifindex, slot) under which the tables know `pod` (normally
    /// one; none when it is not registered), found by its pinned trie.
    pub fn registrations_of_pod(
        &self,
        layout: &PinLayout,
        pod: &crate::pod_id::PodId,
    ) -> Result<Vec<(u32, u32)>, RulesError> {
        let path = layout.map(pod, na_common::names::MAP_INGRESS);
        let trie =
            MapData::from_pin(&path).map_err(|source| RulesError::Open { path: path.display().to_string(), source })?;
        Ok(self.registrations_of(&trie))
    }

    /// The ifindexes under which the tables know `pod`.
    pub fn ifindexes_of_pod(&self, layout: &PinLayout, pod: &crate::pod_id::PodId) -> Result<Vec<u32>, RulesError> {
        Ok(self.registrations_of_pod(layout, pod)?.into_iter().map(|(ifindex, _)| ifindex).collect())
    }

    /// Every ifindex the tables know a pod by.
    pub fn ifindexes(&self) -> Vec<u32> {
        self.pods.keys().filter_map(Result::ok).collect()
    }

    /// A pod's per-CPU counters.
    pub fn counters(&self, ifindex: u32) -> Result<PerCpuValues<PodCounterSlots>, RulesError> {
        self.counters.get(&ifindex, 0).map_err(map_err("read", MAP_COUNTERS))
    }
}

/// Runs `updates` of the arrays of maps each in a thread of its own: each
/// waits for an RCU grace period, and concurrent waits overlap.
fn at_once<F>(updates: impl IntoIterator<Item = F>) -> Result<(), RulesError>
where
    F: FnOnce() -> Result<(), RulesError> + Send,
{
    std::thread::scope(|s| {
        let running: Vec<_> = updates.into_iter().map(|update| s.spawn(update)).collect();
        running.into_iter().try_for_each(|r| r.join().expect("map update thread"))
    })
}

/// `map`'s kernel id; None (logged) when it cannot be read, which makes
/// it point nowhere.
fn map_id(map: &MapData) -> Option<u32> {
    map.info().map(|i| i.id()).map_err(|e| tracing::warn!("reading a pod map's id: {e}")).ok()
}

/// An array of maps: aya's handle writes it, and a descriptor of its own
/// reads which inner map a slot holds (by id, as [`sys::inner_map_id`]
/// explains) and empties slots (aya 0.14 has no delete for it).
struct Outer {
    map: ArrayOfMaps<MapData>,
    fd: OwnedFd,
}

impl Outer {
    /// The id of the map at `slot`. An error other than an empty slot is
    /// logged: read as "none" silently, it would leave stale entries behind
    /// unnoticed (as reading through aya, which needs CAP_SYS_ADMIN, once did).
    fn id_at(&self, slot: u32) -> Option<u32> {
        sys::inner_map_id(self.fd.as_fd(), slot)
            .map_err(|e| tracing::warn!(slot, "reading a map of maps: {e}"))
            .ok()
            .flatten()
    }

    /// Whether the map at `slot` is the one with id `inner`.
    fn points_at(&self, slot: u32, inner: Option<u32>) -> bool {
        inner.is_some() && self.id_at(slot) == inner
    }

    fn open(path: &std::path::Path) -> Result<Self, RulesError> {
        let open = |source| RulesError::Open { path: path.display().to_string(), source };
        let data = MapData::from_pin(path).map_err(open)?;
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(|e| open(MapError::IoError(e)))?;
        let map = ArrayOfMaps::try_from(Map::from_map_data(data).map_err(open)?).map_err(open)?;
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
