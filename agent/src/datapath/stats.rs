//! Reading what the programs counted for a pod.
use aya::maps::PerCpuValues;
use na_common::{
    direction,
    events::{counter_index, verdict},
    pod_state::PodCounterSlots,
};
use serde::{Deserialize, Serialize};

use super::{rules::RulesError, tables::NodeTables};
use crate::{bpffs::PinLayout, pod_id::PodId};

/// Packets and bytes a pod's programs allowed and denied, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCounters {
    pub ingress_allowed: Totals,
    pub ingress_denied: Totals,
    pub egress_allowed: Totals,
    pub egress_denied: Totals,
    /// New flows passed only because the direction is audited: the
    /// NetworkPolicy tier would have dropped them (also counted as allowed).
    pub ingress_audited: Totals,
    pub egress_audited: Totals,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
}

/// Reads `pod`'s counters (zero when it is not registered).
pub fn pod_counters(layout: &PinLayout, pod: &PodId) -> Result<PodCounters, RulesError> {
    let tables = NodeTables::open(layout)?;
    match tables.ifindexes_of_pod(layout, pod)?.first() {
        Some(ifindex) => Ok(counters(&tables.counters(*ifindex)?)),
        None => Ok(PodCounters::default()),
    }
}

/// Sums one pod's per-CPU counter slots.
pub fn counters(values: &PerCpuValues<PodCounterSlots>) -> PodCounters {
    let total = |dir: u32, v: u8| -> Totals {
        let slot = counter_index(dir, v) as usize;
        values.iter().fold(Totals::default(), |t, c| Totals {
            packets: t.packets + c.slots[slot].packets,
            bytes: t.bytes + c.slots[slot].bytes,
        })
    };
    PodCounters {
        ingress_allowed: total(direction::INGRESS, verdict::ALLOW),
        ingress_denied: total(direction::INGRESS, verdict::DENY),
        egress_allowed: total(direction::EGRESS, verdict::ALLOW),
        egress_denied: total(direction::EGRESS, verdict::DENY),
        ingress_audited: total(direction::INGRESS, verdict::AUDIT),
        egress_audited: total(direction::EGRESS, verdict::AUDIT),
    }
}
