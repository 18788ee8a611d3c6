//! The families written out case by case (Cyclonus' `examplecases.go`,
//! `actioncases.go`, `conflictcases.go`, `upstreame2ecases.go`).
use serde_json::{Value, json};

use super::{
    Action, GenCase, GenStep, Kind, Probes, labels,
    netpol::{Netpol, Rule, allow_dns, base, empty_selector, match_labels, port, tcp},
    step,
};

fn create(policy: &Netpol) -> Action {
    Action::CreatePolicy(policy.to_json())
}

/// A policy of every pod in x admitting TCP on `serve-81-tcp` from anyone.
fn allow_named_81() -> Netpol {
    Netpol::new("allow-all", "x", json!({"matchLabels": {}}))
        .with(true, vec![Rule { ports: vec![port(None, Some(json!("serve-81-tcp")), None)], peers: Vec::new() }])
}

pub fn example() -> Vec<GenCase> {
    let probe81 = |actions| GenStep { actions, probes: Probes::Tcp81 };
    vec![GenCase::steps(
        Kind::Example,
        "should allow ingress access on one named port",
        &["example"],
        vec![
            step(vec![create(&allow_named_81())]),
            step(vec![
                Action::CreateNamespace("w".into(), labels(&[("ns", "w")])),
                Action::CreatePod("w/a".into(), labels(&[("pod", "a")])),
            ]),
            step(vec![Action::DeletePod("w/a".into())]),
            step(vec![Action::DeleteNamespace("w".into())]),
            step(Vec::new()),
            probe81(Vec::new()),
            probe81(Vec::new()),
        ],
    )]
}

pub fn action() -> Vec<GenCase> {
    let create_base = || create(&base());
    let peers_only = |peer: Value| create(&base().set_peers(true, vec![peer]));
    vec![
        GenCase::steps(
            Kind::Action,
            "Create/delete policy",
            &["create-policy", "delete-policy"],
            vec![step(vec![create_base()]), step(vec![Action::DeletePolicy("x".into(), "base".into())])],
        ),
        GenCase::steps(
            Kind::Action,
            "Create/update policy",
            &["create-policy", "update-policy"],
            vec![
                step(vec![create_base()]),
                step(vec![Action::UpdatePolicy(
                    base().set_ports(true, vec![port(Some("UDP"), Some(json!("serve-81-udp")), None)]).to_json(),
                )]),
            ],
        ),
        GenCase::steps(
            Kind::Action,
            "Create/delete namespace",
            &["create-namespace", "delete-namespace"],
            vec![
                step(vec![create_base()]),
                step(vec![
                    Action::CreateNamespace("y-2".into(), labels(&[("ns", "y")])),
                    Action::CreatePod("y-2/a".into(), labels(&[("pod", "a")])),
                    Action::CreatePod("y-2/b".into(), labels(&[("pod", "b")])),
                ]),
                step(vec![Action::DeleteNamespace("y-2".into())]),
            ],
        ),
        GenCase::steps(
            Kind::Action,
            "Update namespace so that policy applies, then again so it no longer applies",
            &["set-namespace-labels"],
            vec![
                step(vec![peers_only(json!({"namespaceSelector": match_labels("new-ns", "qrs")}))]),
                step(vec![Action::SetNamespaceLabels("y".into(), labels(&[("ns", "y"), ("new-ns", "qrs")]))]),
                step(vec![Action::SetNamespaceLabels("y".into(), labels(&[("ns", "y")]))]),
            ],
        ),
        GenCase::steps(
            Kind::Action,
            "Create/delete pod",
            &["create-pod", "delete-pod"],
            vec![
                step(vec![create_base()]),
                step(vec![Action::CreatePod("x/d".into(), labels(&[("pod", "d")]))]),
                step(vec![Action::DeletePod("x/d".into())]),
            ],
        ),
        GenCase::steps(
            Kind::Action,
            "Update pod so that policy applies, then again so it no longer applies",
            &["set-pod-labels"],
            vec![
                step(vec![peers_only(json!({"podSelector": match_labels("new-label", "abc"),
                                              "namespaceSelector": super::netpol::match_in("ns", &["y", "z"])}))]),
                step(vec![Action::SetPodLabels("y/b".into(), labels(&[("pod", "b"), ("new-label", "abc")]))]),
                step(vec![Action::SetPodLabels("y/b".into(), labels(&[("pod", "b")]))]),
            ],
        ),
    ]
}

