//! What the compiler produces for one pod: the datapath's desired state.
use std::{collections::BTreeMap, fmt};

use ipnet::IpNet;
use na_common::policy::PortRule;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a direction is isolated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Not isolated: everything passes.
    #[default]
    DefaultAllow,
    /// Isolated before the pod's policies are known (strict mode): only the
    /// entries (the node's addresses) pass.
    DefaultDeny,
    /// Isolated by policies: what the entries' rules allow passes, nothing else.
    PoliciesApplied,
    /// Not isolated by a NetworkPolicy, but ClusterNetworkPolicy rules
    /// apply: what the entries' rules deny is dropped, the rest passes.
    ClusterPolicies,
}

/// One direction: its mode and, per peer prefix, the rules (in order of
/// evaluation) that the longest matching prefix applies. Where no rule
/// decides, the mode does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionRules {
    pub mode: Mode,
    pub entries: BTreeMap<IpNet, Vec<PortRule>>,
    /// NetworkPolicy denials are reported, not enforced (the pod's namespace
    /// is audited).
    pub audit: bool,
}

/// Both directions of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRules {
    pub ingress: DirectionRules,
    pub egress: DirectionRules,
}

impl PodRules {
    pub fn direction(&self, dir: Direction) -> &DirectionRules {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub fn direction_mut(&mut self, dir: Direction) -> &mut DirectionRules {
        match dir {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }
}
