//! The models cases run on: upstream NetworkPolicy e2e's (namespaces x, y,
//! z with pods a, b, c each) and the network-policy-api suite's (four
//! houses with two pods each), and the truth table a step expects of one.
use std::collections::BTreeMap;

use na_harness::Probe;
use serde::Deserialize;

use crate::case::{Expect, ProbeSpec, Verdict};
use crate::table::Table;

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub type Labels = BTreeMap<String, String>;

/// Which model a case runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelName {
    /// Upstream NetworkPolicy e2e's and Cyclonus': x, y, z with a, b, c.
    #[default]
    Netpol,
    /// kubernetes-sigs/network-policy-api's conformance base: four houses'
    /// namespaces with a StatefulSet of two pods each.
    NetworkPolicyApi,
}

/// A container port a pod declares (what named ports resolve to).
#[derive(Clone, Debug)]
pub struct ContainerPort {
    pub name: String,
    pub port: u16,
    pub protocol: &'static str,
}

/// A model: its namespaces and pods with the labels they start with, what
/// every pod serves and declares.
#[derive(Clone, Debug)]
pub struct Model {
    pub name: ModelName,
    /// Namespace name and labels, the API server's own among them.
    pub namespaces: Vec<(String, Labels)>,
    /// `ns/pod` and labels, in table order.
    pub pods: Vec<(String, Labels)>,
    /// What every pod serves (SCTP aside: not in this kernel).
    pub serves: Vec<Probe>,
    pub container_ports: Vec<ContainerPort>,
    /// Whether every pod has a ClusterIP Service (probes may go through it).
    pub services: bool,
}

/// The houses of the network-policy-api model.
const HOUSES: [(&str, &str); 4] = [
    ("gryffindor", "harry-potter"),
    ("slytherin", "draco-malfoy"),
    ("hufflepuff", "cedric-diggory"),
    ("ravenclaw", "luna-lovegood"),
];

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

impl ModelName {
    pub fn model(self) -> Model {
        match self {
            Self::Netpol => {
                let names = ["x", "y", "z"];
                Model {
                    name: self,
                    namespaces: names
                        .iter()
                        .map(|ns| (ns.to_string(), labels(&[("ns", ns), (NAMESPACE_NAME_LABEL, ns)])))
                        .collect(),
                    pods: names
                        .iter()
                        .flat_map(|ns| ["a", "b", "c"].map(|p| (format!("{ns}/{p}"), labels(&[("pod", p)]))))
                        .collect(),
                    serves: vec![Probe::tcp(80), Probe::tcp(81), Probe::udp(80), Probe::udp(81)],
                    // Named as Cyclonus names them; the SCTP ones serve
                    // nothing here but name their ports for policies.
                    container_ports: [80, 81]
                        .into_iter()
                        .flat_map(|port| {
                            ["TCP", "UDP", "SCTP"].map(|protocol| ContainerPort {
                                name: format!("serve-{port}-{}", protocol.to_lowercase()),
                                port,
                                protocol,
                            })
                        })
                        .collect(),
                    services: true,
                }
            }
            Self::NetworkPolicyApi => Model {
                name: self,
                namespaces: HOUSES
                    .iter()
                    .map(|(house, _)| {
                        let ns = format!("network-policy-conformance-{house}");
                        let l = labels(&[("conformance-house", house), (NAMESPACE_NAME_LABEL, &ns)]);
                        (ns, l)
                    })
                    .collect(),
                pods: HOUSES
                    .iter()
                    .flat_map(|(house, set)| {
                        (0..2).map(move |i| {
                            (
                                format!("network-policy-conformance-{house}/{set}-{i}"),
                                labels(&[("conformance-house", house)]),
                            )
                        })
                    })
                    .collect(),
                serves: vec![Probe::tcp(80), Probe::tcp(8080), Probe::udp(53), Probe::udp(5353)],
                container_ports: vec![
                    ContainerPort { name: "web".into(), port: 80, protocol: "TCP" },
                    ContainerPort { name: "dns".into(), port: 53, protocol: "UDP" },
                ],
                services: false,
            },
        }
    }
}

impl Model {
    /// Every pod as "ns/pod", in table order.
    pub fn keys(&self) -> Vec<String> {
        self.pods.iter().map(|(k, _)| k.clone()).collect()
    }
}

/// Every pod of the x/y/z model as "ns/pod", in table order.
#[cfg(test)]
pub fn pod_keys() -> Vec<String> {
    ModelName::Netpol.model().keys()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn harness(self) -> na_harness::Family {
        match self {
            Self::Ipv4 => na_harness::Family::V4,
            Self::Ipv6 => na_harness::Family::V6,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        })
    }
}