/// Rules of the conflict cases; none has ports.
fn peers_rule(peer: Value) -> Vec<Rule> {
    vec![Rule { ports: Vec::new(), peers: vec![peer] }]
}

pub fn conflict() -> Vec<GenCase> {
    // The source is x's pod b, the destination y's pod c.
    let source = |name: &str| Netpol::new(name, "x", match_labels("pod", "b"));
    let dest = |name: &str| Netpol::new(name, "y", match_labels("pod", "c"));
    let allow_all = || vec![Rule::default()];
    let deny_all = Vec::new;
    let all_by_pod = || peers_rule(json!({"namespaceSelector": empty_selector()}));
    let all_by_ip = || peers_rule(json!({"ipBlock": {"cidr": "0.0.0.0/0"}}));
    let none_by_ip = || peers_rule(json!({"ipBlock": {"cidr": "0.0.0.0/31"}}));
    let none_by_pod = || peers_rule(json!({"namespaceSelector": match_labels("this-will-never-happen", "qrs123")}));
    let (ing, eg) = (true, false);
    // (description, tags, policies), in Cyclonus' order, quirks kept: the
    // ingress cases from the ninth on select the source, and two "by pod"
    // policies are named "-by-ip".
    let cases: Vec<(&str, Vec<&'static str>, Vec<Netpol>)> = vec![
        (
            "deny all from source, allow all to dest",
            vec!["deny-all", "allow-all", "ingress", "egress"],
            vec![source("deny-all-egress").with(eg, deny_all()), dest("allow-all-ingress").with(ing, allow_all())],
        ),
        (
            "allow all from source, deny all to dest",
            vec!["deny-all", "allow-all", "ingress", "egress"],
            vec![source("allow-all-egress").with(eg, allow_all()), dest("deny-all-ingress").with(ing, deny_all())],
        ),
        (
            "deny all + allow all from same source",
            vec!["deny-all", "allow-all", "egress"],
            vec![source("deny-all-egress").with(eg, deny_all()), source("allow-all-egress").with(eg, allow_all())],
        ),
        (
            "deny all + allow all to same dest",
            vec!["deny-all", "allow-all", "ingress"],
            vec![dest("deny-all-ingress").with(ing, deny_all()), dest("allow-all-ingress").with(ing, allow_all())],
        ),
        (
            "deny all + allow all by pod from same source",
            vec!["deny-all", "all-pods", "all-namespaces", "egress"],
            vec![
                source("deny-all-egress").with(eg, deny_all()),
                source("allow-all-egress-by-pod").with(eg, all_by_pod()),
            ],
        ),
        (
            "deny all + allow all by IP from same source",
            vec!["deny-all", "egress"],
            vec![
                source("deny-all-egress").with(eg, deny_all()),
                source("allow-all-egress-by-ip").with(eg, all_by_ip()),
            ],
        ),
        (
            "deny all by IP + allow all by pod from same source",
            vec!["all-pods", "all-namespaces", "egress"],
            vec![
                source("deny-all-egress-by-ip").with(eg, none_by_ip()),
                source("allow-all-egress-by-pod").with(eg, all_by_pod()),
            ],
        ),
        (
            "deny all by pod + allow all by IP from same source",
            vec!["egress"],
            vec![
                source("deny-all-egress-by-pod").with(eg, none_by_pod()),
                source("allow-all-egress-by-ip").with(eg, all_by_ip()),
            ],
        ),
        (
            "deny all + allow all by pod to same source",
            vec!["deny-all", "ingress", "all-pods", "all-namespaces"],
            vec![
                source("deny-all-ingress").with(ing, deny_all()),
                source("allow-all-ingress-by-pod").with(ing, all_by_pod()),
            ],
        ),
        (
            "deny all + allow all by IP to same source",
            vec!["deny-all", "ingress"],
            vec![
                source("deny-all-ingress").with(ing, deny_all()),
                source("allow-all-ingress-by-ip").with(ing, all_by_ip()),
            ],
        ),
        (
            "deny all by IP + allow all by pod to same source",
            vec!["ingress", "all-pods", "all-namespaces"],
            vec![
                source("deny-all-ingress-by-ip").with(ing, none_by_ip()),
                source("allow-all-ingress-by-pod").with(ing, all_by_pod()),
            ],
        ),
        (
            "deny all by pod + allow all by IP to same source",
            vec!["ingress"],
            vec![
                source("deny-all-ingress-by-pod").with(ing, none_by_pod()),
                source("allow-all-ingress-by-ip").with(ing, all_by_ip()),
            ],
        ),
        ("egress: deny all by IP", vec!["egress"], vec![source("deny-all-egress-by-ip").with(eg, none_by_ip())]),
        ("egress: deny all by pod", vec!["egress"], vec![source("deny-all-egress-by-ip").with(eg, none_by_pod())]),
        ("ingress: deny all by IP", vec!["ingress"], vec![source("deny-all-ingress-by-ip").with(ing, none_by_ip())]),
        ("ingress: deny all by pod", vec!["ingress"], vec![source("deny-all-ingress-by-ip").with(ing, none_by_pod())]),
    ];
    cases
        .into_iter()
        .map(|(description, mut tags, policies)| {
            let mut actions: Vec<Action> = policies.iter().map(create).collect();
            // Cyclonus' allow-dns option (on by default): the source may
            // resolve names whenever a case limits egress.
            if policies.iter().any(|p| p.egress.is_some()) {
                actions.push(create(&source("allow-dns").with(eg, vec![allow_dns()])));
            }
            tags.push("conflict");
            GenCase::one_step(Kind::Conflict, description, &tags, actions)
        })
        .collect()
}

