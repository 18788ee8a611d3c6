//! Writing a pod's desired policy state into its maps.
//!
//! Each direction's trie holds two rule sets; the pod's record in the pod
//! table names the live one. A write fills the idle sets, then replaces the
//! record (one map update, so every packet sees either the old rules or the
//! new ones, never a mix).
//!
//! The set that just went idle is not cleared at once: a packet that read the
//! record just before the flip still looks its peer up in that set. It is
//! cleared by the next write, once [`GRACE`] has passed since the flip.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key};
use ipnet::IpNet;
use na_common::{
    pod_state::{self, PodRecord, PodState},
    policy::{LpmKeyData, MAX_RULES_PER_PREFIX, RuleSet, action},
};
use na_policy::{DirectionRules, Mode, PodRules};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RulesError {
    #[error(
        "{prefix} needs {count} (protocol, port) rules in {direction}; a prefix holds at most {MAX_RULES_PER_PREFIX}"
    )]
    TooManyRules { direction: &'static str, prefix: IpNet, count: usize },
    #[error("opening pinned map {path}: {source}")]
    Open { path: String, source: MapError },
    #[error("creating map {name}: {source}")]
    Create { name: String, source: MapError },
    #[error("{op} {map}: {source}")]
    Map { op: &'static str, map: &'static str, source: MapError },
}

fn raw_mode(mode: Mode) -> u8 {
    match mode {
        Mode::DefaultAllow => pod_state::DEFAULT_ALLOW,
        Mode::DefaultDeny => pod_state::DEFAULT_DENY,
        Mode::PoliciesApplied => pod_state::POLICIES_APPLIED,
        Mode::ClusterPolicies => pod_state::CLUSTER_POLICIES,
    }
}

pub type Trie = LpmTrie<MapData, LpmKeyData, RuleSet>;
pub type PodTable = HashMap<MapData, u32, PodRecord>;

/// How long a program run can still be using a set after the flip away from
/// it. Programs run to completion in microseconds; this is generous.
pub const GRACE: Duration = Duration::from_millis(10);

/// A pod's own addresses, as its record holds them: Kubernetes gives a pod
/// at most one per family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodAddrs {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl PodAddrs {
    /// The first address of each family in `ips`.
    pub fn new(ips: &[IpAddr]) -> Self {
        Self {
            ipv4: ips.iter().find_map(|ip| match ip {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            }),
            ipv6: ips.iter().find_map(|ip| match ip {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            }),
        }
    }

    fn write_into(&self, record: &mut PodRecord) {
        record.ipv4 = self.ipv4.map_or([0; 4], |a| a.octets());
        record.has_ipv4 = u8::from(self.ipv4.is_some());
        record.ipv6 = na_common::Addr(self.ipv6.map_or([0; 16], |a| a.octets()));
        record.has_ipv6 = u8::from(self.ipv6.is_some());
    }
}

/// A pod's tries and its record in the pod table, opened for writing.
pub struct PodMaps {
    ingress: Trie,
    egress: Trie,
    pods: PodTable,
    ifindex: u32,
    slot: u32,
    addrs: PodAddrs,
    /// When this handle last flipped (`None`: not since opened, so another
    /// writer may just have).
    flipped: Option<Instant>,
}

impl PodMaps {
    pub fn new(ingress: Trie, egress: Trie, pods: PodTable, ifindex: u32, slot: u32, addrs: PodAddrs) -> Self {
        Self { ingress, egress, pods, ifindex, slot, addrs, flipped: None }
    }

    /// Addresses the next [`Self::apply`] writes.
    pub fn set_addrs(&mut self, addrs: PodAddrs) {
        self.addrs = addrs;
    }

    /// The host veth the pod's record is keyed by.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The pod's record as the programs see it now (`None`: none written).
    pub fn record(&self) -> Result<Option<PodRecord>, RulesError> {
        match self.pods.get(&self.ifindex, 0) {
            Ok(record) => Ok(Some(record)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("read", "pod_table")(e)),
        }
    }

    /// Makes the maps say `rules`; see the module documentation for why no
    /// packet sees a half-written state.
    pub fn apply(&mut self, rules: &PodRules) -> Result<(), RulesError> {
        use na_common::direction::{EGRESS, INGRESS};
        for (name, dir) in [("ingress", &rules.ingress), ("egress", &rules.egress)] {
            check_capacity(name, dir)?;
        }
        // A first record starts its generations from the clock: a pinned
        // conntrack table reused without its record (a lost record) holds
        // flows stamped with older generations, and none of them may match
        // by chance and skip being judged again.
        let current = self.record()?.unwrap_or_else(|| {
            let start = (super::ktime_now_ns() / 1_000_000) as u32 | 1;
            PodRecord { states: [PodState::new(pod_state::DEFAULT_DENY, 0, start); 2], ..PodRecord::default() }
        });
        let mut next = current;
        next.slot = self.slot;
        self.addrs.write_into(&mut next);
        for (trie, dir, wanted) in
            [(&mut self.ingress, INGRESS, &rules.ingress), (&mut self.egress, EGRESS, &rules.egress)]
        {
            let now = current.states[dir as usize];
            let set = now.active_set() ^ 1;
            fill_idle_set(trie, set, wanted, self.flipped)?;
            // Deny rules name endpoints, never Service addresses: what cannot
            // be judged on its endpoint must not pass by missing them.
            let denies = wanted.entries.values().flatten().any(|r| action::denies(r.action));
            next.states[dir as usize] = PodState::new(raw_mode(wanted.mode), set, now.generation.wrapping_add(1))
                .with_audit(wanted.audit)
                .with_unresolved_services_denied(denies);
        }
        self.pods.insert(self.ifindex, next, 0).map_err(map_err("write", "pod_table"))?;
        self.flipped = Some(Instant::now());
        Ok(())
    }
}

