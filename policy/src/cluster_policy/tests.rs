use na_common::protocol::{SCTP, TCP, UDP};
use serde_json::{Value, json};

use super::*;

fn upstream(spec: Value) -> Value {
    json!({"apiVersion": UPSTREAM_API_VERSION, "kind": KIND, "metadata": {"name": "p"}, "spec": spec})
}

fn aws(spec: Value) -> Value {
    json!({"apiVersion": AWS_API_VERSION, "kind": KIND, "metadata": {"name": "p"}, "spec": spec})
}

fn ns(name: &str) -> Value {
    json!({"matchLabels": {"kubernetes.io/metadata.name": name}})
}

#[test]
fn upstream_rules_in_order() {
    let p = ClusterPolicy::parse(&upstream(json!({
        "tier": "Admin", "priority": 15, "subject": {"namespaces": ns("a")},
        "egress": [
            {"name": "to-b", "action": "Accept", "to": [{"namespaces": ns("b")}]},
            {"action": "Deny", "to": [{"pods": {"namespaceSelector": ns("c"), "podSelector": {}}}, {"networks": ["10.0.0.1/8"]}],
             "protocols": [{"tcp": {"destinationPort": {"number": 80}}},
                           {"udp": {"destinationPort": {"range": {"start": 53, "end": 54}}}},
                           {"sctp": {"destinationPort": {"number": 9003}}},
                           {"destinationNamedPort": "web"}]},
        ],
        "ingress": [{"action": "Pass", "from": [{"namespaces": {}}]}],
    })))
    .unwrap();
    assert_eq!((p.tier, p.priority), (Tier::Admin, 15));
    assert_eq!(p.egress.len(), 2);
    assert_eq!(p.egress[0].name.as_deref(), Some("to-b"));
    assert_eq!(p.egress[0].ports, None, "no protocols: every protocol and port");
    let deny = &p.egress[1];
    assert_eq!(deny.action, Action::Deny);
    assert_eq!(deny.peers[1], ClusterPeer::Networks(vec!["10.0.0.0/8".parse().unwrap()]), "host bits cleared");
    assert_eq!(
        deny.ports.as_deref().unwrap(),
        [
            ClusterPort::Range { protocol: TCP, start: 80, end: 80 },
            ClusterPort::Range { protocol: UDP, start: 53, end: 54 },
            ClusterPort::Range { protocol: SCTP, start: 9003, end: 9003 },
            ClusterPort::Named("web".into()),
        ]
    );
    assert_eq!(p.ingress[0].action, Action::Pass);
    assert!(p.unsupported.is_empty());
}

#[test]
fn aws_ports_and_defaults() {
    let p = ClusterPolicy::parse(&aws(json!({
        "tier": "Baseline", "priority": 100,
        "subject": {"pods": {"namespaceSelector": ns("default"), "podSelector": {"matchLabels": {"app": "nginx"}}}},
        "ingress": [{"action": "Accept", "from": [{"namespaces": {}}],
                     "ports": [{"portNumber": {"port": 53, "protocol": "UDP"}}, {"portRange": {"start": 8000, "end": 8999}},
                               {"namedPort": "http"}]}],
    })))
    .unwrap();
    assert_eq!(p.tier, Tier::Baseline);
    assert_eq!(
        p.ingress[0].ports.as_deref().unwrap(),
        [
            ClusterPort::Range { protocol: UDP, start: 53, end: 53 },
            ClusterPort::Range { protocol: TCP, start: 8000, end: 8999 },
            ClusterPort::Named("http".into()),
        ],
        "protocol defaults to TCP"
    );
    assert_eq!(p.name, "networking.k8s.aws/p", "apart from an upstream policy of the same name");
    let e = ClusterPolicy::parse(&aws(json!({
        "tier": "Admin", "priority": 1, "subject": {"pods": {"podSelector": {}}},
    })))
    .unwrap_err();
    assert_eq!(e.field, "spec.subject.pods.namespaceSelector", "AWS requires it");
}

