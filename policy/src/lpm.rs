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
use na_common::policy::{PROTO_ANY, PortRule};

use crate::output::{DirectionRules, Mode};

/// Addresses `prefix` minus `except` may use `rules`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub prefix: IpNet,
    pub except: Vec<IpNet>,
    /// Shared: one peer pod's rules go to each of its addresses.
    pub rules: Arc<[PortRule]>,
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
        let mut rules = Vec::new();
        for anc in lens.ancestors(key) {
            for g in by_prefix.get(&anc).into_iter().flatten() {
                if !g.except.iter().any(|e| e.contains(key)) {
                    rules.extend_from_slice(&g.rules);
                }
            }
        }
        entries.insert(*key, normalize(rules));
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

/// Sorted, deduplicated rules where none is covered by another; any-protocol
/// wins over everything.
pub fn normalize(mut rules: Vec<PortRule>) -> Vec<PortRule> {
    if rules.len() <= 1 {
        return rules;
    }
    if let Some(any) = rules.iter().filter(|r| r.protocol == PROTO_ANY).min_by_key(|r| r.policy_id) {
        return vec![PortRule::any(any.policy_id)];
    }
    // Widest first within a protocol and start, lowest id first among equals.
    rules.sort_by_key(|r| (r.protocol, r.start_port, std::cmp::Reverse(r.end_port), r.policy_id));
    let mut out: Vec<PortRule> = Vec::with_capacity(rules.len());
    for r in rules {
        let covered =
            out.iter().any(|k| k.protocol == r.protocol && k.start_port <= r.start_port && r.end_port <= k.end_port);
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
/// the rule that admits it, `Some(0)` when the direction is not isolated,
/// `None` when it is dropped.
pub fn judge(rules: &DirectionRules, peer: IpAddr, protocol: u8, port: Option<u16>) -> Option<u32> {
    if rules.mode == Mode::DefaultAllow {
        return Some(na_common::policy::POLICY_ID_NONE);
    }
    let host = IpNet::from(peer);
    let entry = ancestors(&host).find_map(|p| rules.entries.get(&p))?;
    entry.iter().find(|r| r.matches(protocol, port)).map(|r| r.policy_id)
}

#[cfg(test)]
mod tests {
    use na_common::protocol::{TCP, UDP};

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn rules_with(entries: BTreeMap<IpNet, Vec<PortRule>>) -> DirectionRules {
        DirectionRules { mode: Mode::PoliciesApplied, entries }
    }

    #[test]
    fn except_only_narrows_its_own_grant() {
        // AWS issue 180: 0/0 port 53 plus 0/0 except 10/8 on 443 must still
        // allow port 53 to 10.x.
        let grants = [
            Grant { prefix: net("0.0.0.0/0"), except: vec![], rules: vec![PortRule::ports(1, UDP, 53, 53)].into() },
            Grant {
                prefix: net("0.0.0.0/0"),
                except: vec![net("10.0.0.0/8")],
                rules: vec![PortRule::ports(2, TCP, 443, 443)].into(),
            },
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
            Grant {
                prefix: net("10.0.0.0/8"),
                except: vec![net("10.1.0.0/16")],
                rules: vec![PortRule::ports(1, TCP, 80, 80)].into(),
            },
            Grant { prefix: net("10.1.2.0/24"), except: vec![], rules: vec![PortRule::ports(2, TCP, 81, 81)].into() },
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

    #[test]
    fn redundant_entries_are_left_out() {
        let grants = [
            Grant { prefix: net("0.0.0.0/0"), except: vec![], rules: vec![PortRule::any(1)].into() },
            Grant { prefix: net("10.0.0.1/32"), except: vec![], rules: vec![PortRule::ports(2, TCP, 80, 80)].into() },
        ];
        assert_eq!(build(&grants).len(), 1, "the /32 adds nothing to allow-all");
        let only_except = [Grant { prefix: net("10.0.0.0/8"), except: vec![net("10.1.0.0/16")], rules: vec![].into() }];
        assert!(build(&only_except).is_empty());
    }
}
