use std::net::IpAddr;

use na_common::protocol::{TCP, UDP};
use serde_json::json;

use super::*;
use crate::lpm::judge;

const NODE: &str = "node-1";

fn pod(ns: &str, name: &str, labels: serde_json::Value, ip: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": format!("uid-{ns}-{name}")},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "dns", "containerPort": 5353, "protocol": "UDP"}
        ]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .unwrap()
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})).unwrap()
}

fn compiler() -> Compiler {
    let mut c = Compiler::new(CompileOptions {
        node_name: NODE.into(),
        node_ips: vec!["192.0.2.1".parse().unwrap()],
        allow_node: true,
        strict: false,
        audit: false,
    });
    c.upsert_pod(&pod("x", "a", json!({"pod": "a"}), "10.0.0.1", NODE));
    c.upsert_pod(&pod("x", "b", json!({"pod": "b"}), "10.0.0.2", NODE));
    c.upsert_pod(&pod("y", "c", json!({"pod": "c"}), "10.0.1.1", "node-2"));
    c
}

fn rules(c: &mut Compiler, ns: &str, name: &str) -> PodRules {
    c.compile([&ObjectRef::new(ns, name)]).into_values().next().unwrap().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn unselected_pods_are_default_allow_and_remote_pods_are_not_compiled() {
    let mut c = compiler();
    let all = c.compile_all();
    assert_eq!(all.keys().map(ToString::to_string).collect::<Vec<_>>(), ["x/a", "x/b"]);
    assert!(all.values().all(|r| r.as_ref().unwrap() == &PodRules::default()));
}

#[test]
fn deny_all_leaves_only_the_node() {
    let mut c = compiler();
    c.upsert_policy(&policy("x", "deny", json!({"podSelector": {}}))).unwrap();
    let r = rules(&mut c, "x", "a");
    assert_eq!(r.ingress.mode, Mode::PoliciesApplied);
    assert_eq!(r.egress.mode, Mode::DefaultAllow);
    assert_eq!(judge(&r.ingress, ip("10.0.0.2"), TCP, Some(80)), None);
    assert_eq!(judge(&r.ingress, ip("192.0.2.1"), TCP, Some(10250)), Some(POLICY_ID_HOST));
}

#[test]
fn the_policies_isolating_a_pod_are_named_per_direction() {
    let mut c = compiler();
    c.upsert_policy(&policy("x", "deny", json!({"podSelector": {}}))).unwrap();
    c.upsert_policy(&policy(
        "x",
        "a-out",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress", "Egress"]}),
    ))
    .unwrap();
    c.upsert_policy(&policy("y", "deny", json!({"podSelector": {}}))).unwrap();
    let names = |key: &ObjectRef, dir| c.isolating(key, dir).iter().map(ToString::to_string).collect::<Vec<_>>();
    let (a, b) = (ObjectRef::new("x", "a"), ObjectRef::new("x", "b"));
    assert_eq!(names(&a, Direction::Ingress), ["x/a-out", "x/deny"]);
    assert_eq!(names(&a, Direction::Egress), ["x/a-out"]);
    assert_eq!(names(&b, Direction::Ingress), ["x/deny"]);
    assert!(names(&b, Direction::Egress).is_empty(), "no Egress policy type selects b");
    // A pod not known yet is judged as one without labels.
    assert_eq!(names(&ObjectRef::new("x", "new"), Direction::Ingress), ["x/deny"]);
}

#[test]
fn union_survives_except_in_another_policy() {
    let mut c = compiler();
    c.upsert_policy(&policy(
        "x",
        "dns",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "UDP", "port": 53}]}]}),
    ))
    .unwrap();
    c.upsert_policy(&policy(
        "x",
        "web",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [{"port": 443}]}]}),
    ))
    .unwrap();
    let r = rules(&mut c, "x", "a");
    assert!(judge(&r.egress, ip("10.9.9.9"), UDP, Some(53)).is_some(), "port 53 to 10.x still allowed");
    assert!(judge(&r.egress, ip("10.9.9.9"), TCP, Some(443)).is_none());
    assert!(judge(&r.egress, ip("8.8.8.8"), TCP, Some(443)).is_some());
}

