//! Reclaiming conntrack entries of idle flows.
//!
//! The programs already treat an entry idle past its timeout as gone (and
//! remove it instead of refreshing it when a packet arrives), so removing such
//! an entry here never changes a verdict and cannot race a live flow: it only
//! frees the slot before the LRU would have to evict a live one.
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
    let mut map: HashMap<MapData, FlowKey, FlowState> = open_pinned(&layout.map(pod, MAP_CONNTRACK))?;
    let now = ktime_now_ns();
    let expired: Vec<FlowKey> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(key, flow)| {
            now.saturating_sub(flow.last_seen_ns) > timeouts.idle_timeout_ns(key.protocol, flow.tcp_state)
        })
        .map(|(key, _)| key)
        .collect();
    let mut removed = 0;
    for key in expired {
        // Gone already (the program expired it, or the LRU evicted it) is fine.
        if map.remove(&key).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Now on the clock of `bpf_ktime_get_ns` (CLOCK_MONOTONIC), which stamps
/// conntrack entries.
pub fn ktime_now_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map(|t| Duration::from(t).as_nanos() as u64).unwrap_or(0)
}
