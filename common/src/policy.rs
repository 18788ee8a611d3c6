//! The LPM tries `ingress_map` / `egress_map`: which peers may reach which ports.
//!
//! Each pod has one trie per direction, an inner map of the node-wide
//! `ingress_tries` / `egress_tries` (keyed by the pod's host veth ifindex).
//! A trie holds both address families and two rule sets: the key starts with
//! the set index and the family, so a policy change is written into the
//! inactive set and becomes visible at once when the pod record flips its
//! active set (see [`crate::pod_state::PodState::active_set`]).

/// How many (protocol, port range) rules one prefix can hold. The agent refuses
/// to write more instead of truncating.
pub const MAX_RULES_PER_PREFIX: usize = 64;
// The AWS agent stops at 24 per prefix; never fall below 64.
const _: () = assert!(MAX_RULES_PER_PREFIX >= 64);

/// Maximum number of prefixes per trie (both sets together).
pub const MAX_PREFIXES: u32 = 65_536;

/// Bits of the key spent on the set index and family before the address.
pub const KEY_HEADER_BITS: u32 = 16;

/// A rule's protocol that matches every IP protocol on every port (a
/// NetworkPolicy rule without `ports`). No real packet carries protocol 0 after
/// IPv6 extension headers are walked, and it is never compared to a packet's.
pub const PROTO_ANY: u8 = 0;

/// Attribution id of entries the agent adds for the node itself (kubelet probes).
pub const POLICY_ID_HOST: u32 = u32::MAX;
/// Attribution id of verdicts made without a rule (pod state default).
pub const POLICY_ID_NONE: u32 = 0;

/// The part of the LPM key after the prefix length (aya's `Key<LpmKeyData>`).
/// The prefix length counts [`KEY_HEADER_BITS`] plus the address prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LpmKeyData {
    /// Rule set, 0 or 1.
    pub set: u8,
    /// [`crate::family`] of `addr`.
    pub family: u8,
    /// Address in network byte order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    /// Never part of a prefix; keeps the value behind the key 4-byte aligned
    /// in the kernel's trie node.
    pub _pad: [u8; 2],
}

impl LpmKeyData {
    /// Key data and full LPM prefix length for `addr/prefix_len` in `set`.
    pub const fn new(set: u8, family: u8, addr: [u8; 16], prefix_len: u32) -> (Self, u32) {
        (Self { set, family, addr, _pad: [0; 2] }, KEY_HEADER_BITS + prefix_len)
    }
}

/// What a matching rule does with a packet. A prefix's rules are ordered:
/// the first that matches decides, except that a matching
/// [`ADMIN_PASS`](action::ADMIN_PASS) skips the rest of the admin tier.
/// The compiler orders them node, admin tier (by priority), NetworkPolicy,
/// baseline tier, so the order is the tiers' order of evaluation.
pub mod action {
    /// A NetworkPolicy rule (or the node's own entry): allows. Zero, so
    /// rules written without an action allow as they always did.
    pub const ALLOW: u8 = 0;
    /// A ClusterNetworkPolicy rule of the admin tier: `Accept`.
    pub const ADMIN_ACCEPT: u8 = 1;
    /// Admin tier `Deny`.
    pub const ADMIN_DENY: u8 = 2;
    /// Admin tier `Pass`: the admin tier does not decide; NetworkPolicy and
    /// then the baseline tier do.
    pub const ADMIN_PASS: u8 = 3;
    /// Baseline tier `Accept`.
    pub const BASELINE_ACCEPT: u8 = 4;
    /// Baseline tier `Deny`.
    pub const BASELINE_DENY: u8 = 5;

    /// Whether a rule of this action belongs to the admin tier.
    #[inline(always)]
    pub const fn is_admin(action: u8) -> bool {
        matches!(action, ADMIN_ACCEPT | ADMIN_DENY | ADMIN_PASS)
    }

    /// Whether a rule of this action drops what it decides (a cluster tier's
    /// `Deny`).
    #[inline(always)]
    pub const fn denies(action: u8) -> bool {
        matches!(action, ADMIN_DENY | BASELINE_DENY)
    }

