//! What the reconciler needs of the node: its datapath (each pod's maps and
//! attachments) and its links. The agent's is the kernel's ([`Datapath`]);
//! the reconciler's own tests use a recording fake.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use na_policy::PodRules;

use crate::{
    datapath::{Datapath, DatapathError, Frontend, PodAddrs, PodMaps, RulesError, inventory::InventoryError},
    pod_id::PodId,
};

pub trait Dataplane: Sync {
    /// An attached pod's handle, for writing its rules.
    type Pod: PodProgram + Send;

    /// Gives `pod` its maps under link `ifname` and attaches the programs
    /// there, returning once its `rules` hold.
    fn attach_pod(
        &self,
        pod: &PodId,
        ifname: &str,
        addrs: PodAddrs,
        rules: &PodRules,
    ) -> Result<Self::Pod, DatapathError>;

    /// Whether `pod` is enforced on link `ifindex`: the programs on both
    /// hooks, and the link's record leading to the pod's own maps.
    fn is_enforcing(&self, pod: &PodId, ifindex: u32) -> Result<bool, DatapathError>;

    /// Removes `pod`'s attachments (from `ifname`, if it still exists) and
    /// all its state.
    fn detach_pod(&self, pod: &PodId, ifname: Option<&str>) -> Result<(), DatapathError>;

    /// Makes the node's Service frontends these.
    fn set_services(&self, frontends: &BTreeMap<Frontend, u32>) -> Result<usize, DatapathError>;

    /// Pods with state left from before (an earlier agent's).
    fn pinned_pods(&self) -> Result<BTreeSet<PodId>, InventoryError>;

    /// Removes programs of versions other than this agent's.
    fn remove_stale_programs(&self) -> Result<usize, DatapathError>;

    /// The index of link `name`, if it exists.
    fn link_index(&self, name: &str) -> Option<u32>;

    /// The link of the host route to `ip`, if there is one.
    fn link_by_route(&self, ip: IpAddr) -> Option<String>;

    /// The addresses host routes lead to through link `name`.
    fn routed_through(&self, name: &str) -> Vec<IpAddr>;
}

/// An attached pod's rules, as the reconciler writes them.
pub trait PodProgram {
    /// The link the pod's state is keyed by.
    fn ifindex(&self) -> u32;
    /// Addresses the next [`Self::apply`] writes.
    fn set_addrs(&mut self, addrs: PodAddrs);
    fn apply(&mut self, rules: &PodRules) -> Result<(), RulesError>;
}

impl Dataplane for Datapath {
    type Pod = PodMaps;

    fn attach_pod(
        &self,
        pod: &PodId,
        ifname: &str,
        addrs: PodAddrs,
        rules: &PodRules,
    ) -> Result<PodMaps, DatapathError> {
        Datapath::attach_pod(self, pod, ifname, addrs, rules)
    }

    fn is_enforcing(&self, pod: &PodId, ifindex: u32) -> Result<bool, DatapathError> {
        Datapath::is_enforcing(self, pod, ifindex)
    }

    fn detach_pod(&self, pod: &PodId, ifname: Option<&str>) -> Result<(), DatapathError> {
        Datapath::detach_pod(self, pod, ifname)
    }

    fn set_services(&self, frontends: &BTreeMap<Frontend, u32>) -> Result<usize, DatapathError> {
        Datapath::set_services(self, frontends)
    }

    fn pinned_pods(&self) -> Result<BTreeSet<PodId>, InventoryError> {
        crate::datapath::inventory::pinned_pods(self.layout())
    }

    fn remove_stale_programs(&self) -> Result<usize, DatapathError> {
        Datapath::remove_stale_programs(self)
    }

    fn link_index(&self, name: &str) -> Option<u32> {
        nix::net::if_::if_nametoindex(name).ok()
    }

    fn link_by_route(&self, ip: IpAddr) -> Option<String> {
        crate::veth::by_route(ip)
    }

    fn routed_through(&self, name: &str) -> Vec<IpAddr> {
        crate::veth::routed_through(name)
    }
}

impl PodProgram for PodMaps {
    fn ifindex(&self) -> u32 {
        PodMaps::ifindex(self)
    }

    fn set_addrs(&mut self, addrs: PodAddrs) {
        PodMaps::set_addrs(self, addrs);
    }

    fn apply(&mut self, rules: &PodRules) -> Result<(), RulesError> {
        PodMaps::apply(self, rules)
    }
}