#[test]
fn named_ports_resolve_per_side() {
    let mut c = compiler();
    c.upsert_pod(&serde_json::from_value(json!({
        "metadata": {"name": "d", "namespace": "x", "labels": {"pod": "d"}},
        "spec": {"nodeName": "node-2", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 9090}]}]},
        "status": {"phase": "Running", "podIP": "10.0.0.4"}
    })).unwrap());
    c.upsert_policy(&policy("x", "named", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"ports": [{"port": "http"}]}],
        "egress": [{"to": [{"podSelector": {}}, {"ipBlock": {"cidr": "172.16.0.0/12"}}], "ports": [{"port": "http"}, {"protocol": "UDP", "port": "dns"}]}]})))
    .unwrap();
    let r = rules(&mut c, "x", "a");
    // Ingress: the target's own "http" is 8080, from anywhere.
    assert!(judge(&r.ingress, ip("10.0.0.2"), TCP, Some(8080)).is_some());
    assert!(judge(&r.ingress, ip("10.0.0.2"), TCP, Some(9090)).is_none());
    // Egress: "http" is 8080 on b but 9090 on d.
    assert!(judge(&r.egress, ip("10.0.0.2"), TCP, Some(8080)).is_some());
    assert!(judge(&r.egress, ip("10.0.0.2"), TCP, Some(9090)).is_none());
    assert!(judge(&r.egress, ip("10.0.0.4"), TCP, Some(9090)).is_some());
    assert!(judge(&r.egress, ip("10.0.0.4"), TCP, Some(8080)).is_none());
    assert!(judge(&r.egress, ip("10.0.0.4"), UDP, Some(5353)).is_none(), "d has no dns port");
    assert!(judge(&r.egress, ip("10.0.0.2"), UDP, Some(5353)).is_some());
    // A named port on an address block matches nothing.
    assert!(judge(&r.egress, ip("172.16.0.1"), TCP, Some(8080)).is_none());
}

#[test]
fn host_network_and_terminal_pods_are_not_peers() {
    let mut c = compiler();
    let mut host = pod("x", "h", json!({"pod": "h"}), "10.0.0.9", "node-2");
    host.spec.as_mut().unwrap().host_network = Some(true);
    c.upsert_pod(&host);
    let mut done = pod("x", "j", json!({"pod": "j"}), "10.0.0.10", "node-2");
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    c.upsert_pod(&done);
    c.upsert_policy(&policy("x", "all-pods", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})))
        .unwrap();
    let r = rules(&mut c, "x", "a");
    assert!(judge(&r.ingress, ip("10.0.0.2"), TCP, Some(1)).is_some());
    assert!(judge(&r.ingress, ip("10.0.0.9"), TCP, Some(1)).is_none());
    assert!(judge(&r.ingress, ip("10.0.0.10"), TCP, Some(1)).is_none());
}

#[test]
fn finished_pods_are_not_local() {
    let mut c = compiler();
    c.take_dirty();
    let mut done = pod("x", "a", json!({"pod": "a"}), "10.0.0.1", NODE);
    done.status.as_mut().unwrap().phase = Some("Failed".into());
    c.upsert_pod(&done);
    assert_eq!(c.take_dirty(), [ObjectRef::new("x", "a")].into(), "its rules must be removed");
    assert_eq!(c.local_pods().map(|p| p.key.to_string()).collect::<Vec<_>>(), ["x/b"]);
}

