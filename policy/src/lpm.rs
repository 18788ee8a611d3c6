//! From "these prefixes (minus these excepts) may use these ports" to LPM
//! entries whose longest match always yields the exact union, and back: the
//! emulator that judges a packet from the entries as the kernel does.
//!
//! Why it is exact: every grant's prefix and every except is a key. For an
//! address whose longest matching key is `K`, another key contains the
//! address iff it contains `K` (prefixes nest or are disjoint). So the grants
//! covering the address are exactly those whose prefix contains `K` and none
//! of whose excepts contains `K`; the entry of `K` holds their union.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use na_common::{
    decision::{self, Decision, Query},
    pod_state::{self, PodState},
    policy::{PROTO_ANY, PortRule, RuleSet, action},
};

use crate::output::{DirectionRules, Mode};

/// `rules` apply to addresses `prefix` minus `except`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub prefix: IpNet,
    pub except: Vec<IpNet>,
    /// Where these rules stand in the order of evaluation (lower first):
    /// the node's, then the admin tier by priority, NetworkPolicy, the
    /// baseline tier. Grants of equal rank are a union.
    pub rank: u64,
    /// Shared: one peer pod's rules go to each of its addresses.
    pub rules: Arc<[PortRule]>,
}

impl Grant {
    /// Grant of NetworkPolicy rank.
    pub fn allow(prefix: IpNet, except: Vec<IpNet>, rules: Arc<[PortRule]>) -> Self {
        Self { prefix, except, rank: rank::NETWORK_POLICY, rules }
    }
}

/// [`Grant::rank`]s.
pub mod rank {
    /// The node's own addresses (kubelet probes): before every tier.
    pub const NODE: u64 = 0;
    /// The admin tier's `n`th rule in order of evaluation.
    pub const fn admin(n: usize) -> u64 {
        1 + n as u64
    }
    /// Every NetworkPolicy rule: a union, after the admin tier.
    pub const NETWORK_POLICY: u64 = 1 << 40;
    /// The baseline tier's `n`th rule in order of evaluation.
    pub const fn baseline(n: usize) -> u64 {
        NETWORK_POLICY + 1 + n as u64
    }
}

/// The entries for `grants`, without entries that change no lookup.
pub fn build(grants: &[Grant]) -> BTreeMap<IpNet, Vec<PortRule>> {
    let mut by_prefix: HashMap<IpNet, Vec<&Grant>> = HashMap::new();
    for g in grants {
        by_prefix.entry(g.prefix).or_default().push(g);
    }
    let keys: std::collections::BTreeSet<IpNet> =
        grants.iter().flat_map(|g| std::iter::once(g.prefix).chain(g.except.iter().copied())).collect();
    // Only lengths that occur can hold an enclosing key: a handful, not 129.
    let lens = PrefixLens::of(keys.iter());
    let mut entries: BTreeMap<IpNet, Vec<PortRule>> = BTreeMap::new();
    for key in &keys {
        let mut ranked: Vec<&Grant> = Vec::new();
        for anc in lens.ancestors(key) {
            for g in by_prefix.get(&anc).into_iter().flatten() {
                if !g.except.iter().any(|e| e.contains(key)) {
                    ranked.push(g);
                }
            }
        }
        ranked.sort_by_key(|g| g.rank);
        entries.insert(*key, normalize(ranked.iter().flat_map(|g| g.rules.iter().copied()).collect()));
    }
    // An entry equal to its nearest enclosing entry (or empty with none: a miss
    // denies too) changes no verdict; leaving it out saves map space.
    let redundant: Vec<IpNet> = entries
        .iter()
        .filter(|(key, rules)| {
            let parent = lens.ancestors(key).skip(1).find_map(|a| entries.get(&a));
            match parent {
                Some(p) => p == *rules,
                None => rules.is_empty(),
            }
        })
        .map(|(k, _)| *k)
        .collect();
    for k in redundant {
        entries.remove(&k);
    }
    entries
}

/// `prefix` and every shorter prefix containing it, longest first.
fn ancestors(prefix: &IpNet) -> impl Iterator<Item = IpNet> + '_ {
    (0..=prefix.prefix_len()).rev().map(move |len| IpNet::new(prefix.addr(), len).expect("shorter length").trunc())
}

/// The prefix lengths present among a set of keys, per family.
struct PrefixLens {
    v4: Vec<u8>,
    v6: Vec<u8>,
}