pub fn upstream_e2e() -> Vec<GenCase> {
    let all_in_x = || json!({"matchLabels": {}});
    let pod = |name: &str| match_labels("pod", name);
    let from = |peer: Value| vec![Rule { ports: Vec::new(), peers: vec![peer] }];
    let one = |description: &str, tags: &[&'static str], actions: Vec<Action>| {
        GenCase::one_step(Kind::UpstreamE2E, description, tags, actions)
    };
    let steps = |description: &str, tags: &[&'static str], steps: Vec<GenStep>| {
        GenCase::steps(Kind::UpstreamE2E, description, tags, steps)
    };
    let via_ns_selector = |name: &str, n: u16| {
        Netpol::new(name, "x", pod("a")).with(
            true,
            vec![Rule { ports: vec![tcp(n)], peers: vec![json!({"namespaceSelector": match_labels("ns", "y")})] }],
        )
    };
    let allow_all = Netpol::new("allow-all", "x", all_in_x()).with(true, vec![Rule::default()]);
    let mutate = |rules: Vec<Rule>| Netpol::new("allow-all-mutate-to-deny-all", "x", all_in_x()).with(true, rules);
    let x_a = json!({"namespaceSelector": match_labels("ns", "x"), "podSelector": pod("a")});
    vec![
        one(
            "should support a 'default-deny-ingress' policy",
            &["upstream-e2e", "ingress", "deny-all"],
            vec![create(&Netpol::new("deny-ingress", "x", empty_selector()).with(true, Vec::new()))],
        ),
        one(
            "should support a 'default-deny-all' policy",
            &["upstream-e2e", "deny-all"],
            vec![create(&{
                let mut p = Netpol::new("deny-all-allow-dns", "x", empty_selector()).with(false, vec![allow_dns()]);
                p.ingress = Some(Vec::new());
                p
            })],
        ),
        one(
            "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
            &["upstream-e2e"],
            vec![create(&Netpol::new("allow-ns-y-z-pod-b-c", "x", pod("a")).with(
                true,
                from(json!({"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]},
                            "podSelector": super::netpol::match_in("pod", &["b", "c"])})),
            ))],
        ),
        steps(
            "should enforce multiple, stacked policies with overlapping podSelectors [Feature:NetworkPolicy]",
            &["upstream-e2e"],
            vec![
                step(vec![create(&via_ns_selector("allow-client-a-via-ns-selector-81", 81))]),
                step(Vec::new()),
                step(vec![create(&via_ns_selector("allow-client-a-via-ns-selector-80", 80))]),
            ],
        ),
        steps(
            "should support allow-all policy",
            &["upstream-e2e", "allow-all"],
            vec![step(vec![create(&allow_all)]), step(Vec::new())],
        ),
        steps(
            "should allow ingress access on one named port",
            &["upstream-e2e", "ingress", "named-port"],
            vec![GenStep { actions: vec![create(&allow_named_81())], probes: Probes::Tcp81 }, step(Vec::new())],
        ),
        steps(
            "should enforce updated policy",
            &["upstream-e2e"],
            vec![
                step(vec![create(&mutate(vec![Rule::default()]))]),
                step(vec![Action::UpdatePolicy(mutate(Vec::new()).to_json())]),
            ],
        ),
        steps(
            "should allow ingress access from updated namespace",
            &["upstream-e2e"],
            vec![
                step(vec![create(
                    &Netpol::new("allow-client-a-via-ns-selector", "x", pod("a"))
                        .with(true, from(json!({"namespaceSelector": match_labels("ns2", "updated")}))),
                )]),
                step(vec![Action::SetNamespaceLabels("y".into(), labels(&[("ns", "y"), ("ns2", "updated")]))]),
            ],
        ),
        steps(
            "should allow ingress access from updated pod",
            &["upstream-e2e"],
            vec![
                step(vec![create(
                    &Netpol::new("allow-client-a-via-pod-selector", "x", pod("a"))
                        .with(true, from(json!({"podSelector": {"matchLabels": {"pod": "b", "pod2": "updated"}}}))),
                )]),
                step(vec![Action::SetPodLabels("x/b".into(), labels(&[("pod", "b"), ("pod2", "updated")]))]),
            ],
        ),
        steps(
            "should deny ingress access to updated pod",
            &["upstream-e2e"],
            vec![
                step(vec![create(
                    &Netpol::new("deny-ingress-via-label-selector", "x", match_labels("target", "isolated"))
                        .with(true, Vec::new()),
                )]),
                step(vec![Action::SetPodLabels("x/a".into(), labels(&[("target", "isolated")]))]),
            ],
        ),
        steps(
            "should work with Ingress, Egress specified together",
            &["upstream-e2e"],
            vec![
                step(vec![create(
                    &Netpol::new("allow-client-a-via-pod-selector", "x", pod("a"))
                        .with(true, from(json!({"podSelector": pod("b")})))
                        .with(
                            false,
                            vec![Rule {
                                ports: vec![port(None, Some(json!(80)), None), port(Some("UDP"), Some(json!(53)), None)],
                                peers: Vec::new(),
                            }],
                        ),
                )]),
                step(Vec::new()),
            ],
        ),
        one(
            "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
            &["upstream-e2e", "conflict"],
            vec![
                create(&Netpol::new("allow-to-ns-y-pod-a", "x", pod("a")).with(
                    false,
                    vec![
                        Rule { ports: Vec::new(), peers: vec![json!({"namespaceSelector": match_labels("ns", "y"), "podSelector": pod("a")})] },
                        Rule { ports: vec![port(Some("UDP"), Some(json!(53)), None)], peers: Vec::new() },
                    ],
                )),
                create(&Netpol::new("allow-from-xa-on-ya-match-selector", "y", pod("a")).with(true, from(x_a.clone()))),
                create(&Netpol::new("allow-from-xa-on-yb-match-selector", "y", pod("b")).with(true, from(x_a))),
            ],
        ),
        steps(
            "should stop enforcing policies after they are deleted",
            &["upstream-e2e", "deny-all", "delete-policy"],
            vec![
                step(vec![create(&Netpol::new("deny-all", "x", empty_selector()).with(true, Vec::new()).with(false, Vec::new()))]),
                step(vec![Action::DeletePolicy("x".into(), "deny-all".into())]),
            ],
        ),
    ]
}
