//! Names shared by the ELF object, the loader and `na-cli`.

/// Program judging traffic into the pod.
pub const PROG_INGRESS: &str = "handle_ingress";
/// Program judging traffic out of the pod.
pub const PROG_EGRESS: &str = "handle_egress";

/// Per-pod LPM trie of allowed peers for traffic into the pod.
pub const MAP_INGRESS: &str = "ingress_map";
/// Per-pod LPM trie of allowed peers for traffic out of the pod.
pub const MAP_EGRESS: &str = "egress_map";
/// Per-pod isolation state, one entry per direction.
pub const MAP_POD_STATE: &str = "pod_state_map";
/// Per-pod connection tracking table.
pub const MAP_CONNTRACK: &str = "conntrack_map";
/// Per-pod verdicts of first fragments, for the fragments that follow.
pub const MAP_FRAGMENTS: &str = "frag_map";
/// Per-pod, per-CPU allow/deny packet and byte counters.
pub const MAP_COUNTERS: &str = "counters";
/// Ring buffer shared by every pod's programs, carrying verdict events.
pub const MAP_EVENTS: &str = "policy_events";

/// Maps each pod owns, in the order `na-cli` lists them.
pub const POD_MAPS: [&str; 6] = [MAP_INGRESS, MAP_EGRESS, MAP_POD_STATE, MAP_CONNTRACK, MAP_FRAGMENTS, MAP_COUNTERS];
/// aya-log's ring of kernel log records, shared like the events.
pub const MAP_LOGS: &str = "AYA_LOGS";
/// aya-log's load-time level global (0 off, 1 error .. 5 trace).
pub const GLOBAL_LOG_LEVEL: &str = "AYA_LOG_LEVEL";

/// Maps every pod's programs share.
pub const GLOBAL_MAPS: [&str; 2] = [MAP_EVENTS, MAP_LOGS];