impl PrefixLens {
    fn of<'a>(keys: impl Iterator<Item = &'a IpNet>) -> Self {
        let (mut v4, mut v6) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
        for k in keys {
            match k {
                IpNet::V4(_) => v4.insert(k.prefix_len()),
                IpNet::V6(_) => v6.insert(k.prefix_len()),
            };
        }
        Self { v4: v4.into_iter().rev().collect(), v6: v6.into_iter().rev().collect() }
    }

    /// Like [`ancestors`], restricted to the lengths present.
    fn ancestors<'a>(&'a self, prefix: &'a IpNet) -> impl Iterator<Item = IpNet> + 'a {
        let lens = if matches!(prefix, IpNet::V4(_)) { &self.v4 } else { &self.v6 };
        lens.iter()
            .filter(|len| **len <= prefix.prefix_len())
            .map(|len| IpNet::new(prefix.addr(), *len).expect("shorter length").trunc())
    }
}

/// Rules in order of evaluation, without those that can never decide: each
/// run of one action is a union (sorted, deduplicated, none covered by
/// another; any-protocol wins over the run), and a rule covered by an
/// earlier one that decides (or that passes, for an admin rule) goes.
pub fn normalize(rules: Vec<PortRule>) -> Vec<PortRule> {
    let mut out: Vec<PortRule> = Vec::with_capacity(rules.len());
    let mut rest = rules.as_slice();
    while let Some(first) = rest.first() {
        let run = rest.iter().take_while(|r| r.action == first.action).count();
        for r in union(rest[..run].to_vec()) {
            let shadowed = out.iter().enumerate().any(|(i, k)| k.covers(&r) && shadows(k, &r, &out[..i]));
            if !shadowed {
                out.push(r);
            }
        }
        rest = &rest[run..];
    }
    out
}

/// Whether `k`, after `before`, decides every packet it matches ahead of a
/// later rule `r`: a Pass only skips the admin tier, and an admin rule is
/// itself skipped by packets an earlier Pass matched, so it shadows a rule
/// of another tier only with no Pass before it.
fn shadows(k: &PortRule, r: &PortRule, before: &[PortRule]) -> bool {
    if k.action == action::ADMIN_PASS || action::is_admin(r.action) {
        return k.action != action::ADMIN_PASS || action::is_admin(r.action);
    }
    !action::is_admin(k.action) || !before.iter().any(|p| p.action == action::ADMIN_PASS)
}

/// Sorted, deduplicated rules where none is covered by another; any-protocol
/// wins over everything. Their order does not matter: they share an action.
fn union(mut rules: Vec<PortRule>) -> Vec<PortRule> {
    if rules.len() <= 1 {
        return rules;
    }
    if let Some(any) = rules.iter().filter(|r| r.protocol == PROTO_ANY).min_by_key(|r| r.policy_id) {
        return vec![*any];
    }
    // Widest first within a protocol and start, lowest id first among equals.
    rules.sort_by_key(|r| (r.protocol, r.start_port, std::cmp::Reverse(r.end_port), r.policy_id));
    let mut out: Vec<PortRule> = Vec::with_capacity(rules.len());
    for r in rules {
        let covered = out.iter().any(|k| k.covers(&r));
        if covered {
            continue;
        }
        // Same rule extending the previous one (overlapping or adjacent): merge.
        if let Some(last) = out.last_mut()
            && last.protocol == r.protocol
            && last.policy_id == r.policy_id
            && u32::from(r.start_port) <= u32::from(last.end_port) + 1
        {
            last.end_port = last.end_port.max(r.end_port);
            continue;
        }
        out.push(r);
    }
    out
}

/// The verdict the kernel program gives a packet from/to `peer`: the id of
/// the rule that admits it, `Some(0)` when no rule decides and the direction
/// is open, `None` when it is dropped.
pub fn judge(rules: &DirectionRules, peer: IpAddr, protocol: u8, port: Option<u16>) -> Option<u32> {
    let d = decide(rules, peer, protocol, port);
    d.allowed.then_some(if d.audited { na_common::policy::POLICY_ID_NONE } else { d.policy_id })
}

