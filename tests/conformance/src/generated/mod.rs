//! The generated suite: every case Cyclonus' generator (mattfenwick/cyclonus,
//! `pkg/generator`) produces with every family on, in its order and under
//! its names, on our x/y/z × a/b/c model. Written from reading that code;
//! the expected verdicts are not part of a case: the runner asks
//! `na-policy`'s reference evaluator at every step.
mod built;
mod netpol;
mod scripted;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde_json::Value;

/// Cyclonus' families, in its generation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Target,
    Rules,
    Peers,
    PortProtocol,
    Example,
    Action,
    Conflict,
    Namespace,
    UpstreamE2E,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One generated case.
#[derive(Clone, Debug)]
pub struct GenCase {
    pub kind: Kind,
    /// 1-based position among all 230, as Cyclonus orders them: names repeat
    /// (a peer's name for both directions, port cases named by their tags).
    pub index: usize,
    pub name: String,
    pub tags: BTreeSet<&'static str>,
    pub steps: Vec<GenStep>,
}

/// Actions, then one probe of the whole matrix.
#[derive(Clone, Debug)]
pub struct GenStep {
    pub actions: Vec<Action>,
    pub probes: Probes,
}

/// What a step probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probes {
    /// Every port and protocol the pods serve.
    All,
    /// TCP/81 only (Cyclonus' numbered port 81, or its name `serve-81-tcp`).
    Tcp81,
}

#[derive(Clone, Debug)]
pub enum Action {
    CreatePolicy(Value),
    UpdatePolicy(Value),
    /// namespace, name
    DeletePolicy(String, String),
    /// "ns/pod", labels (replacing all of them)
    SetPodLabels(String, BTreeMap<String, String>),
    /// namespace, labels (replacing all of them)
    SetNamespaceLabels(String, BTreeMap<String, String>),
    CreateNamespace(String, BTreeMap<String, String>),
    DeleteNamespace(String),
    /// "ns/pod", labels
    CreatePod(String, BTreeMap<String, String>),
    /// "ns/pod"
    DeletePod(String),
}