    /// Whether a rule of this action lets the packet through when it decides.
    #[inline(always)]
    pub const fn allows(action: u8) -> bool {
        matches!(action, ALLOW | ADMIN_ACCEPT | BASELINE_ACCEPT)
    }

    /// The [`crate::events::tier`] of a rule of this action.
    #[inline(always)]
    pub const fn tier(action: u8) -> u8 {
        match action {
            ADMIN_ACCEPT | ADMIN_DENY | ADMIN_PASS => crate::events::tier::ADMIN,
            BASELINE_ACCEPT | BASELINE_DENY => crate::events::tier::BASELINE,
            _ => crate::events::tier::NETWORK_POLICY,
        }
    }
}

/// One (protocol, port range) with the policy rule it comes from and what
/// it does ([`action`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortRule {
    /// Which policy rule produced this entry (agent-assigned; see `na-cli`).
    pub policy_id: u32,
    /// First destination port, host byte order.
    pub start_port: u16,
    /// Last destination port, inclusive, host byte order.
    pub end_port: u16,
    /// IP protocol number, or [`PROTO_ANY`].
    pub protocol: u8,
    /// [`action`].
    pub action: u8,
    pub _pad: [u8; 2],
}

impl PortRule {
    /// Every protocol, every port.
    pub const fn any(policy_id: u32) -> Self {
        Self { policy_id, start_port: 0, end_port: u16::MAX, protocol: PROTO_ANY, action: action::ALLOW, _pad: [0; 2] }
    }

    /// `protocol` on ports `start..=end`.
    pub const fn ports(policy_id: u32, protocol: u8, start: u16, end: u16) -> Self {
        Self { policy_id, start_port: start, end_port: end, protocol, action: action::ALLOW, _pad: [0; 2] }
    }

    /// The same match with another action.
    pub const fn with_action(self, action: u8) -> Self {
        Self { action, ..self }
    }

    /// Whether every packet this rule matches, `other` matches too.
    pub const fn covers(&self, other: &PortRule) -> bool {
        self.protocol == PROTO_ANY
            || (self.protocol == other.protocol
                && self.start_port <= other.start_port
                && other.end_port <= self.end_port)
    }

    /// Whether this rule admits a packet. `port` is `None` for packets that carry
    /// no port the datapath may trust (other protocols, non-first fragments);
    /// only [`PROTO_ANY`] rules admit those.
    #[inline(always)]
    pub fn matches(&self, protocol: u8, port: Option<u16>) -> bool {
        if self.protocol == PROTO_ANY {
            return true;
        }
        match port {
            Some(port) => self.protocol == protocol && self.start_port <= port && port <= self.end_port,
            None => false,
        }
    }
}

/// Value of an LPM entry: the first `count` rules are live, the rest never match.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub count: u32,
    pub rules: [PortRule; MAX_RULES_PER_PREFIX],
}

impl Default for RuleSet {
    fn default() -> Self {
        Self { count: 0, rules: [PortRule::default(); MAX_RULES_PER_PREFIX] }
    }
}

impl RuleSet {
    /// The live rule that decides the packet, if one does (see [`action`]).
    #[inline(always)]
    pub fn find(&self, protocol: u8, port: Option<u16>) -> Option<&PortRule> {
        let count = self.count as usize;
        let mut scan = Scan::default();
        // Bounded by the array length so the verifier sees a fixed trip count.
        for i in 0..MAX_RULES_PER_PREFIX {
            if i >= count {
                break;
            }
            let rule = &self.rules[i];
            if scan.decides(rule, protocol, port) {
                return Some(rule);
            }
        }
        None
    }
}

/// First-match over ordered rules, with the admin tier's `Pass`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scan {
    /// An admin `Pass` rule matched: the admin tier's later rules do not apply.
    passed: bool,
}

impl Scan {
    /// Whether `rule`, next in order, decides the packet.
    #[inline(always)]
    pub fn decides(&mut self, rule: &PortRule, protocol: u8, port: Option<u16>) -> bool {
        if self.passed && action::is_admin(rule.action) {
            return false;
        }
        if !rule.matches(protocol, port) {
            return false;
        }
        if rule.action == action::ADMIN_PASS {
            self.passed = true;
            return false;
        }
        true
    }
}