#[test]
fn changes_mark_exactly_the_affected_local_pods() {
    let mut c = compiler();
    c.take_dirty();
    c.upsert_policy(&policy("x", "from-c", json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}, "podSelector": {"matchLabels": {"pod": "c"}}}]}]})))
    .unwrap();
    assert_eq!(c.take_dirty(), [ObjectRef::new("x", "a")].into());
    // c is not yet a peer (its namespace lacks the label): a label on c alone
    // changes nothing, the namespace label does.
    c.upsert_pod(&pod("y", "c", json!({"pod": "c", "v": "2"}), "10.0.1.1", "node-2"));
    assert!(c.take_dirty().is_empty());
    c.upsert_namespace(
        &serde_json::from_value(json!({"metadata": {"name": "y", "labels": {"team": "blue"}}})).unwrap(),
    );
    assert_eq!(c.take_dirty(), [ObjectRef::new("x", "a")].into());
    let r = rules(&mut c, "x", "a");
    assert!(judge(&r.ingress, ip("10.0.1.1"), TCP, Some(80)).is_some());
    // Now c's IP change matters; b's labels do not.
    c.upsert_pod(&pod("y", "c", json!({"pod": "c", "v": "2"}), "10.0.1.2", "node-2"));
    assert_eq!(c.take_dirty(), [ObjectRef::new("x", "a")].into());
    c.upsert_pod(&pod("x", "b", json!({"pod": "b", "new": "1"}), "10.0.0.2", NODE));
    assert_eq!(c.take_dirty(), [ObjectRef::new("x", "b")].into(), "b itself only");
    c.remove_policy(&ObjectRef::new("x", "from-c"));
    assert_eq!(c.take_dirty(), [ObjectRef::new("x", "a")].into());
}

#[test]
fn over_capacity_is_an_error_for_that_pod_only() {
    let mut c = compiler();
    let ports: Vec<_> = (0..65).map(|i| json!({"port": 1000 + 2 * i})).collect();
    c.upsert_policy(&policy(
        "x",
        "many",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": ports}]}),
    ))
    .unwrap();
    let out = c.compile_all();
    let err = out[&ObjectRef::new("x", "a")].as_ref().unwrap_err();
    assert!(matches!(err, CompileError::TooManyRules { count: 65, .. }), "{err}");
    assert!(err.to_string().contains("pod x/a"), "{err}");
    assert!(out[&ObjectRef::new("x", "b")].is_ok());
    // What the pod gets instead: its isolated direction admits the node alone.
    let closed = c.fail_closed(&ObjectRef::new("x", "a"));
    assert_eq!(closed.ingress.mode, Mode::DefaultDeny);
    assert_eq!(judge(&closed.ingress, ip("10.0.0.2"), TCP, Some(1000)), None);
    assert_eq!(judge(&closed.ingress, ip("192.0.2.1"), TCP, Some(10250)), Some(POLICY_ID_HOST));
    assert_eq!(closed.egress, DirectionRules::default(), "egress is not isolated: it stays open");
}

#[test]
fn an_invalid_policy_isolates_what_it_selects_and_grants_nothing() {
    let mut c = compiler();
    let bad = policy(
        "x",
        "bad",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"ipBlock": {"cidr": "nope"}}]}]}),
    );
    let err = c.upsert_policy(&bad).unwrap_err();
    assert_eq!(err.field, "spec.ingress[0].from[0].ipBlock.cidr");
    assert_eq!(c.invalid_policies().count(), 1);
    let a = rules(&mut c, "x", "a");
    assert_eq!(a.ingress.mode, Mode::PoliciesApplied, "left out, the policy would leave a open");
    assert_eq!(judge(&a.ingress, ip("10.0.0.2"), TCP, Some(80)), None);
    assert_eq!(judge(&a.ingress, ip("192.0.2.1"), TCP, Some(10250)), Some(POLICY_ID_HOST));
    assert_eq!(a.egress.mode, Mode::DefaultAllow, "it never isolated egress");
    assert_eq!(rules(&mut c, "x", "b"), PodRules::default(), "it never selected b");
    // Grants of valid policies still apply beside it.
    c.upsert_policy(&policy(
        "x",
        "from-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ))
    .unwrap();
    assert!(judge(&rules(&mut c, "x", "a").ingress, ip("10.0.0.2"), TCP, Some(80)).is_some());
    // Fixed, it is an ordinary policy again.
    c.upsert_policy(&policy("x", "bad", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{}]})))
        .unwrap();
    assert_eq!(c.invalid_policies().count(), 0);
    assert!(judge(&rules(&mut c, "x", "a").ingress, ip("10.9.9.9"), TCP, Some(80)).is_some());
    // What cannot be read of it is read as closing more, never less: a bad
    // selector selects the whole namespace, an unknown type isolates both ways.
    let bad_selector = json!({"podSelector": {"matchExpressions": [{"key": "k", "operator": "Near"}]}});
    assert!(c.upsert_policy(&policy("x", "bad", bad_selector)).is_err());
    assert_eq!(rules(&mut c, "x", "b").ingress.mode, Mode::PoliciesApplied);
    let bad_type = json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Sideways"]});
    assert!(c.upsert_policy(&policy("x", "bad", bad_type)).is_err());
    let b = rules(&mut c, "x", "b");
    assert_eq!((b.ingress.mode, b.egress.mode), (Mode::PoliciesApplied, Mode::PoliciesApplied));
    c.remove_policy(&ObjectRef::new("x", "bad"));
    assert_eq!(rules(&mut c, "x", "b"), PodRules::default());
}

