use serde_json::json;

use super::*;

fn np(spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec})).unwrap()
}

fn err(spec: serde_json::Value) -> PolicyError {
    Policy::parse(&np(spec)).unwrap_err()
}

#[test]
fn policy_types_default_from_rules() {
    let p = Policy::parse(&np(json!({"podSelector": {}}))).unwrap();
    assert_eq!((p.ingress.as_ref().map(Vec::len), p.egress.is_some()), (Some(0), false));
    let p = Policy::parse(&np(json!({"podSelector": {}, "egress": [{}]}))).unwrap();
    assert!(p.ingress.is_some() && p.egress.is_some());
    let p = Policy::parse(&np(json!({"podSelector": {}, "egress": []}))).unwrap();
    assert!(p.egress.is_none(), "an empty egress list does not imply Egress");
    let p = Policy::parse(&np(json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}))).unwrap();
    assert!(p.ingress.is_none() && p.egress == Some(vec![]));
}

#[test]
fn errors_name_policy_and_field() {
    let e = err(json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0/8"}}]}]}));
    assert_eq!(e.policy, "ns/p");
    assert_eq!(e.field, "spec.ingress[0].from[0].ipBlock.cidr");
    assert!(e.to_string().contains("NetworkPolicy ns/p: spec.ingress[0].from[0].ipBlock.cidr"), "{e}");

    let e = err(
        json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}),
    );
    assert_eq!(e.field, "spec.egress[0].to[0].ipBlock.except[0]");
    let e = err(json!({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}));
    assert_eq!(e.field, "spec.ingress[0].ports[0].endPort");
    let e = err(json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 80}]}]}));
    assert_eq!(e.field, "spec.ingress[0].ports[0].endPort");
    let e = err(json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}));
    assert_eq!(e.field, "spec.ingress[0].ports[0].protocol");
    let e = err(json!({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]}));
    assert_eq!(e.field, "spec.ingress[0].ports[0].port");
    let e = err(json!({"podSelector": {}, "ingress": [{"ports": [{"port": "Not_A_Name"}]}]}));
    assert_eq!(e.field, "spec.ingress[0].ports[0].port");
    let e = err(json!({"podSelector": {}, "policyTypes": ["Sideways"]}));
    assert_eq!(e.field, "spec.policyTypes[0]");
    let e = err(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}));
    assert_eq!(e.field, "spec.podSelector");
    let e = err(json!({"podSelector": {}, "ingress": [{"from": [{}]}]}));
    assert_eq!(e.field, "spec.ingress[0].from[0]");
    let e = err(
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
    );
    assert_eq!(e.field, "spec.ingress[0].from[0]");
}

#[test]
fn cidrs_are_canonicalised_and_ports_parsed() {
    let p = Policy::parse(&np(json!({"podSelector": {}, "ingress": [{
        "from": [{"ipBlock": {"cidr": "10.1.2.3/16", "except": ["10.1.2.0/24"]}}],
        "ports": [{"port": 80}, {"protocol": "UDP", "port": 1000, "endPort": 2000}, {"port": "dns"}, {"protocol": "SCTP"}]
    }]})))
    .unwrap();
    let rule = &p.ingress.unwrap()[0];
    assert_eq!(
        rule.peers,
        Some(vec![Peer::Block { cidr: "10.1.0.0/16".parse().unwrap(), except: vec!["10.1.2.0/24".parse().unwrap()] }])
    );
    assert_eq!(
        rule.ports,
        Some(vec![
            PortSpec { protocol: 6, port: PortValue::Range(80, 80) },
            PortSpec { protocol: 17, port: PortValue::Range(1000, 2000) },
            PortSpec { protocol: 6, port: PortValue::Named("dns".into()) },
            PortSpec { protocol: 132, port: PortValue::All },
        ])
    );
}
