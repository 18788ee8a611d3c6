//! How a pod state and its trie decide an untracked packet.
//!
//! The programs run this on every new flow and `na-cli trace` runs it on the
//! live maps, so an operator's answer comes from the very code that judges
//! the packet, not from a second implementation that could drift.
use core::borrow::Borrow;

use crate::{
    events::tier,
    pod_state::{self, PodState},
    policy::{LpmKeyData, POLICY_ID_NONE, RuleSet},
};

/// The verdict for one packet and what made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// [`tier`] that decided.
    pub tier: u8,
    /// Rule that allowed the packet, [`POLICY_ID_NONE`] otherwise.
    pub policy_id: u32,
}

/// What the rules are asked about a packet.
#[derive(Clone, Copy, Debug)]
pub struct Query {
    pub family: u8,
    /// The other end: the source for ingress, the destination for egress.
    pub peer: crate::Addr,
    pub protocol: u8,
    /// `None` for packets whose port cannot be trusted or that have none.
    pub port: Option<u16>,
}

/// Decides `query` under `state`. `lookup` is the trie's longest-prefix
/// match for a key and full prefix length.
#[inline(always)]
pub fn decide<R: Borrow<RuleSet>>(
    state: &PodState,
    query: &Query,
    lookup: impl FnOnce(LpmKeyData, u32) -> Option<R>,
) -> Decision {
    let mode = state.mode();
    if mode == pod_state::DEFAULT_ALLOW {
        return Decision { allowed: true, tier: tier::DEFAULT_ALLOW, policy_id: POLICY_ID_NONE };
    }
    let tier = if mode == pod_state::POLICIES_APPLIED { tier::NETWORK_POLICY } else { tier::DEFAULT_DENY };
    let (data, prefix_len) = LpmKeyData::new(state.active_set(), query.family, query.peer.0, 128);
    let policy_id = lookup(data, prefix_len)
        .and_then(|rules| rules.borrow().find(query.protocol, query.port).map(|rule| rule.policy_id));
    match policy_id {
        Some(policy_id) => Decision { allowed: true, tier, policy_id },
        None => Decision { allowed: false, tier, policy_id: POLICY_ID_NONE },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        family,
        policy::{PortRule, RuleSet},
        protocol,
    };

    fn query(port: u16) -> Query {
        Query {
            family: family::IPV4,
            peer: crate::Addr([10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            protocol: protocol::TCP,
            port: Some(port),
        }
    }

    fn rules() -> RuleSet {
        let mut set = RuleSet::default();
        set.rules[0] = PortRule::ports(7, protocol::TCP, 80, 81);
        set.count = 1;
        set
    }

    #[test]
    fn modes_and_rules() {
        let open = PodState::new(pod_state::DEFAULT_ALLOW, 0, 1);
        let d = decide(&open, &query(22), |_, _| None::<RuleSet>);
        assert_eq!((d.allowed, d.tier), (true, tier::DEFAULT_ALLOW));

        let applied = PodState::new(pod_state::POLICIES_APPLIED, 1, 1);
        let mut asked = None;
        let d = decide(&applied, &query(81), |key, len| {
            asked = Some((key.set, len));
            Some(rules())
        });
        assert_eq!(d, Decision { allowed: true, tier: tier::NETWORK_POLICY, policy_id: 7 });
        assert_eq!(asked, Some((1, 16 + 128)), "the active set, a host-length key");
        let d = decide(&applied, &query(82), |_, _| Some(rules()));
        assert_eq!(d, Decision { allowed: false, tier: tier::NETWORK_POLICY, policy_id: POLICY_ID_NONE });

        let closed = PodState::new(pod_state::DEFAULT_DENY, 0, 1);
        let d = decide(&closed, &query(80), |_, _| None::<RuleSet>);
        assert_eq!((d.allowed, d.tier), (false, tier::DEFAULT_DENY));
    }
}