#[test]
fn strict_mode_keeps_unisolated_directions_closed() {
    // AWS issue 319: in strict mode an egress-only policy opened ingress.
    let mut c = compiler();
    c.upsert_policy(&policy(
        "x",
        "egress-only",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"ports": [{"protocol": "UDP", "port": 53}]}]}),
    ))
    .unwrap();
    let standard = rules(&mut c, "x", "a");
    assert_eq!(standard.ingress.mode, Mode::DefaultAllow);
    c.options.strict = true;
    let strict = rules(&mut c, "x", "a");
    assert_eq!(strict.ingress.mode, Mode::DefaultDeny);
    assert!(judge(&strict.ingress, ip("10.0.0.2"), TCP, Some(80)).is_none());
    assert!(judge(&strict.ingress, ip("192.0.2.1"), TCP, Some(10250)).is_some(), "kubelet still reaches the pod");
    assert!(judge(&strict.egress, ip("10.0.0.2"), UDP, Some(53)).is_some());
    assert!(judge(&strict.egress, ip("10.0.0.2"), TCP, Some(80)).is_none());
}

#[test]
fn a_pod_not_known_yet_gets_its_modes_default() {
    let unknown = ObjectRef::new("x", "new");
    assert_eq!(compiler().fail_closed(&unknown), PodRules::default(), "standard mode: open");
    let mut strict = compiler();
    strict.options.strict = true;
    let closed = strict.fail_closed(&unknown);
    for dir in Direction::BOTH {
        assert_eq!(closed.direction(dir).mode, Mode::DefaultDeny, "{dir}");
    }
    assert_eq!(judge(&closed.ingress, ip("192.0.2.1"), TCP, Some(10250)), Some(POLICY_ID_HOST), "kubelet probes");
    assert_eq!(judge(&closed.egress, ip("10.0.0.2"), TCP, Some(80)), None);
}

#[test]
fn a_pod_not_known_yet_is_held_to_the_policies_that_select_every_pod() {
    let mut c = compiler();
    let unknown = ObjectRef::new("x", "new");
    assert_eq!(c.compile_unknown(&unknown).unwrap(), PodRules::default(), "no policy: open in standard mode");
    c.upsert_policy(&policy("x", "by-label", json!({"podSelector": {"matchLabels": {"pod": "new"}}, "egress": []})))
        .unwrap();
    assert_eq!(c.compile_unknown(&unknown).unwrap(), PodRules::default(), "its labels are not known yet");
    c.upsert_policy(&policy(
        "x",
        "deny-all-but-b",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ))
    .unwrap();
    let r = c.compile_unknown(&unknown).unwrap();
    assert_eq!(r.ingress.mode, Mode::PoliciesApplied, "a policy for every pod holds for it");
    assert!(judge(&r.ingress, ip("10.0.0.2"), TCP, Some(80)).is_some(), "b is admitted");
    assert_eq!(judge(&r.ingress, ip("10.0.0.1"), TCP, Some(80)), None, "a is not");
    assert_eq!(r.egress, DirectionRules::default());
    assert!(c.compile_unknown(&ObjectRef::new("y", "new")).unwrap() == PodRules::default(), "another namespace");
}

