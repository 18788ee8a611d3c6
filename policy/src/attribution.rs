//! Stable ids for "which rule of which policy allowed this", carried in every
//! datapath entry and event.
use std::collections::HashMap;

use na_common::policy::POLICY_ID_HOST;

use crate::{cluster::ObjectRef, output::Direction};

/// The rule an attribution id stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attribution {
    pub policy: ObjectRef,
    pub direction: Direction,
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub rule: usize,
}

/// Hands out ids; an id, once given, always means the same rule.
#[derive(Debug, Default)]
pub struct Attributions {
    ids: HashMap<Attribution, u32>,
    by_id: Vec<Attribution>,
}

impl Attributions {
    pub fn id(&mut self, a: Attribution) -> u32 {
        if let Some(id) = self.ids.get(&a) {
            return *id;
        }
        // Ids start at 1 (0 means "no rule"); the host id is reserved.
        let id = u32::try_from(self.by_id.len() + 1).ok().filter(|id| *id != POLICY_ID_HOST).expect("ids left");
        self.by_id.push(a.clone());
        self.ids.insert(a, id);
        id
    }

    pub fn get(&self, id: u32) -> Option<&Attribution> {
        self.by_id.get(usize::try_from(id).ok()?.checked_sub(1)?)
    }

    /// Every id given so far, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Attribution)> {
        self.by_id.iter().enumerate().map(|(i, a)| (i as u32 + 1, a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_start_at_one() {
        let mut t = Attributions::default();
        let a = Attribution { policy: ObjectRef::new("ns", "p"), direction: Direction::Ingress, rule: 0 };
        let b = Attribution { rule: 1, ..a.clone() };
        assert_eq!(t.id(a.clone()), 1);
        assert_eq!(t.id(b.clone()), 2);
        assert_eq!(t.id(a.clone()), 1);
        assert_eq!(t.get(2), Some(&b));
        assert_eq!(t.get(0), None);
    }
}