/// The programs' own decision ([`decision::decide`]) on `rules`, with the
/// trie's longest-prefix match done on the entries.
pub fn decide(rules: &DirectionRules, peer: IpAddr, protocol: u8, port: Option<u16>) -> Decision {
    let mode = match rules.mode {
        Mode::DefaultAllow => pod_state::DEFAULT_ALLOW,
        Mode::DefaultDeny => pod_state::DEFAULT_DENY,
        Mode::PoliciesApplied => pod_state::POLICIES_APPLIED,
        Mode::ClusterPolicies => pod_state::CLUSTER_POLICIES,
    };
    let state = PodState::new(mode, 0, 0).with_audit(rules.audit);
    let (family, addr) = na_common::Addr::of_ip(peer);
    let entry = ancestors(&IpNet::from(peer)).find_map(|p| rules.entries.get(&p));
    let query = Query { family, peer: addr, protocol, port };
    decision::decide(&state, &query, |_, _| {
        entry.map(|rules| {
            let mut set = RuleSet::default();
            let n = rules.len().min(set.rules.len());
            set.rules[..n].copy_from_slice(&rules[..n]);
            set.count = n as u32;
            set
        })
    })
}

#[cfg(test)]
mod tests {
    use na_common::protocol::{TCP, UDP};

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn rules_with(entries: BTreeMap<IpNet, Vec<PortRule>>) -> DirectionRules {
        DirectionRules { mode: Mode::PoliciesApplied, entries, audit: false }
    }

    #[test]
    fn except_only_narrows_its_own_grant() {
        // AWS issue 180: 0/0 port 53 plus 0/0 except 10/8 on 443 must still
        // allow port 53 to 10.x.
        let grants = [
            Grant::allow(net("0.0.0.0/0"), vec![], vec![PortRule::ports(1, UDP, 53, 53)].into()),
            Grant::allow(net("0.0.0.0/0"), vec![net("10.0.0.0/8")], vec![PortRule::ports(2, TCP, 443, 443)].into()),
        ];
        let r = rules_with(build(&grants));
        let ten: IpAddr = "10.1.2.3".parse().unwrap();
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(judge(&r, ten, UDP, Some(53)), Some(1));
        assert_eq!(judge(&r, ten, TCP, Some(443)), None);
        assert_eq!(judge(&r, other, TCP, Some(443)), Some(2));
        assert_eq!(judge(&r, other, UDP, Some(53)), Some(1));
        assert_eq!(judge(&r, "::1".parse().unwrap(), UDP, Some(53)), None, "IPv4 grants do not cover IPv6");
    }

    #[test]
    fn nested_excepts_and_narrow_grants_inside_excepts() {
        let grants = [
            Grant::allow(net("10.0.0.0/8"), vec![net("10.1.0.0/16")], vec![PortRule::ports(1, TCP, 80, 80)].into()),
            Grant::allow(net("10.1.2.0/24"), vec![], vec![PortRule::ports(2, TCP, 81, 81)].into()),
        ];
        let r = rules_with(build(&grants));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(judge(&r, ip("10.2.0.1"), TCP, Some(80)), Some(1));
        assert_eq!(judge(&r, ip("10.1.3.1"), TCP, Some(80)), None, "inside the except");
        assert_eq!(judge(&r, ip("10.1.2.1"), TCP, Some(80)), None, "the /24 is inside the except of grant 1");
        assert_eq!(judge(&r, ip("10.1.2.1"), TCP, Some(81)), Some(2));
        assert_eq!(judge(&r, ip("10.2.0.1"), TCP, Some(81)), None);
    }

    #[test]
    fn normalize_dedupes_merges_and_prefers_any() {
        let n = normalize(vec![
            PortRule::ports(2, TCP, 80, 80),
            PortRule::ports(1, TCP, 70, 90),
            PortRule::ports(3, TCP, 91, 95),
            PortRule::ports(3, TCP, 96, 100),
            PortRule::ports(1, UDP, 53, 53),
        ]);
        assert_eq!(
            n,
            vec![PortRule::ports(1, TCP, 70, 90), PortRule::ports(3, TCP, 91, 100), PortRule::ports(1, UDP, 53, 53)]
        );
        assert_eq!(
            normalize(vec![PortRule::ports(2, TCP, 1, 2), PortRule::any(5), PortRule::any(4)]),
            vec![PortRule::any(4)]
        );
    }