/// Writes `rules` into the idle set `next_set` of one direction's trie.
fn fill_idle_set(
    trie: &mut Trie,
    next_set: u8,
    rules: &DirectionRules,
    last_flip: Option<Instant>,
) -> Result<(), RulesError> {
    // The idle set still holds the rules live before the last flip.
    if has_set(trie, next_set) {
        let since = last_flip.map_or(Duration::ZERO, |t| t.elapsed());
        std::thread::sleep(GRACE.saturating_sub(since));
        clear_set(trie, next_set)?;
    }
    for (prefix, port_rules) in &rules.entries {
        let mut value = RuleSet { count: port_rules.len() as u32, ..RuleSet::default() };
        value.rules[..port_rules.len()].copy_from_slice(port_rules);
        trie.insert(&lpm_key(next_set, prefix), value, 0).map_err(map_err("insert into", "policy trie"))?;
    }
    Ok(())
}

fn has_set(trie: &Trie, set: u8) -> bool {
    trie.keys().filter_map(Result::ok).any(|k| k.data().set == set)
}

fn check_capacity(direction: &'static str, rules: &DirectionRules) -> Result<(), RulesError> {
    match rules.entries.iter().find(|(_, r)| r.len() > MAX_RULES_PER_PREFIX) {
        Some((prefix, r)) => Err(RulesError::TooManyRules { direction, prefix: *prefix, count: r.len() }),
        None => Ok(()),
    }
}

fn clear_set(trie: &mut Trie, set: u8) -> Result<(), RulesError> {
    let stale: Vec<Key<LpmKeyData>> = trie.keys().filter_map(Result::ok).filter(|k| k.data().set == set).collect();
    for key in stale {
        trie.remove(&key).map_err(map_err("delete from", "policy trie"))?;
    }
    Ok(())
}

/// The trie key of `prefix` in rule set `set`.
pub fn lpm_key(set: u8, prefix: &IpNet) -> Key<LpmKeyData> {
    let (fam, addr) = crate::decode::abi_addr(prefix.network());
    let (data, prefix_len) = LpmKeyData::new(set, fam, addr, u32::from(prefix.prefix_len()));
    Key::new(prefix_len, data)
}

/// Opens the map pinned at `path` as a `T`.
pub fn open_pinned<T: TryFrom<Map, Error = MapError>>(path: &Path) -> Result<T, RulesError> {
    let open = |source| RulesError::Open { path: path.display().to_string(), source };
    let data = MapData::from_pin(path).map_err(open)?;
    T::try_from(Map::from_map_data(data).map_err(open)?).map_err(open)
}

pub(super) fn map_err(op: &'static str, map: &'static str) -> impl Fn(MapError) -> RulesError {
    move |source| RulesError::Map { op, map, source }
}

/// Makes the node's table `map` (pinned as `name`) hold exactly `wanted`:
/// the entries no longer wanted go first (room for new ones in a full
/// table), then new and changed ones. Returns how many entries changed.
pub(super) fn sync_table<K, V>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    wanted: &std::collections::HashMap<K, V>,
) -> Result<usize, RulesError>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod + PartialEq,
{
    let present: std::collections::HashMap<K, V> =
        map.iter().collect::<Result<_, _>>().map_err(map_err("read", name))?;
    let mut changed = 0;
    for key in present.keys().filter(|k| !wanted.contains_key(k)) {
        map.remove(key).map_err(map_err("remove from", name))?;
        changed += 1;
    }
    for (key, value) in wanted {
        if present.get(key) != Some(value) {
            map.insert(key, value, 0).map_err(map_err("insert into", name))?;
            changed += 1;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use na_common::{family, policy::PortRule};

    use super::*;

    #[test]
    fn keys_canonicalise_host_bits_and_separate_families() {
        let a = lpm_key(0, &"10.1.2.3/16".parse::<IpNet>().unwrap().trunc());
        assert_eq!(a.prefix_len(), 16 + 16);
        assert_eq!(&a.data().addr[..4], &[10, 1, 0, 0]);
        assert_eq!(a.data().family, family::IPV4);
        let b = lpm_key(1, &"::/0".parse().unwrap());
        assert_eq!((b.prefix_len(), b.data().set, b.data().family), (16, 1, family::IPV6));
    }

    #[test]
    fn overflow_is_an_error_not_a_truncation() {
        let mut rules = DirectionRules::default();
        let prefix: IpNet = "10.0.0.0/8".parse().unwrap();
        rules.entries.insert(prefix, vec![PortRule::any(1); MAX_RULES_PER_PREFIX]);
        assert!(check_capacity("ingress", &rules).is_ok());
        rules.entries.get_mut(&prefix).unwrap().push(PortRule::any(1));
        let err = check_capacity("ingress", &rules).unwrap_err().to_string();
        assert!(err.contains("10.0.0.0/8") && err.contains("65") && err.contains("64"), "{err}");
    }
}
