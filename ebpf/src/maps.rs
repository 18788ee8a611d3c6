//! The maps of one pod's program pair (see `na_common::names`).
use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, RingBuf},
};
use na_common::{
    conntrack::{FlowKey, FlowState, MAX_FLOWS},
    direction,
    events::RING_BYTES,
    pod_state::PodState,
    policy::{LpmKeyData, MAX_PREFIXES, RuleSet},
};

#[map(name = "ingress_map")]
pub static INGRESS_MAP: LpmTrie<LpmKeyData, RuleSet> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

#[map(name = "egress_map")]
pub static EGRESS_MAP: LpmTrie<LpmKeyData, RuleSet> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

#[map(name = "pod_state_map")]
pub static POD_STATE: Array<PodState> = Array::with_max_entries(direction::COUNT, 0);

#[map(name = "conntrack_map")]
pub static CONNTRACK: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Shared by every pod: the agent pins it once and points each load at the pin.
#[map(name = "policy_events")]
pub static POLICY_EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
