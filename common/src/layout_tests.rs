//! The byte layout is the contract with the kernel and with pinned maps left by
//! an older agent: any change here must be deliberate.
use core::mem::{offset_of, size_of};

use crate::{conntrack::*, events::*, pod_state::*, policy::*, service::*};

#[test]
fn lpm_key_layout() {
    assert_eq!(size_of::<LpmKeyData>(), 20);
    // The trie stores the value right after the key (prefix length + data).
    assert_eq!((4 + size_of::<LpmKeyData>()) % core::mem::align_of::<RuleSet>(), 0);
    assert_eq!(offset_of!(LpmKeyData, set), 0);
    assert_eq!(offset_of!(LpmKeyData, family), 1);
    assert_eq!(offset_of!(LpmKeyData, addr), 2);
}

#[test]
fn rule_layout() {
    assert_eq!(size_of::<PortRule>(), 12);
    assert_eq!(offset_of!(PortRule, policy_id), 0);
    assert_eq!(offset_of!(PortRule, start_port), 4);
    assert_eq!(offset_of!(PortRule, end_port), 6);
    assert_eq!(offset_of!(PortRule, protocol), 8);
    assert_eq!(size_of::<RuleSet>(), 4 + 12 * MAX_RULES_PER_PREFIX);
}

#[test]
fn pod_state_layout() {
    assert_eq!(size_of::<PodState>(), 8);
    assert_eq!(offset_of!(PodState, state), 0);
    assert_eq!(offset_of!(PodState, generation), 4);
    // An array map starts zeroed: that must mean deny, set 0.
    assert_eq!((PodState::default().mode(), PodState::default().active_set()), (DEFAULT_DENY, 0));
    for mode in [DEFAULT_DENY, DEFAULT_ALLOW, POLICIES_APPLIED] {
        for set in [0, 1] {
            let s = PodState::new(mode, set, 9);
            assert_eq!((s.mode(), s.active_set(), s.generation), (mode, set, 9));
        }
    }
}

#[test]
fn conntrack_layout() {
    assert_eq!(size_of::<FlowKey>(), 40);
    assert_eq!(offset_of!(FlowKey, peer_addr), 16);
    assert_eq!(offset_of!(FlowKey, pod_port), 32);
    assert_eq!(offset_of!(FlowKey, peer_port), 34);
    assert_eq!(offset_of!(FlowKey, protocol), 36);
    assert_eq!(offset_of!(FlowKey, family), 37);
    assert_eq!(size_of::<FlowState>(), 40);
    assert_eq!(offset_of!(FlowState, policy_id), 8);
    assert_eq!(offset_of!(FlowState, generation), 12);
    assert_eq!(offset_of!(FlowState, direction), 16);
    assert_eq!(offset_of!(FlowState, tcp_state), 17);
    assert_eq!(offset_of!(FlowState, replied), 18);
    assert_eq!(offset_of!(FlowState, via_service), 19);
    assert_eq!(offset_of!(FlowState, endpoint_port), 20);
    assert_eq!(offset_of!(FlowState, revoked), 22);
    assert_eq!(offset_of!(FlowState, endpoint_addr), 24);
    assert_eq!(size_of::<FragKey>(), 44);
    assert_eq!(offset_of!(FragKey, id), 32);
    assert_eq!(offset_of!(FragKey, protocol), 36);
    assert_eq!(offset_of!(FragKey, ifindex), 40);
    assert_eq!(size_of::<Counter>(), 16);
    assert_eq!(counter_index(1, 1), 4);
}

#[test]
fn pod_record_layout() {
    assert_eq!(size_of::<PodRecord>(), 48);
    assert_eq!(offset_of!(PodRecord, states), 0);
    assert_eq!(offset_of!(PodRecord, ipv4), 16);
    assert_eq!(offset_of!(PodRecord, has_ipv4), 20);
    assert_eq!(offset_of!(PodRecord, has_ipv6), 21);
    assert_eq!(offset_of!(PodRecord, ipv6), 24);
    assert_eq!(offset_of!(PodRecord, slot), 40);
    assert_eq!(size_of::<PodCounterSlots>(), 16 * COUNTERS as usize);
}

