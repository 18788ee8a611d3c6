//! How a pod state and its trie decide an untracked packet.
//!
//! The programs run this on every new flow and `na-cli trace` runs it on the
//! live maps, so an operator's answer comes from the very code that judges
//! the packet, not from a second implementation that could drift.
use core::borrow::Borrow;

use crate::{
    events::{tier, verdict},
    pod_state::{self, PodState},
    policy::{LpmKeyData, POLICY_ID_NONE, RuleSet, action},
};

/// The verdict for one packet and what made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// [`tier`] that decided.
    pub tier: u8,
    /// Rule that decided (allowed, or denied in a cluster tier),
    /// [`POLICY_ID_NONE`] when no rule did.
    pub policy_id: u32,
    /// Allowed only because the direction is audited: the NetworkPolicy tier
    /// denied it.
    pub audited: bool,
}

impl Decision {
    const fn new(allowed: bool, tier: u8, policy_id: u32) -> Self {
        Self { allowed, tier, policy_id, audited: false }
    }

    /// A drop by `tier` without a rule (an unparsable or spoofed packet, a
    /// revoked flow).
    pub const fn denied(tier: u8) -> Self {
        Self::new(false, tier, POLICY_ID_NONE)
    }

    /// The [`verdict`] events report.
    #[inline(always)]
    pub const fn verdict(&self) -> u8 {
        if self.audited {
            verdict::AUDIT
        } else if self.allowed {
            verdict::ALLOW
        } else {
            verdict::DENY
        }
    }
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
///
/// The entry's rules are scanned in order ([`RuleSet::find`]); when none
/// decides, the mode does: [`pod_state::CLUSTER_POLICIES`] passes (no
/// NetworkPolicy isolates the pod), the isolated modes deny.
#[inline(always)]
pub fn decide<R: Borrow<RuleSet>>(
    state: &PodState,
    query: &Query,
    lookup: impl FnOnce(LpmKeyData, u32) -> Option<R>,
) -> Decision {
    let mode = state.mode();
    if mode == pod_state::DEFAULT_ALLOW {
        return Decision::new(true, tier::DEFAULT_ALLOW, POLICY_ID_NONE);
    }
    let (data, prefix_len) = LpmKeyData::new(state.active_set(), query.family, query.peer.0, 128);
    let found = lookup(data, prefix_len)
        .and_then(|rules| rules.borrow().find(query.protocol, query.port).map(|rule| (rule.action, rule.policy_id)));
    match found {
        Some((rule_action, policy_id)) if rule_action != action::ALLOW => {
            Decision::new(action::allows(rule_action), action::tier(rule_action), policy_id)
        }
        Some((_, policy_id)) => Decision::new(true, isolated_tier(mode), policy_id),
        None if mode == pod_state::CLUSTER_POLICIES => Decision::new(true, tier::DEFAULT_ALLOW, POLICY_ID_NONE),
        None if mode == pod_state::POLICIES_APPLIED && state.audit() => {
            Decision { allowed: true, tier: tier::NETWORK_POLICY, policy_id: POLICY_ID_NONE, audited: true }
        }
        None => Decision::new(false, isolated_tier(mode), POLICY_ID_NONE),
    }
}

/// The tier a plain allow rule's verdict, or an isolated mode's denial
/// without a rule, is reported under.
#[inline(always)]
fn isolated_tier(mode: u8) -> u8 {
    if mode == pod_state::DEFAULT_DENY { tier::DEFAULT_DENY } else { tier::NETWORK_POLICY }
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
        assert_eq!(d, Decision::new(true, tier::NETWORK_POLICY, 7));
        assert_eq!(asked, Some((1, 16 + 128)), "the active set, a host-length key");
        let d = decide(&applied, &query(82), |_, _| Some(rules()));
        assert_eq!(d, Decision::new(false, tier::NETWORK_POLICY, POLICY_ID_NONE));
        let audited = applied.with_audit(true);
        let d = decide(&audited, &query(82), |_, _| Some(rules()));
        assert_eq!((d.allowed, d.audited, d.tier), (true, true, tier::NETWORK_POLICY), "audit passes what NP denies");

        let closed = PodState::new(pod_state::DEFAULT_DENY, 0, 1);
        let d = decide(&closed, &query(80), |_, _| None::<RuleSet>);
        assert_eq!((d.allowed, d.tier), (false, tier::DEFAULT_DENY));
    }

    /// Admin rules come before NetworkPolicy's: Accept and Deny decide, Pass
    /// skips the admin tier's later rules; baseline rules decide only what
    /// NetworkPolicy leaves open, and in a direction no NetworkPolicy
    /// isolates what no rule decides passes.
    #[test]
    fn tiers_in_order() {
        let mut set = RuleSet::default();
        let ordered = [
            PortRule::ports(1, protocol::TCP, 80, 80).with_action(action::ADMIN_PASS),
            PortRule::ports(2, protocol::TCP, 80, 81).with_action(action::ADMIN_DENY),
            PortRule::ports(3, protocol::TCP, 79, 79).with_action(action::ADMIN_ACCEPT),
            PortRule::ports(4, protocol::TCP, 80, 80),
            PortRule::any(5).with_action(action::BASELINE_DENY),
        ];
        set.rules[..ordered.len()].copy_from_slice(&ordered);
        set.count = ordered.len() as u32;
        let cluster = PodState::new(pod_state::CLUSTER_POLICIES, 0, 1);
        let applied = PodState::new(pod_state::POLICIES_APPLIED, 0, 1);
        let on = |state: &PodState, port| decide(state, &query(port), |_, _| Some(set));
        assert_eq!(on(&cluster, 80), Decision::new(true, tier::NETWORK_POLICY, 4), "passed, then allowed by NP");
        assert_eq!(on(&cluster, 81), Decision::new(false, tier::ADMIN, 2));
        assert_eq!(on(&cluster, 79), Decision::new(true, tier::ADMIN, 3));
        assert_eq!(on(&cluster, 82), Decision::new(false, tier::BASELINE, 5));
        let mut baseline_accept = set;
        baseline_accept.count = 3;
        let d = decide(&cluster, &query(82), |_, _| Some(baseline_accept));
        assert_eq!(d, Decision::new(true, tier::DEFAULT_ALLOW, POLICY_ID_NONE), "no rule decides: the mode does");
        let d = decide(&applied, &query(82), |_, _| Some(baseline_accept));
        assert_eq!(d, Decision::new(false, tier::NETWORK_POLICY, POLICY_ID_NONE));
        let d = decide(&applied.with_audit(true), &query(81), |_, _| Some(set));
        assert_eq!(d, Decision::new(false, tier::ADMIN, 2), "audit never opens an admin Deny");
    }
}
