//! The node's own IPv6 addresses (`node_addrs`): neighbour discovery with
//! them is between a pod and its host, as with the host's link-local
//! address. A host veth may carry a global address (CNI `ptp` puts the pod's
//! gateway address on it): the host then solicits the pod from that address,
//! and the pod's advertisements and reachability probes go back to it.

/// Addresses the node's table holds (not preallocated: kube-proxy in IPVS
/// mode puts every IPv6 ClusterIP on the node too).
pub const MAX_NODE_ADDRS: u32 = 65_536;