#[test]
fn errors_name_the_object_and_field() {
    let cases = [
        (json!({"tier": "Admin", "priority": 1001, "subject": {"namespaces": {}}}), "spec.priority"),
        (json!({"tier": "admin", "priority": 1, "subject": {"namespaces": {}}}), "spec.tier"),
        (json!({"tier": "Admin", "priority": 1, "subject": {}}), "spec.subject"),
        (json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}}, "ingres": []}), "spec.ingres"),
        (
            json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                   "ingress": [{"action": "Deny", "from": [{"namespaces": {}}], "ports": []}]}),
            "spec.ingress[0].ports",
        ),
        (
            json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}, "pods": {"podSelector": {}}}}),
            "spec.subject",
        ),
        (
            json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                   "egress": [{"action": "Allow", "to": [{"namespaces": {}}]}]}),
            "spec.egress[0].action",
        ),
        (
            json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                   "egress": [{"action": "Deny", "to": []}]}),
            "spec.egress[0].to",
        ),
        (
            json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                   "egress": [{"action": "Deny", "to": [{"networks": ["10.0.0/8"]}]}]}),
            "spec.egress[0].to[0].networks[0]",
        ),
        (
            json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                   "ingress": [{"action": "Deny", "from": [{"namespaces": {}}],
                                "protocols": [{"tcp": {"destinationPort": {"range": {"start": 80, "end": 80}}}}]}]}),
            "spec.ingress[0].protocols[0].tcp.destinationPort.range.end",
        ),
        (
            json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {"matchExpressions": [{"key": "a", "operator": "In"}]}}}),
            "spec.subject.namespaces",
        ),
    ];
    for (spec, field) in cases {
        let e = ClusterPolicy::parse(&upstream(spec.clone())).unwrap_err();
        assert_eq!(e.field, field, "{spec}");
        assert!(e.to_string().starts_with("ClusterNetworkPolicy p: "), "{e}");
    }
}

#[test]
fn unknown_peers_and_ports_fail_closed() {
    let p = ClusterPolicy::parse(&upstream(json!({
        "tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
        "egress": [
            {"action": "Accept", "to": [{"domainNames": ["example.com"]}, {"namespaces": {}}]},
            {"action": "Pass", "to": [{"nodes": {}}]},
            {"action": "Accept", "to": [{"namespaces": {}}], "protocols": [{"icmp": {}}]},
            {"action": "Deny", "to": [{}]},
        ],
        "ingress": [{"action": "Accept", "from": [{"networks": ["10.0.0.0/8"]}]}],
    })))
    .unwrap();
    assert!(p.egress[0].peers.is_empty(), "an Accept with an unknown peer accepts nothing");
    assert_eq!(p.egress[1], ClusterRule::deny_everything(None), "a Pass it cannot read denies everything");
    assert!(p.egress[2].peers.is_empty(), "an Accept with an unknown protocol accepts nothing");
    assert_eq!(p.egress[3], ClusterRule::deny_everything(None));
    assert!(p.ingress[0].peers.is_empty(), "networks is an egress peer only");
    let fields: Vec<&str> = p.unsupported.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.ingress[0].from[0].networks",
            "spec.egress[0].to[0].domainNames",
            "spec.egress[1].to[0].nodes",
            "spec.egress[2].protocols[0].icmp",
            "spec.egress[3].to[0]",
        ]
    );
}

#[test]
fn an_invalid_object_fails_closed_on_its_subject() {
    let obj = upstream(json!({"tier": "Baseline", "priority": 5000, "subject": {"namespaces": ns("a")},
                              "egress": [{"action": "Accept", "to": [{"networks": ["bad"]}]}]}));
    assert!(ClusterPolicy::parse(&obj).is_err());
    let closed = ClusterPolicy::failing_closed(&obj).unwrap();
    assert_eq!(closed.tier, Tier::Baseline);
    assert!(closed.ingress.is_empty());
    assert_eq!(closed.egress, [ClusterRule::deny_everything(None)]);
    assert_eq!(ClusterPolicy::failing_closed(&upstream(json!({"tier": "Admin"}))), None, "no subject to close");
}
