//! The node's maps (see `na_common::names`) and the load-time settings.
//!
//! One program pair serves every pod: the pod is found by the ifindex of the
//! host veth the packet is on, in `pod_table`, and its own tries and
//! conntrack table are inner maps of the `*_tries` / `conntrack_maps` arrays
//! of maps, at the slot its record names (an array lookup the kernel
//! inlines, where a hash costs a call and a hash of the key). The pod table
//! is not preallocated, and inner maps are freed only after every program
//! run that could still see them (RCU), so a replaced or removed entry never
//! changes under a running program.
use aya_ebpf::{
    Global,
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{self, ArrayOfMaps},
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use na_common::{
    Addr,
    conntrack::{DEFAULT_FLOWS_PER_POD, FlowKey, FlowState, FragKey, fragments, timeout},
    events::RING_BYTES,
    node::MAX_NODE_ADDRS,
    pod_state::{MAX_PODS, PodCounterSlots, PodRecord},
    policy::{LpmKeyData, MAX_PREFIXES, RuleSet},
    service::{DnatHook, DnatPending, MAX_SERVICE_ADDRS, ServiceEntry, ServiceKey},
};

const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;
const PODS: usize = MAX_PODS as usize;

/// A pod's trie; the template every inner trie must match (type, key and
/// value size, flags).
pub type Trie = btf_maps::LpmTrie<LpmKeyData, RuleSet, { MAX_PREFIXES as usize }, NO_PREALLOC>;
/// A pod's conntrack table; its capacity is the pod's, set by the agent.
pub type Conntrack = btf_maps::HashMap<FlowKey, FlowState, { DEFAULT_FLOWS_PER_POD as usize }, NO_PREALLOC>;

#[map(name = "pod_table")]
pub static POD_TABLE: HashMap<u32, PodRecord> = HashMap::with_max_entries(MAX_PODS, BPF_F_NO_PREALLOC);

#[btf_map(name = "ingress_tries")]
pub static INGRESS_TRIES: ArrayOfMaps<Trie, PODS> = ArrayOfMaps::new();

#[btf_map(name = "egress_tries")]
pub static EGRESS_TRIES: ArrayOfMaps<Trie, PODS> = ArrayOfMaps::new();

#[btf_map(name = "conntrack_maps")]
pub static CONNTRACK_TABLES: ArrayOfMaps<Conntrack, PODS> = ArrayOfMaps::new();

/// First fragments' verdicts, by datagram and veth: value is the admitting rule id.
#[map(name = "frag_map")]
pub static FRAGMENTS: LruHashMap<FragKey, u32> = LruHashMap::with_max_entries(fragments::MAX_DATAGRAMS, 0);

/// Per pod; the agent creates each pod's entry, the programs only add to it.
#[map(name = "counters")]
pub static COUNTER_MAP: PerCpuHashMap<u32, PodCounterSlots> =
    PerCpuHashMap::with_max_entries(MAX_PODS + 1, BPF_F_NO_PREALLOC);

#[map(name = "policy_events")]
pub static POLICY_EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Service frontends (see `na_common::service`).
#[map(name = "service_addrs")]
pub static SERVICE_ADDRS: HashMap<ServiceKey, ServiceEntry> =
    HashMap::with_max_entries(MAX_SERVICE_ADDRS, BPF_F_NO_PREALLOC);

/// The node's own IPv6 addresses (see `na_common::node`).
#[map(name = "node_addrs")]
pub static NODE_ADDRS: HashMap<Addr, u8> = HashMap::with_max_entries(MAX_NODE_ADDRS, BPF_F_NO_PREALLOC);

#[map(name = "dnat_pending")]
pub static DNAT_PENDING: PerCpuArray<DnatPending> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "dnat_hook")]
pub static DNAT_HOOK: Array<DnatHook> = Array::with_max_entries(1, 0);

const NS: u64 = 1_000_000_000;

#[unsafe(no_mangle)]
pub static TIMEOUT_TCP_ESTABLISHED_NS: Global<u64> = Global::new(timeout::TCP_ESTABLISHED_SECS * NS);
#[unsafe(no_mangle)]
pub static TIMEOUT_TCP_CLOSING_NS: Global<u64> = Global::new(timeout::TCP_CLOSING_SECS * NS);
#[unsafe(no_mangle)]
pub static TIMEOUT_TCP_CLOSED_NS: Global<u64> = Global::new(timeout::TCP_CLOSED_SECS * NS);
#[unsafe(no_mangle)]
pub static TIMEOUT_UDP_NS: Global<u64> = Global::new(timeout::UDP_SECS * NS);
#[unsafe(no_mangle)]
pub static TIMEOUT_UNREPLIED_NS: Global<u64> = Global::new(timeout::UNREPLIED_SECS * NS);
#[unsafe(no_mangle)]
pub static TIMEOUT_OTHER_NS: Global<u64> = Global::new(timeout::OTHER_SECS * NS);
#[unsafe(no_mangle)]
pub static TIMEOUT_REVOKED_NS: Global<u64> = Global::new(timeout::REVOKED_SECS * NS);
/// `na_common::pod_state::unknown_pod`: 1 in strict mode.
#[unsafe(no_mangle)]
pub static UNKNOWN_POD_DENY: Global<u8> = Global::new(0);