impl GenCase {
    fn one_step(kind: Kind, description: &str, tags: &[&'static str], actions: Vec<Action>) -> Self {
        let tags = tag_set(tags);
        let name = if description.is_empty() {
            tags.iter().copied().collect::<Vec<_>>().join(",")
        } else {
            description.into()
        };
        Self { kind, index: 0, name, tags, steps: vec![GenStep { actions, probes: Probes::All }] }
    }

    fn steps(kind: Kind, description: &str, tags: &[&'static str], steps: Vec<GenStep>) -> Self {
        Self { kind, index: 0, name: description.into(), tags: tag_set(tags), steps }
    }

    /// The name the report and filters use: Cyclonus' own, with its
    /// position, which tells apart the cases that share a name.
    pub fn label(&self) -> String {
        format!("cyclonus #{} {}: {}", self.index, self.kind, self.name)
    }
}

/// A step of actions probing everything.
fn step(actions: Vec<Action>) -> GenStep {
    GenStep { actions, probes: Probes::All }
}

/// The tags with their primaries, as Cyclonus' `StringSet.Add` stores them.
fn tag_set(tags: &[&'static str]) -> BTreeSet<&'static str> {
    tags.iter().flat_map(|t| [*t, primary(t)]).collect()
}

/// The primary tag of a subordinate one (`pkg/generator/tags.go`).
fn primary(tag: &str) -> &'static str {
    match tag {
        "create-policy"
        | "delete-policy"
        | "update-policy"
        | "create-pod"
        | "delete-pod"
        | "set-pod-labels"
        | "create-namespace"
        | "delete-namespace"
        | "set-namespace-labels" => "action",
        "target-namespace" | "target-pod-selector" => "target",
        "ingress" | "egress" => "direction",
        "deny-all" | "allow-all" | "any-peer" | "any-port-protocol" | "multi-peer" | "multi-port/protocol" => "rule",
        "all-pods"
        | "pods-by-label"
        | "all-namespaces"
        | "namespaces-by-label"
        | "policy-namespace"
        | "namespaces-by-default-label" => "peer-pods",
        "ip-block-no-except" | "ip-block-with-except" => "peer-ipblock",
        "any-port" | "numbered-port" | "named-port" | "end-port" => "port",
        "tcp" | "udp" | "sctp" => "protocol",
        "pathological" | "conflict" | "example" | "upstream-e2e" => "miscellaneous",
        other => panic!("{other:?} is not one of Cyclonus' subordinate tags"),
    }
}

fn direction(ingress: bool) -> &'static str {
    if ingress { "ingress" } else { "egress" }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Every case, numbered. `zc` is pod z/c's address in the family being run:
/// the IPBlock peers are built from it, as Cyclonus builds them.
pub fn all(zc: IpAddr) -> Vec<GenCase> {
    let mut cases = built::target();
    cases.extend(built::rules());
    cases.extend(built::peers(zc));
    cases.extend(built::port_protocol());
    cases.extend(scripted::example());
    cases.extend(scripted::action());
    cases.extend(scripted::conflict());
    cases.extend(built::namespace());
    cases.extend(scripted::upstream_e2e());
    for (i, case) in cases.iter_mut().enumerate() {
        case.index = i + 1;
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases() -> Vec<GenCase> {
        all("198.18.0.10".parse().unwrap())
    }

    #[test]
    fn the_families_hold_as_many_cases_as_cyclonus_generates() {
        let cases = cases();
        let count = |k: Kind| cases.iter().filter(|c| c.kind == k).count();
        let counts: Vec<usize> = [
            Kind::Target,
            Kind::Rules,
            Kind::Peers,
            Kind::PortProtocol,
            Kind::Example,
            Kind::Action,
            Kind::Conflict,
            Kind::Namespace,
            Kind::UpstreamE2E,
        ]
        .map(count)
        .to_vec();
        // Cyclonus' own test (testcasegenerator_tests.go) holds its
        // generator to these.
        assert_eq!(counts, [6, 4, 112, 70, 1, 6, 16, 2, 13]);
        assert_eq!(cases.len(), 230);
        // Its CLI's default excludes leave 112.
        let excluded = ["multi-peer", "upstream-e2e", "example", "end-port", "namespaces-by-default-label"];
        assert_eq!(cases.iter().filter(|c| !excluded.iter().any(|t| c.tags.contains(t))).count(), 112);
    }

    #[test]
    fn names_and_tags_are_cyclonus_own() {
        let cases = cases();
        let at = |i: usize| &cases[i - 1];
        assert_eq!(
            at(6).name,
            r#"set pod selector to ["MatchLabels",[],"MatchExpression",[{"key":"pod","operator":"In","values":["a","b"]}]]"#
        );
        assert_eq!(at(7).name, "egress: deny all");
        assert_eq!(at(33).name, "ingress, 2-peer: empty pods + nil ns, pods by label + nil ns");
        assert_eq!(at(77).name, "ingress, 2-peer: simple ipblock, ipblock with except");
        assert_eq!(at(170).name, "direction,end-port,ingress,numbered-port,port,protocol,tcp");
        assert_eq!(at(176).name, "open a named port that doesn't match its protocol");
        assert_eq!(at(179).name, "any-port,direction,egress,multi-port/protocol,numbered-port,port,rule");
        assert_eq!(at(207).name, "deny all by pod + allow all by IP from same source");
        assert_eq!(at(230).name, "should stop enforcing policies after they are deleted");
        assert_eq!(
            at(206).tags.iter().copied().collect::<Vec<_>>(),
            ["all-namespaces", "all-pods", "conflict", "direction", "egress", "miscellaneous", "peer-pods"]
        );
    }

    #[test]
    fn ip_blocks_are_built_from_z_c() {
        let cases = cases();
        let ipblock = &cases[21].steps[0].actions[0];
        let Action::CreatePolicy(p) = ipblock else { panic!("{ipblock:?}") };
        assert_eq!(
            p["spec"]["ingress"][0]["from"][0]["ipBlock"],
            serde_json::json!({"cidr": "198.18.0.0/24", "except": ["198.18.0.0/28"]})
        );
        let v6 = all("fd18::a".parse().unwrap());
        let Action::CreatePolicy(p) = &v6[21].steps[0].actions[0] else { panic!() };
        assert_eq!(p["spec"]["ingress"][0]["from"][0]["ipBlock"]["except"][0], "fd18::/124");
    }
}
