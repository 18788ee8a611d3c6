//! Names shared by the ELF object, the loader and `na-cli`.
//!
//! Kernel object names hold at most 15 bytes.

/// Program judging traffic into the pod.
pub const PROG_INGRESS: &str = "handle_ingress";
/// Program judging traffic out of the pod.
pub const PROG_EGRESS: &str = "handle_egress";
/// Netfilter program judging a pod's new flows to Service addresses after DNAT.
pub const PROG_AFTER_DNAT: &str = "judge_dnat";

/// A pod's LPM trie of allowed peers for traffic into the pod (inner map).
pub const MAP_INGRESS: &str = "ingress_map";
/// A pod's LPM trie of allowed peers for traffic out of the pod (inner map).
pub const MAP_EGRESS: &str = "egress_map";
/// A pod's connection tracking table (inner map).
pub const MAP_CONNTRACK: &str = "conntrack_map";
/// Maps each pod owns, in the order `na-cli` lists them.
pub const POD_MAPS: [&str; 3] = [MAP_INGRESS, MAP_EGRESS, MAP_CONNTRACK];

/// ifindex -> the pod's isolation state per direction and its slot.
pub const MAP_POD_TABLE: &str = "pod_table";
/// Slot (see `pod_state::PodRecord::slot`) -> the pod's ingress trie.
pub const MAP_INGRESS_TRIES: &str = "ingress_tries";
/// Slot (see `pod_state::PodRecord::slot`) -> the pod's egress trie.
pub const MAP_EGRESS_TRIES: &str = "egress_tries";
/// Slot (see `pod_state::PodRecord::slot`) -> the pod's conntrack table.
pub const MAP_CONNTRACK_TABLES: &str = "conntrack_maps";
/// Verdicts of first fragments, for the fragments that follow (all pods).
pub const MAP_FRAGMENTS: &str = "frag_map";
/// ifindex -> per-CPU allow/deny packet and byte counters.
pub const MAP_COUNTERS: &str = "counters";
/// Ring buffer of verdict events.
pub const MAP_EVENTS: &str = "policy_events";
/// Service frontend -> the Service's number.
pub const MAP_SERVICE_ADDRS: &str = "service_addrs";
/// The node's own IPv6 addresses (see `na_common::node`).
pub const MAP_NODE_ADDRS: &str = "node_addrs";
/// Per CPU: the packet `handle_egress` left to `judge_dnat`.
pub const MAP_DNAT_PENDING: &str = "dnat_pending";
/// Whether `judge_dnat` is linked, and the kernel offsets it reads with.
pub const MAP_DNAT_HOOK: &str = "dnat_hook";
/// aya-log's ring of kernel log records.
pub const MAP_LOGS: &str = "AYA_LOGS";
/// aya-log's load-time level global (0 off, 1 error .. 5 trace).
pub const GLOBAL_LOG_LEVEL: &str = "AYA_LOG_LEVEL";

/// Maps of the node's one program pair, pinned once and shared by every pod.
pub const GLOBAL_MAPS: [&str; 12] = [
    MAP_POD_TABLE,
    MAP_INGRESS_TRIES,
    MAP_EGRESS_TRIES,
    MAP_CONNTRACK_TABLES,
    MAP_FRAGMENTS,
    MAP_COUNTERS,
    MAP_EVENTS,
    MAP_LOGS,
    MAP_SERVICE_ADDRS,
    MAP_NODE_ADDRS,
    MAP_DNAT_PENDING,
    MAP_DNAT_HOOK,
];
/// The shared maps that are streams, read with `na-cli events`, not dumped.
pub const RING_MAPS: [&str; 2] = [MAP_EVENTS, MAP_LOGS];