    /// Ranks order the rules of an entry: an admin Deny of a /8 beats the
    /// NetworkPolicy allow of a host inside it, a Pass lets NetworkPolicy
    /// decide, and what is left to the baseline tier meets its Deny.
    #[test]
    fn ranks_order_the_tiers() {
        let rules = |r: PortRule| -> Arc<[PortRule]> { vec![r].into() };
        let grants = [
            Grant::allow(net("10.0.0.1/32"), vec![], rules(PortRule::ports(1, TCP, 80, 80))),
            Grant {
                prefix: net("10.0.0.0/8"),
                except: vec![net("10.0.0.0/24")],
                rank: rank::admin(1),
                rules: rules(PortRule::any(2).with_action(action::ADMIN_DENY)),
            },
            Grant {
                prefix: net("10.0.0.0/24"),
                except: vec![],
                rank: rank::admin(0),
                rules: rules(PortRule::ports(3, TCP, 80, 81).with_action(action::ADMIN_PASS)),
            },
            Grant {
                prefix: net("0.0.0.0/0"),
                except: vec![],
                rank: rank::baseline(0),
                rules: rules(PortRule::ports(4, TCP, 1, 1000).with_action(action::BASELINE_DENY)),
            },
        ];
        let entries = build(&grants);
        assert_eq!(
            entries[&net("10.0.0.1/32")],
            [
                PortRule::ports(3, TCP, 80, 81).with_action(action::ADMIN_PASS),
                PortRule::ports(1, TCP, 80, 80),
                PortRule::ports(4, TCP, 1, 1000).with_action(action::BASELINE_DENY),
            ],
            "in rank order; the baseline rule is not shadowed by a Pass"
        );
        let open = DirectionRules { mode: Mode::ClusterPolicies, entries, audit: false };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(judge(&open, ip("10.0.0.1"), TCP, Some(80)), Some(1), "passed, then allowed");
        assert_eq!(judge(&open, ip("10.0.0.1"), TCP, Some(81)), None, "passed, then the baseline Deny");
        assert_eq!(judge(&open, ip("10.0.0.1"), TCP, Some(2000)), Some(0), "no rule: open");
        assert_eq!(judge(&open, ip("10.1.0.1"), UDP, Some(53)), None, "the admin Deny of the /8");
        assert_eq!(judge(&open, ip("192.0.2.1"), TCP, Some(2000)), Some(0));
    }

    #[test]
    fn shadowed_rules_are_left_out() {
        let pass = PortRule::ports(1, TCP, 80, 90).with_action(action::ADMIN_PASS);
        let deny_all = PortRule::any(3).with_action(action::ADMIN_DENY);
        let n = normalize(vec![
            pass,
            PortRule::ports(2, TCP, 80, 80).with_action(action::ADMIN_DENY),
            deny_all,
            PortRule::ports(4, TCP, 80, 80),
            PortRule::ports(5, UDP, 53, 53).with_action(action::BASELINE_DENY),
        ]);
        assert_eq!(
            n,
            [
                pass,
                deny_all,
                PortRule::ports(4, TCP, 80, 80),
                PortRule::ports(5, UDP, 53, 53).with_action(action::BASELINE_DENY)
            ],
            "a Pass shadows the admin tier's later rules; what it hands on skips the Deny, so later tiers stay"
        );
        let n = normalize(vec![deny_all, PortRule::ports(4, TCP, 80, 80), pass]);
        assert_eq!(n, [deny_all], "with no Pass before it, a Deny of everything shadows every later rule");
        let accept_all = PortRule::any(7).with_action(action::ADMIN_ACCEPT);
        let n = normalize(vec![pass, accept_all, PortRule::any(8)]);
        assert_eq!(
            n,
            [pass, accept_all, PortRule::any(8)],
            "what the Pass hands on skips the Accept: NP must decide it"
        );
        let n = normalize(vec![pass, PortRule::ports(4, TCP, 80, 80), PortRule::ports(6, TCP, 81, 81)]);
        assert_eq!(
            n,
            [pass, PortRule::ports(4, TCP, 80, 80), PortRule::ports(6, TCP, 81, 81)],
            "a Pass shadows no NP rule"
        );
    }

    #[test]
    fn redundant_entries_are_left_out() {
        let grants = [
            Grant::allow(net("0.0.0.0/0"), vec![], vec![PortRule::any(1)].into()),
            Grant::allow(net("10.0.0.1/32"), vec![], vec![PortRule::ports(2, TCP, 80, 80)].into()),
        ];
        assert_eq!(build(&grants).len(), 1, "the /32 adds nothing to allow-all");
        let only_except = [Grant::allow(net("10.0.0.0/8"), vec![net("10.1.0.0/16")], vec![].into())];
        assert!(build(&only_except).is_empty());
    }
}