#[test]
fn event_layout() {
    assert_eq!(size_of::<PolicyEvent>(), 64);
    assert_eq!(offset_of!(PolicyEvent, src_port), 32);
    assert_eq!(offset_of!(PolicyEvent, protocol), 36);
    assert_eq!(offset_of!(PolicyEvent, direction), 38);
    assert_eq!(offset_of!(PolicyEvent, verdict), 39);
    assert_eq!(offset_of!(PolicyEvent, tier), 40);
    assert_eq!(offset_of!(PolicyEvent, policy_id), 44);
    assert_eq!(offset_of!(PolicyEvent, ifindex), 48);
    assert_eq!(offset_of!(PolicyEvent, packet_len), 52);
    assert_eq!(offset_of!(PolicyEvent, service_id), 56);
}

#[test]
fn empty_slots_never_match() {
    let mut set = RuleSet::default();
    // A zeroed slot is PROTO_ANY: it must still not match past `count`.
    assert!(set.find(crate::protocol::TCP, Some(80)).is_none());
    set.rules[0] = PortRule::ports(7, crate::protocol::TCP, 80, 80);
    set.count = 1;
    assert_eq!(set.find(crate::protocol::TCP, Some(80)).map(|r| r.policy_id), Some(7));
    assert!(set.find(crate::protocol::TCP, Some(81)).is_none());
    assert!(set.find(crate::protocol::UDP, Some(80)).is_none());
}

#[test]
fn port_range_edges() {
    let r = PortRule::ports(1, crate::protocol::UDP, 1000, 2000);
    assert!(!r.matches(crate::protocol::UDP, Some(999)));
    assert!(r.matches(crate::protocol::UDP, Some(1000)));
    assert!(r.matches(crate::protocol::UDP, Some(2000)));
    assert!(!r.matches(crate::protocol::UDP, Some(2001)));
    assert!(!r.matches(crate::protocol::UDP, None));
    assert!(PortRule::any(1).matches(crate::protocol::ICMP, None));
}