/// How a probe addresses its destination pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// The pod's own address.
    Pod,
    /// The address of the pod's ClusterIP Service, translated by the node's
    /// kube-proxy rules, as upstream's e2e suite probes.
    Service,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pod => "pod IP",
            Self::Service => "Service IP",
        })
    }
}

/// `ns/pod` with `*` for any namespace or any pod.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PodPattern {
    namespace: Option<String>,
    pod: Option<String>,
}

impl TryFrom<String> for PodPattern {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let (ns, pod) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected NAMESPACE/POD, `*` for any"))?;
        let part = |p: &str| (p != "*").then(|| p.to_owned());
        Ok(Self { namespace: part(ns), pod: part(pod) })
    }
}

impl PodPattern {
    /// Whether it names only namespaces and pods of `model`.
    pub fn check(&self, model: &Model) -> Result<(), String> {
        if let Some(ns) = &self.namespace
            && !model.namespaces.iter().any(|(n, _)| n == ns)
        {
            return Err(format!("namespace {ns:?} is not in the {:?} model", model.name));
        }
        if let Some(pod) = &self.pod
            && !model.keys().iter().any(|k| k.split_once('/').is_some_and(|(_, p)| p == pod))
        {
            return Err(format!("pod {pod:?} is not in the {:?} model", model.name));
        }
        Ok(())
    }

    fn matches(&self, key: &str) -> bool {
        let (ns, pod) = key.split_once('/').expect("model keys are ns/pod");
        self.namespace.as_deref().is_none_or(|n| n == ns) && self.pod.as_deref().is_none_or(|p| p == pod)
    }
}

/// `[from][to]` of `keys` for `probe`: `None` on the diagonal (a pod
/// reaching itself goes over loopback, never through the datapath, so it is
/// not judged). `reference` is the reference evaluator's table, for an
/// expectation that defaults to it.
pub fn expected(keys: &[String], expect: &Expect, probe: ProbeSpec, reference: Option<&Table>) -> Table {
    keys.iter()
        .enumerate()
        .map(|(i, from)| {
            keys.iter()
                .enumerate()
                .map(|(j, to)| {
                    if from == to {
                        return None;
                    }
                    let verdict = expect
                        .rules
                        .iter()
                        .rev()
                        .find(|r| r.from.matches(from) && r.to.matches(to) && r.probe.is_none_or(|p| p == probe))
                        .map_or(expect.default, |r| r.verdict);
                    match verdict {
                        Verdict::Reference => reference.and_then(|t| t[i][j]),
                        v => Some(v == Verdict::Allow),
                    }
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use na_harness::Probe;

    use super::*;

    #[test]
    fn later_rules_win_and_the_diagonal_is_not_judged() {
        let expect: Expect = serde_yaml::from_str(
            "default: allow\nrules:\n  - {from: '*/*', to: 'x/a', verdict: deny}\n  - {from: 'x/b', to: 'x/a', verdict: allow}\n  - {from: 'y/*', to: 'x/a', probe: TCP/81, verdict: allow}\n",
        )
        .unwrap();
        let keys = pod_keys();
        let tcp80 = expected(&keys, &expect, ProbeSpec::Run(Probe::tcp(80)), None);
        let at = |t: &Vec<Vec<Option<bool>>>, from: &str, to: &str| {
            t[keys.iter().position(|k| k == from).unwrap()][keys.iter().position(|k| k == to).unwrap()]
        };
        assert_eq!(at(&tcp80, "x/a", "x/a"), None);
        assert_eq!(at(&tcp80, "x/b", "x/a"), Some(true));
        assert_eq!(at(&tcp80, "x/c", "x/a"), Some(false));
        assert_eq!(at(&tcp80, "y/a", "x/a"), Some(false));
        assert_eq!(at(&tcp80, "x/a", "y/a"), Some(true));
        let tcp81 = expected(&keys, &expect, ProbeSpec::Run(Probe::tcp(81)), None);
        assert_eq!(at(&tcp81, "y/c", "x/a"), Some(true));
        assert_eq!(at(&tcp81, "z/c", "x/a"), Some(false));
    }

    #[test]
    fn patterns_name_only_model_pods() {
        let netpol = ModelName::Netpol.model();
        assert!(PodPattern::try_from("*/b".to_owned()).unwrap().matches("z/b"));
        assert!(!PodPattern::try_from("x/*".to_owned()).unwrap().matches("y/b"));
        let w = PodPattern::try_from("w/a".to_owned()).unwrap();
        assert!(w.check(&netpol).unwrap_err().contains("\"w\" is not in the Netpol model"));
        let house = PodPattern::try_from("network-policy-conformance-slytherin/draco-malfoy-1".to_owned()).unwrap();
        assert!(house.check(&netpol).is_err());
        assert_eq!(house.check(&ModelName::NetworkPolicyApi.model()), Ok(()));
    }
}
