//! Reading what a pod's programs counted.
use aya::maps::{MapData, PerCpuArray};
use na_common::{
    direction,
    events::{Counter, counter_index, verdict},
    names::MAP_COUNTERS,
};
use serde::{Deserialize, Serialize};

use super::rules::{RulesError, open_pinned};
use crate::{bpffs::PinLayout, pod_id::PodId};

/// Packets and bytes a pod's programs allowed and denied, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCounters {
    pub ingress_allowed: Totals,
    pub ingress_denied: Totals,
    pub egress_allowed: Totals,
    pub egress_denied: Totals,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
}

/// Reads `pod`'s pinned counters.
pub fn pod_counters(layout: &PinLayout, pod: &PodId) -> Result<PodCounters, RulesError> {
    counters(&open_pinned(&layout.map(pod, MAP_COUNTERS))?)
}

/// Reads a `counters` map.
pub fn counters(map: &PerCpuArray<MapData, Counter>) -> Result<PodCounters, RulesError> {
    let total = |dir: u32, v: u8| -> Result<Totals, RulesError> {
        let values = map.get(&counter_index(dir, v), 0).map_err(|source| RulesError::Map {
            op: "read",
            map: "counters",
            source,
        })?;
        Ok(values
            .iter()
            .fold(Totals::default(), |t, c| Totals { packets: t.packets + c.packets, bytes: t.bytes + c.bytes }))
    };
    Ok(PodCounters {
        ingress_allowed: total(direction::INGRESS, verdict::ALLOW)?,
        ingress_denied: total(direction::INGRESS, verdict::DENY)?,
        egress_allowed: total(direction::EGRESS, verdict::ALLOW)?,
        egress_denied: total(direction::EGRESS, verdict::DENY)?,
    })
}
