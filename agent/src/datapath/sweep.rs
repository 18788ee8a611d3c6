//! Reclaiming conntrack entries of idle flows.
//!
//! The programs already treat an entry idle past its timeout as gone: a packet
//! that finds one removes it and, if the rules admit the packet, tracks the
//! flow again as a new entry under the same key. So removing an expired entry
//! never changes a verdict, but a key the sweep read as expired may hold such
//! a new, live entry by the time it is removed: the sweep removes an entry
//! only if it still holds exactly what was read.
use std::time::Duration;

use aya::maps::{HashMap, MapData};
use na_common::{
    conntrack::{FlowKey, FlowState},
    names::MAP_CONNTRACK,
};
use nix::time::{ClockId, clock_gettime};

use super::{
    Timeouts,
    rules::{RulesError, open_pinned},
};
use crate::{bpffs::PinLayout, pod_id::PodId};

/// Removes `pod`'s expired flows; returns how many.
pub fn sweep(layout: &PinLayout, pod: &PodId, timeouts: &Timeouts) -> Result<usize, RulesError> {
    Ok(Expired::find(layout, pod, timeouts)?.remove())
}

/// A pod's entries that were idle past their timeout when read, as read:
/// the two halves of a sweep, apart so that what happens between them can
/// be tested.
pub struct Expired {
    table: HashMap<MapData, FlowKey, FlowState>,
    flows: Vec<(FlowKey, FlowState)>,
}

impl Expired {
    pub fn find(layout: &PinLayout, pod: &PodId, timeouts: &Timeouts) -> Result<Self, RulesError> {
        let table: HashMap<MapData, FlowKey, FlowState> = open_pinned(&layout.map(pod, MAP_CONNTRACK))?;
        let now = ktime_now_ns();
        let flows = table
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, flow)| now.saturating_sub(flow.last_seen_ns) > timeouts.idle_timeout_ns(key.protocol, flow))
            .collect();
        Ok(Self { table, flows })
    }

    pub fn flows(&self) -> &[(FlowKey, FlowState)] {
        &self.flows
    }

    /// Removes each entry that still holds what was read; returns how many.
    /// The kernel has no compare-and-delete: an entry made again in the
    /// instant between the check and the removal is still lost, and its
    /// flow's next packet is judged by the rules as a new flow's would be.
    pub fn remove(mut self) -> usize {
        let mut removed = 0;
        for (key, read) in &self.flows {
            // Gone already (the program expired it) is fine.
            if self.table.get(key, 0).is_ok_and(|now| now == *read) && self.table.remove(key).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// Now on the clock that stamps conntrack entries (the programs read its
/// coarse form, `bpf_ktime_get_coarse_ns`, at most a tick behind).
pub fn ktime_now_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map(|t| Duration::from(t).as_nanos() as u64).unwrap_or(0)
}
