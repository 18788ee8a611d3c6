//! The maps of one pod's program pair (see `na_common::names`) and the
//! load-time settings.
use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use na_common::{
    conntrack::{FlowKey, FlowState, FragKey, MAX_FLOWS, fragments, timeout},
    direction,
    events::{COUNTERS, Counter, RING_BYTES},
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

/// First fragments' verdicts, by datagram: value is the admitting rule id.
#[map(name = "frag_map")]
pub static FRAGMENTS: LruHashMap<FragKey, u32> = LruHashMap::with_max_entries(fragments::MAX_DATAGRAMS, 0);

#[map(name = "counters")]
pub static COUNTER_MAP: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTERS, 0);

/// Shared by every pod: the agent pins it once and points each load at the pin.
#[map(name = "policy_events")]
pub static POLICY_EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

const NS: u64 = 1_000_000_000;

#[unsafe(no_mangle)]
pub static TIMEOUT_TCP_ESTABLISHED_NS: Global<u64> = Global::new(timeout::TCP_ESTABLISHED_SECS * NS);
#[unsafe(no_mangle)]
pub static TIMEOUT_TCP_CLOSING_NS: Global<u64> = Global::new(timeout::TCP_CLOSING_SECS * NS);
#[unsafe(no_mangle)]
pub static TIMEOUT_UDP_NS: Global<u64> = Global::new(timeout::UDP_SECS * NS);
#[unsafe(no_mangle)]
pub static TIMEOUT_OTHER_NS: Global<u64> = Global::new(timeout::OTHER_SECS * NS);