#[test]
fn addresses_a_cni_reported_reach_the_pod_and_the_policies_naming_it() {
    let mut c = compiler();
    c.upsert_policy(&policy(
        "x",
        "from-new",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "new"}}}]}]}),
    ))
    .unwrap();
    let mut new = pod("x", "new", json!({"pod": "new"}), "10.0.0.9", NODE);
    new.status = None;
    c.upsert_pod(&new);
    c.take_dirty();
    let key = ObjectRef::new("x", "new");
    c.set_pod_ips(&key, &[ip("10.0.0.9")]);
    assert_eq!(c.pod(&key).unwrap().ips, [ip("10.0.0.9")]);
    assert_eq!(c.take_dirty(), [ObjectRef::new("x", "a"), key.clone()].into());
    assert!(judge(&rules(&mut c, "x", "a").ingress, ip("10.0.0.9"), TCP, Some(80)).is_some());
    // Only a pod without addresses takes them: these come from the API server.
    c.upsert_pod(&pod("x", "new", json!({"pod": "new"}), "10.0.0.9", NODE));
    c.set_pod_ips(&key, &[ip("10.0.0.10")]);
    assert_eq!(c.pod(&key).unwrap().ips, [ip("10.0.0.9")]);
    assert!(c.take_dirty().is_empty());
}

#[test]
fn pods_with_the_same_labels_share_one_set_which_goes_with_the_last() {
    let mut c = Compiler::new(CompileOptions::default());
    c.upsert_pod(&pod("x", "a", json!({"app": "web"}), "10.0.0.1", "elsewhere"));
    c.upsert_pod(&pod("y", "b", json!({"app": "web"}), "10.0.0.2", "elsewhere"));
    c.upsert_pod(&pod("x", "c", json!({"app": "db"}), "10.0.0.3", "elsewhere"));
    let labels = |c: &Compiler, ns: &str, name: &str| c.pod(&ObjectRef::new(ns, name)).unwrap().labels.clone();
    assert!(Arc::ptr_eq(&labels(&c, "x", "a"), &labels(&c, "y", "b")));
    assert_eq!(c.label_sets.len(), 2);
    // Relabelled: its old set stays for the pod that still has it.
    c.upsert_pod(&pod("x", "a", json!({"app": "db"}), "10.0.0.1", "elsewhere"));
    assert!(Arc::ptr_eq(&labels(&c, "x", "a"), &labels(&c, "x", "c")));
    assert_eq!(c.label_sets.len(), 2);
    c.remove_pod(&ObjectRef::new("y", "b"));
    assert_eq!(c.label_sets.len(), 1, "no pod has app=web any more");
    c.remove_pod(&ObjectRef::new("x", "a"));
    c.remove_pod(&ObjectRef::new("x", "c"));
    assert!(c.label_sets.is_empty());
}

#[test]
fn attribution_ids_of_rules_no_policy_has_are_pruned_unless_still_loaded() {
    let mut c = compiler();
    let two_rules = json!({"podSelector": {}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]},
        {"ports": [{"port": 53, "protocol": "UDP"}]}]});
    c.upsert_policy(&policy("x", "two", two_rules)).unwrap();
    c.upsert_policy(&policy("x", "gone", json!({"podSelector": {}, "ingress": [{}]}))).unwrap();
    rules(&mut c, "x", "a");
    let id_of = |c: &Compiler, name: &str, rule: usize| {
        c.attributions().iter().find(|(_, a)| a.policy.name == name && a.rule == rule).map(|(id, _)| id)
    };
    let (first, second, gone) = (id_of(&c, "two", 0), id_of(&c, "two", 1).unwrap(), id_of(&c, "gone", 0).unwrap());
    assert_eq!(c.attributions().len(), 3);
    assert!(!c.has_retired_rules(), "adding policies retires nothing");

    // "two" loses its second rule and "gone" goes, while a pod still holds
    // the second rule's entries (its newer rules could not be written).
    let one_rule = json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]});
    c.upsert_policy(&policy("x", "two", one_rule)).unwrap();
    c.remove_policy(&ObjectRef::new("x", "gone"));
    assert!(c.has_retired_rules());
    assert_eq!(c.prune_attributions(&HashSet::from([second])), 1);
    assert_eq!(c.attributions().get(gone), None);
    assert!(c.attributions().get(second).is_some(), "the datapath still names it");
    assert!(c.has_retired_rules(), "asked again once the datapath lets go");
    assert_eq!(c.prune_attributions(&HashSet::new()), 1);
    assert_eq!(c.attributions().len(), 1);
    assert!(!c.has_retired_rules());
    assert_eq!(id_of(&c, "two", 0), first, "a rule that stays keeps its id");
}

