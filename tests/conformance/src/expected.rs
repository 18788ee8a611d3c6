//! Expected truth tables of the generated cases: `na-policy`'s reference
//! evaluator (its own reading of the NetworkPolicy semantics, sharing no
//! code with the compiler) asked about every pair of pods, on the cluster
//! as the world last published it.
use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use na_harness::{Probe, Proto};
use na_policy::{Direction, reference};

use crate::table::Table;

/// The cluster's objects, as the agent reads them.
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    /// In table order.
    pub pods: Vec<Pod>,
    pub policies: Vec<NetworkPolicy>,
    /// ClusterNetworkPolicy objects (upstream's CRD) as JSON.
    pub cluster_policies: Vec<serde_json::Value>,
}

/// `[from][to]`: whether `from`'s egress and `to`'s ingress both admit
/// `probe` between the pods' addresses `addrs` (table order); `None` on the
/// diagonal, which never crosses the datapath.
pub fn table(cluster: &Cluster, addrs: &[IpAddr], probe: Probe) -> Table {
    let world = reference::World {
        policies: &cluster.policies,
        cluster_policies: &cluster.cluster_policies,
        pods: &cluster.pods,
        namespaces: &cluster.namespaces,
        node_ips: &[],
        strict: false,
        audit: false,
    };
    let protocol = match probe.proto {
        Proto::Tcp => na_common::protocol::TCP,
        Proto::Udp => na_common::protocol::UDP,
    };
    let port = Some(probe.port);
    (0..cluster.pods.len())
        .map(|i| {
            (0..cluster.pods.len())
                .map(|j| {
                    (i != j).then(|| {
                        let (from, to) = (&cluster.pods[i], &cluster.pods[j]);
                        reference::allows(&world, from, Direction::Egress, addrs[j], protocol, port)
                            && reference::allows(&world, to, Direction::Ingress, addrs[i], protocol, port)
                    })
                })
                .collect()
        })
        .collect()
}
