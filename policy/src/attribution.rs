//! Stable ids for "which rule of which policy allowed this", carried in every
//! datapath entry and event.
use std::collections::{BTreeMap, HashMap};

use na_common::policy::POLICY_ID_HOST;

use crate::{
    cluster::ObjectRef,
    cluster_policy::{Action, Tier},
    output::Direction,
};

/// The rule an attribution id stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attribution {
    /// A NetworkPolicy's `namespace/name`; a ClusterNetworkPolicy's name
    /// ([`ObjectRef::cluster`]).
    pub policy: ObjectRef,
    pub direction: Direction,
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub rule: usize,
    /// For a ClusterNetworkPolicy rule, what it is: a rule whose action,
    /// tier or priority changes is a new rule with a new id.
    pub cluster: Option<ClusterRuleRef>,
}

impl Attribution {
    pub fn network_policy(policy: ObjectRef, direction: Direction, rule: usize) -> Self {
        Self { policy, direction, rule, cluster: None }
    }
}

/// A ClusterNetworkPolicy rule's place and action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterRuleRef {
    pub tier: Tier,
    pub priority: u16,
    pub action: Action,
}

/// Hands out ids; an id, once given, always means the same rule, and a
/// pruned id is never given again by this table (an event read late names
/// no rule rather than the wrong one). A new agent starts a new table: what
/// it adopts (conntrack entries) may carry its predecessor's ids.
#[derive(Debug, Default)]
pub struct Attributions {
    ids: HashMap<Attribution, u32>,
    by_id: BTreeMap<u32, Attribution>,
    /// The last id given.
    last: u32,
    /// Changes whenever an id is given or pruned.
    version: u64,
}

impl Attributions {
    pub fn id(&mut self, a: Attribution) -> u32 {
        if let Some(id) = self.ids.get(&a) {
            return *id;
        }
        // Ids start at 1 (0 means "no rule"); the host id (the last) is
        // reserved. Four billion rules seen by one agent are out of reach.
        let id = self.last.checked_add(1).filter(|id| *id != POLICY_ID_HOST).expect("attribution ids left");
        self.last = id;
        self.version += 1;
        self.by_id.insert(id, a.clone());
        self.ids.insert(a, id);
        id
    }

    pub fn get(&self, id: u32) -> Option<&Attribution> {
        self.by_id.get(&id)
    }

    /// Every id held, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Attribution)> {
        self.by_id.iter().map(|(id, a)| (*id, a))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Changes whenever the set of ids does: readers that keep a copy of the
    /// table rebuild it only then.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Forgets the ids `keep` refuses; returns how many went.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u32, &Attribution) -> bool) -> usize {
        let before = self.by_id.len();
        self.by_id.retain(|id, a| keep(*id, a));
        let gone = before - self.by_id.len();
        if gone > 0 {
            self.ids.retain(|_, id| self.by_id.contains_key(id));
            self.version += 1;
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_start_at_one() {
        let mut t = Attributions::default();
        let a = Attribution::network_policy(ObjectRef::new("ns", "p"), Direction::Ingress, 0);
        let b = Attribution { rule: 1, ..a.clone() };
        assert_eq!(t.id(a.clone()), 1);
        assert_eq!(t.id(b.clone()), 2);
        assert_eq!(t.id(a.clone()), 1);
        assert_eq!(t.get(2), Some(&b));
        assert_eq!(t.get(0), None);
    }

    #[test]
    fn pruned_ids_are_never_given_again() {
        let mut t = Attributions::default();
        let rule = |name: &str, rule| Attribution::network_policy(ObjectRef::new("ns", name), Direction::Egress, rule);
        let (a, b) = (t.id(rule("a", 0)), t.id(rule("b", 0)));
        let version = t.version();
        assert_eq!(t.retain(|_, at| at.policy.name != "a"), 1);
        assert_ne!(t.version(), version, "readers see the change");
        assert_eq!(t.get(a), None);
        assert_eq!(t.iter().map(|(id, _)| id).collect::<Vec<_>>(), vec![b]);
        let again = t.id(rule("a", 0));
        assert!(again > b, "the rule comes back under a new id, not {a} (events read late could name it)");
        assert_eq!(t.retain(|_, _| true), 0);
        assert_eq!(t.len(), 2);
    }
}
