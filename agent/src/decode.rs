//! Kernel ABI values in words: addresses, protocols, tiers, port ranges and
//! attribution ids, as flow logs and `na-cli` print them.
use std::net::IpAddr;

use ipnet::IpNet;
use na_common::{
    direction,
    events::{tier, verdict},
    family, pod_state,
    policy::{KEY_HEADER_BITS, LpmKeyData, POLICY_ID_HOST, POLICY_ID_NONE, PROTO_ANY, PortRule},
    protocol,
};

use crate::status::Status;

/// The address in a 16-byte ABI field of `family`.
pub fn addr(fam: u8, bytes: [u8; 16]) -> IpAddr {
    if fam == family::IPV4 { IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]]) } else { IpAddr::from(bytes) }
}

/// The 16-byte ABI field and family of `ip`.
pub fn abi_addr(ip: IpAddr) -> (u8, [u8; 16]) {
    let (family, addr) = na_common::Addr::of_ip(ip);
    (family, addr.0)
}

/// The peer prefix of an LPM key with its full prefix length.
pub fn prefix(key: &LpmKeyData, prefix_len: u32) -> Option<IpNet> {
    let len = u8::try_from(prefix_len.checked_sub(KEY_HEADER_BITS)?).ok()?;
    IpNet::new(addr(key.family, key.addr), len).ok()
}

pub fn protocol_name(p: u8) -> String {
    match p {
        PROTO_ANY => "any".into(),
        protocol::TCP => "TCP".into(),
        protocol::UDP => "UDP".into(),
        protocol::SCTP => "SCTP".into(),
        protocol::ICMP => "ICMP".into(),
        protocol::ICMPV6 => "ICMPv6".into(),
        other => other.to_string(),
    }
}

/// A protocol by name (any case: the Kubernetes ones, ICMP, ICMPv6) or number.
pub fn protocol_number(name: &str) -> Option<u8> {
    if let Some(p) = na_policy::protocol_number(&name.to_ascii_uppercase()) {
        return Some(p);
    }
    match name.to_ascii_lowercase().as_str() {
        "icmp" => Some(protocol::ICMP),
        "icmpv6" | "ipv6-icmp" => Some(protocol::ICMPV6),
        n => n.parse().ok().filter(|p| *p != PROTO_ANY),
    }
}

/// A rule's ports: `80`, `8000-9000`, or `all`.
pub fn ports(rule: &PortRule) -> String {
    match (rule.protocol, rule.start_port, rule.end_port) {
        (PROTO_ANY, ..) | (_, 0, u16::MAX) => "all".into(),
        (_, s, e) if s == e => s.to_string(),
        (_, s, e) => format!("{s}-{e}"),
    }
}

pub fn tier_name(t: u8) -> &'static str {
    match t {
        tier::DEFAULT_ALLOW => "DEFAULT_ALLOW",
        tier::DEFAULT_DENY => "DEFAULT_DENY",
        tier::NETWORK_POLICY => "NETWORK_POLICY",
        tier::MALFORMED => "MALFORMED",
        tier::REVOKED => "REVOKED",
        tier::SPOOFED => "SPOOFED",
        tier::NOT_IP => "NOT_IP",
        tier::ADMIN => "ADMIN",
        tier::BASELINE => "BASELINE",
        tier::SERVICE_UNRESOLVED => "SERVICE_UNRESOLVED",
        _ => "UNKNOWN",
    }
}

pub fn direction_name(dir: u32) -> &'static str {
    if dir == direction::INGRESS { "ingress" } else { "egress" }
}

pub fn mode_name(mode: u8) -> &'static str {
    match mode {
        pod_state::DEFAULT_ALLOW => "default-allow",
        pod_state::DEFAULT_DENY => "default-deny",
        pod_state::POLICIES_APPLIED => "policies-applied",
        pod_state::CLUSTER_POLICIES => "cluster-policies",
        _ => "unknown",
    }
}

/// What decided, as the policy and rule index, resolved by `rule`; the node's
/// own entries are `node`.
pub fn attribution(
    policy_id: u32,
    rule: impl FnOnce(u32) -> Option<(String, usize)>,
) -> (Option<String>, Option<usize>) {
    match policy_id {
        POLICY_ID_NONE => (None, None),
        POLICY_ID_HOST => (Some("node".into()), None),
        id => rule(id).map_or((None, None), |(policy, index)| (Some(policy), Some(index))),
    }
}