fn cluster_policy(name: &str, tier: &str, priority: u16, spec: serde_json::Value) -> serde_json::Value {
    let mut obj = json!({"apiVersion": crate::cluster_policy::UPSTREAM_API_VERSION, "kind": "ClusterNetworkPolicy",
                         "metadata": {"name": name}, "spec": {"tier": tier, "priority": priority}});
    for (k, v) in spec.as_object().unwrap() {
        obj["spec"][k] = v.clone();
    }
    obj
}

#[test]
fn cluster_tiers_around_network_policy() {
    let mut c = compiler();
    c.take_dirty();
    let everyone = json!({"namespaces": {}});
    c.upsert_cluster_policy(&cluster_policy(
        "guard",
        "Admin",
        10,
        json!({"subject": everyone, "ingress": [
            {"action": "Deny", "from": [{"pods": {"podSelector": {"matchLabels": {"pod": "c"}}}}]},
        ]}),
    ))
    .unwrap();
    c.upsert_cluster_policy(&cluster_policy(
        "floor",
        "Baseline",
        10,
        json!({"subject": everyone, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    ))
    .unwrap();
    assert_eq!(c.take_dirty().len(), 2, "both local pods are subjects");
    let a = rules(&mut c, "x", "a");
    assert_eq!(a.ingress.mode, Mode::ClusterPolicies);
    assert_eq!(judge(&a.ingress, ip("10.0.1.1"), TCP, Some(80)), None, "the admin Deny");
    assert_eq!(judge(&a.ingress, ip("10.0.0.2"), TCP, Some(80)), None, "the baseline Deny: no NP isolates x/a");
    assert_eq!(judge(&a.ingress, ip("198.51.100.1"), TCP, Some(80)), Some(0), "no rule names it: open");
    assert_eq!(judge(&a.ingress, ip("192.0.2.1"), TCP, Some(10250)), Some(POLICY_ID_HOST), "the node first");

    // A NetworkPolicy takes the direction from the baseline; the admin Deny stays.
    c.upsert_policy(&policy("x", "allow-all", json!({"podSelector": {}, "ingress": [{}]}))).unwrap();
    let a = rules(&mut c, "x", "a");
    assert_eq!(a.ingress.mode, Mode::PoliciesApplied);
    assert!(judge(&a.ingress, ip("10.0.0.2"), TCP, Some(80)).is_some());
    assert_eq!(judge(&a.ingress, ip("10.0.1.1"), TCP, Some(80)), None);

    // A peer moving in or out of a rule's selection recompiles the subjects.
    c.take_dirty();
    c.upsert_pod(&pod("y", "c", json!({"pod": "d"}), "10.0.1.1", "node-2"));
    assert_eq!(c.take_dirty().len(), 2);
    let a = rules(&mut c, "x", "a");
    assert!(judge(&a.ingress, ip("10.0.1.1"), TCP, Some(80)).is_some());
    let id = c.attributions().iter().find(|(_, at)| at.policy.name == "guard").map(|(id, _)| id).unwrap();
    let at = c.attributions().get(id).unwrap();
    assert_eq!(
        (at.policy.to_string(), at.cluster.map(|r| (r.tier, r.priority))),
        ("guard".into(), Some((Tier::Admin, 10)))
    );
}

#[test]
fn an_invalid_cluster_policy_keeps_the_last_good_one_or_fails_closed() {
    let mut c = compiler();
    let deny_c = |port: serde_json::Value| {
        cluster_policy(
            "guard",
            "Admin",
            1,
            json!({"subject": {"namespaces": {}}, "egress": [
                {"action": "Deny", "to": [{"networks": ["10.0.1.0/24"]}], "protocols": [{"tcp": {"destinationPort": {"number": port}}}]},
            ]}),
        )
    };
    c.upsert_cluster_policy(&deny_c(json!(80))).unwrap();
    let e = c.upsert_cluster_policy(&deny_c(json!(0))).unwrap_err();
    assert_eq!(e.field, "spec.egress[0].protocols[0].tcp.destinationPort.number");
    assert_eq!(c.invalid_policies().count(), 1);
    let a = rules(&mut c, "x", "a");
    assert_eq!(judge(&a.egress, ip("10.0.1.1"), TCP, Some(80)), None, "the last good version holds");
    assert_eq!(judge(&a.egress, ip("10.0.1.1"), TCP, Some(81)), Some(0));

    let unknown = cluster_policy(
        "fqdn",
        "Admin",
        2,
        json!({"subject": {"namespaces": {}}, "egress": [
            {"action": "Accept", "to": [{"domainNames": ["example.com"]}]},
            {"action": "Pass", "to": [{"nodes": {}}]},
        ]}),
    );
    let e = c.upsert_cluster_policy(&unknown).unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.reason.ends_with("(and 1 more)")),
        ("spec.egress[0].to[0].domainNames", true),
        "{e}"
    );
    let a = rules(&mut c, "x", "a");
    assert_eq!(judge(&a.egress, ip("198.51.100.7"), TCP, Some(81)), None, "enforced, the Pass failing closed");
    c.remove_cluster_policy("fqdn");

    let mut fresh = compiler();
    assert!(fresh.upsert_cluster_policy(&deny_c(json!(0))).is_err());
    let a = rules(&mut fresh, "x", "a");
    assert_eq!(judge(&a.egress, ip("10.0.1.1"), TCP, Some(81)), None, "no good version: its subject's egress closes");
    assert_eq!(judge(&a.ingress, ip("10.0.1.1"), TCP, Some(81)), Some(0), "it had no ingress rules");
    let moved = cluster_policy(
        "guard",
        "Admin",
        5000,
        json!({"subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}, "egress": [
            {"action": "Deny", "to": [{"networks": ["10.0.1.0/24"]}]},
        ]}),
    );
    assert_eq!(fresh.upsert_cluster_policy(&moved).unwrap_err().field, "spec.priority");
    fresh.take_dirty();
    let a = rules(&mut fresh, "x", "a");
    assert_eq!(judge(&a.egress, ip("10.0.1.1"), TCP, Some(81)), Some(0), "the stand-in follows the new subject");
    fresh.remove_cluster_policy("guard");
    assert_eq!(fresh.invalid_policies().count(), 0);
    assert_eq!(rules(&mut fresh, "x", "a"), PodRules::default());
}

#[test]
fn audited_namespaces_report_network_policy_denials() {
    let mut c = compiler();
    c.upsert_policy(&policy("x", "deny", json!({"podSelector": {}}))).unwrap();
    c.take_dirty();
    let ns = |audit: bool| -> Namespace {
        let annotations = if audit { json!({AUDIT_ANNOTATION: "true"}) } else { json!({}) };
        serde_json::from_value(json!({"metadata": {"name": "x", "annotations": annotations}})).unwrap()
    };
    c.upsert_namespace(&ns(true));
    assert_eq!(c.take_dirty().len(), 2, "the namespace's local pods");
    let a = rules(&mut c, "x", "a");
    assert!(a.ingress.audit);
    let d = crate::lpm::decide(&a.ingress, ip("10.0.0.2"), TCP, Some(80));
    assert!(d.allowed && d.audited);
    c.upsert_namespace(&ns(false));
    assert!(!rules(&mut c, "x", "a").ingress.audit);
}