#[test]
fn a_pod_owns_only_its_addresses() {
    let mut record = PodRecord { ipv4: [10, 0, 0, 1], has_ipv4: 1, ..PodRecord::default() };
    let mut v4 = crate::Addr::default();
    v4.0[..4].copy_from_slice(&[10, 0, 0, 1]);
    assert!(record.owns(crate::family::IPV4, &v4));
    v4.0[3] = 2;
    assert!(!record.owns(crate::family::IPV4, &v4));
    let v6 = crate::Addr([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert!(!record.owns(crate::family::IPV6, &v6), "no IPv6 address: nothing is the pod's");
    record.ipv6 = v6;
    record.has_ipv6 = 1;
    assert!(record.owns(crate::family::IPV6, &v6));
    let mut other = v6;
    other.0[8] = 1;
    assert!(!record.owns(crate::family::IPV6, &other));
    record.has_ipv4 = 0;
    assert!(!record.owns(crate::family::IPV4, &crate::Addr::default()), "a zeroed address is not owned by default");
}

#[test]
fn flows_get_the_timeout_of_their_state() {
    use crate::protocol::{ICMP, TCP, UDP};
    let flow = |tcp_state, replied, revoked| FlowState { tcp_state, replied, revoked, ..FlowState::default() };
    let cases = [
        (TCP, flow(tcp_state::OPEN, 0, 0), TimeoutClass::Unreplied),
        (TCP, flow(tcp_state::OPEN, 1, 0), TimeoutClass::TcpEstablished),
        (TCP, flow(tcp_state::CLOSING, 0, 0), TimeoutClass::Unreplied),
        (TCP, flow(tcp_state::CLOSING, 1, 0), TimeoutClass::TcpClosing),
        (TCP, flow(tcp_state::RESET, 0, 0), TimeoutClass::TcpClosed),
        (TCP, flow(tcp_state::CLOSING_REPLY, 1, 0), TimeoutClass::TcpClosing),
        (TCP, flow(tcp_state::RESET, 1, 0), TimeoutClass::TcpClosed),
        (TCP, flow(tcp_state::CLOSED, 1, 0), TimeoutClass::TcpClosed),
        (TCP, flow(tcp_state::OPEN, 1, 1), TimeoutClass::Revoked),
        (UDP, flow(tcp_state::OPEN, 0, 0), TimeoutClass::Unreplied),
        (UDP, flow(tcp_state::OPEN, 1, 0), TimeoutClass::Unreplied),
        (UDP, flow(tcp_state::OPEN, 2, 0), TimeoutClass::Udp),
        (TCP, flow(tcp_state::OPEN, 2, 0), TimeoutClass::TcpEstablished),
        (UDP, flow(tcp_state::OPEN, 1, 1), TimeoutClass::Revoked),
        (ICMP, flow(tcp_state::OPEN, 0, 0), TimeoutClass::Other),
        (ICMP, flow(tcp_state::OPEN, 0, 1), TimeoutClass::Revoked),
    ];
    for (protocol, flow, class) in cases {
        assert_eq!(TimeoutClass::of(protocol, &flow), class, "{protocol} {flow:?}");
    }
}

#[test]
fn a_flow_becomes_a_stream_once_it_goes_on_after_its_first_reply() {
    use replied::{NONE, ONCE, STREAM, after};
    assert_eq!(after(NONE, false), NONE, "the opener again");
    assert_eq!(after(NONE, true), ONCE);
    assert_eq!(after(ONCE, false), STREAM);
    assert_eq!(after(ONCE, true), STREAM);
    assert_eq!(after(STREAM, true), STREAM);
}

#[test]
fn fin_from_one_end_winds_a_tcp_flow_down_and_from_both_or_rst_ends_it() {
    use tcp_state::{CLOSED, CLOSING, CLOSING_REPLY, OPEN, RESET, after};
    let (fin, rst, ack, fin_ack) = (0x01, 0x04, 0x10, 0x11);
    assert_eq!(after(OPEN, ack, false), OPEN);
    assert_eq!(after(OPEN, fin_ack, false), CLOSING);
    assert_eq!(after(OPEN, fin_ack, true), CLOSING_REPLY);
    assert_eq!(after(CLOSING, fin_ack, false), CLOSING, "the same end's FIN again");
    assert_eq!(after(CLOSING, fin_ack, true), CLOSED);
    assert_eq!(after(CLOSING_REPLY, fin, false), CLOSED);
    assert_eq!(after(CLOSING_REPLY, ack, false), CLOSING_REPLY);
    assert_eq!(after(OPEN, rst, true), RESET);
    assert_eq!(after(CLOSING, rst | ack, false), RESET);
    assert_eq!(after(CLOSED, rst, false), RESET);
    assert_eq!(after(RESET, fin, true), RESET, "nothing reopens a reset flow");
    assert_eq!(after(CLOSED, fin, true), CLOSED);
    let (syn, syn_ack) = (0x02, 0x12);
    assert_eq!(after(RESET, syn, false), OPEN, "a new connection on a reused port");
    assert_eq!(after(CLOSED, syn, false), OPEN);
    assert_eq!(after(CLOSED, syn, true), CLOSED, "not from the other end");
    assert_eq!(after(CLOSED, syn_ack, false), CLOSED);
    assert_eq!(after(CLOSING, syn, false), CLOSING, "not while the connection winds down");
}

#[test]
fn service_layout() {
    assert_eq!(size_of::<ServiceKey>(), 24);
    assert_eq!(offset_of!(ServiceKey, port), 16);
    assert_eq!(offset_of!(ServiceKey, protocol), 18);
    assert_eq!(offset_of!(ServiceKey, family), 19);
    assert_eq!(size_of::<DnatPending>(), 56);
    assert_eq!(offset_of!(DnatPending, src_addr), 16);
    assert_eq!(offset_of!(DnatPending, src_port), 32);
    assert_eq!(offset_of!(DnatPending, armed), 38);
    assert_eq!(offset_of!(DnatPending, ifindex), 40);
    assert_eq!(offset_of!(DnatPending, service_id), 44);
    assert_eq!(offset_of!(DnatPending, armed_at_ns), 48);
    assert_eq!(size_of::<DnatHook>(), 16);
    assert_eq!(offset_of!(DnatHook, skb_data_offset), 4);
    assert_eq!(offset_of!(DnatHook, skb_len_offset), 8);
}