/// An attribution id in one short label: `x/allow-b ingress[2]`, `node`,
/// `-`, or `#17` when the status file does not know it.
pub fn attribution_label(policy_id: u32, status: Option<&Status>) -> String {
    match policy_id {
        POLICY_ID_NONE => "-".into(),
        POLICY_ID_HOST => "node".into(),
        id => status.and_then(|s| s.rule(id)).map_or_else(|| format!("#{id}"), entry_label),
    }
}

/// A rule as [`rule_label`] gives it, with a cluster rule's tier, priority
/// and action: `guard ingress[0] (Admin 10 Deny)`.
pub fn entry_label(r: &crate::status::RuleEntry) -> String {
    let label = rule_label(&r.policy, &r.direction, r.rule);
    match &r.cluster {
        Some(c) => format!("{label} ({} {} {})", c.tier, c.priority, c.action),
        None => label,
    }
}

/// A rule's action ([`na_common::policy::action`]) in words.
pub fn action_name(a: u8) -> &'static str {
    use na_common::policy::action;
    match a {
        action::ALLOW => "allow",
        action::ADMIN_ACCEPT => "Admin Accept",
        action::ADMIN_DENY => "Admin Deny",
        action::ADMIN_PASS => "Admin Pass",
        action::BASELINE_ACCEPT => "Baseline Accept",
        action::BASELINE_DENY => "Baseline Deny",
        _ => "unknown",
    }
}

/// What the datapath did, as flow logs and `na-cli` print it.
pub fn verdict_name(v: u8) -> &'static str {
    match v {
        verdict::ALLOW => "ACCEPT",
        verdict::AUDIT => "AUDIT",
        _ => "DENY",
    }
}

/// A policy rule as `namespace/name direction[index]`.
pub fn rule_label(policy: &str, direction: &str, rule: usize) -> String {
    format!("{policy} {direction}[{rule}]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::RuleEntry;

    #[test]
    fn words_for_abi_values() {
        let (fam, bytes) = abi_addr("10.1.2.3".parse().unwrap());
        assert_eq!(addr(fam, bytes).to_string(), "10.1.2.3");
        let (key, len) = LpmKeyData::new(0, fam, bytes, 24);
        assert_eq!(prefix(&key, len).unwrap().to_string(), "10.1.2.3/24");
        let (fam6, bytes6) = abi_addr("fd00::1".parse().unwrap());
        assert_eq!(addr(fam6, bytes6).to_string(), "fd00::1");

        assert_eq!(protocol_number("TCP"), Some(protocol::TCP));
        assert_eq!(protocol_number("47"), Some(47));
        assert_eq!(protocol_number("0"), None, "0 is our 'any', never a packet's");
        assert_eq!(protocol_number("tcpx"), None);
        assert_eq!(protocol_name(protocol::SCTP), "SCTP");

        assert_eq!(ports(&PortRule::ports(1, protocol::TCP, 80, 80)), "80");
        assert_eq!(ports(&PortRule::ports(1, protocol::TCP, 80, 90)), "80-90");
        assert_eq!(ports(&PortRule::any(1)), "all");

        let status = Status {
            rules: vec![
                RuleEntry { id: 1, policy: "x/p".into(), direction: "egress".into(), rule: 3, cluster: None },
                RuleEntry {
                    id: 3,
                    policy: "guard".into(),
                    direction: "ingress".into(),
                    rule: 0,
                    cluster: Some(crate::status::ClusterRule {
                        tier: "Admin".into(),
                        priority: 10,
                        action: "Deny".into(),
                    }),
                },
            ]
            .into(),
            ..Default::default()
        };
        assert_eq!(attribution_label(1, Some(&status)), "x/p egress[3]");
        assert_eq!(attribution_label(2, Some(&status)), "#2");
        assert_eq!(attribution_label(3, Some(&status)), "guard ingress[0] (Admin 10 Deny)");
        assert_eq!(attribution_label(POLICY_ID_HOST, None), "node");
        assert_eq!(attribution_label(POLICY_ID_NONE, None), "-");
    }
}
