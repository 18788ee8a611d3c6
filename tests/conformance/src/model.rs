//! The upstream model: namespaces x, y, z with pods a, b, c each, and the
//! truth table a step expects of it.
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::case::{Expect, ProbeSpec, Verdict};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Every pod of the model as "ns/pod", in table order.
pub fn pod_keys() -> Vec<String> {
    NAMESPACES.iter().flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}"))).collect()
}

/// Labels a pod starts with: `pod=<name>`.
pub fn default_pod_labels(pod: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("pod".to_owned(), pod.to_owned())])
}

/// Labels a namespace starts with: `ns=<name>` and the API server's own.
pub fn default_namespace_labels(ns: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("ns".to_owned(), ns.to_owned()), (NAMESPACE_NAME_LABEL.to_owned(), ns.to_owned())])
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
        let part = |p: &str, known: &[&str]| match p {
            "*" => Ok(None),
            p if known.contains(&p) => Ok(Some(p.to_owned())),
            p => Err(format!("{s:?}: {p:?} is not one of {known:?} or `*`")),
        };
        Ok(Self { namespace: part(ns, &NAMESPACES)?, pod: part(pod, &PODS)? })
    }
}

impl PodPattern {
    fn matches(&self, key: &str) -> bool {
        let (ns, pod) = key.split_once('/').expect("model keys are ns/pod");
        self.namespace.as_deref().is_none_or(|n| n == ns) && self.pod.as_deref().is_none_or(|p| p == pod)
    }
}

/// `[from][to]` for `probe`: `None` on the diagonal (a pod reaching itself
/// goes over loopback, never through the datapath, so it is not judged).
pub fn expected(expect: &Expect, probe: ProbeSpec) -> Vec<Vec<Option<bool>>> {
    let keys = pod_keys();
    keys.iter()
        .map(|from| {
            keys.iter()
                .map(|to| {
                    (from != to).then(|| {
                        let verdict = expect
                            .rules
                            .iter()
                            .rev()
                            .find(|r| r.from.matches(from) && r.to.matches(to) && r.probe.is_none_or(|p| p == probe))
                            .map_or(expect.default, |r| r.verdict);
                        verdict == Verdict::Allow
                    })
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
        let tcp80 = expected(&expect, ProbeSpec::Run(Probe::tcp(80)));
        let keys = pod_keys();
        let at = |t: &Vec<Vec<Option<bool>>>, from: &str, to: &str| {
            t[keys.iter().position(|k| k == from).unwrap()][keys.iter().position(|k| k == to).unwrap()]
        };
        assert_eq!(at(&tcp80, "x/a", "x/a"), None);
        assert_eq!(at(&tcp80, "x/b", "x/a"), Some(true));
        assert_eq!(at(&tcp80, "x/c", "x/a"), Some(false));
        assert_eq!(at(&tcp80, "y/a", "x/a"), Some(false));
        assert_eq!(at(&tcp80, "x/a", "y/a"), Some(true));
        let tcp81 = expected(&expect, ProbeSpec::Run(Probe::tcp(81)));
        assert_eq!(at(&tcp81, "y/c", "x/a"), Some(true));
        assert_eq!(at(&tcp81, "z/c", "x/a"), Some(false));
    }

    #[test]
    fn patterns_name_only_model_pods() {
        assert!(PodPattern::try_from("*/b".to_owned()).unwrap().matches("z/b"));
        assert!(!PodPattern::try_from("x/*".to_owned()).unwrap().matches("y/b"));
        assert!(PodPattern::try_from("w/a".to_owned()).unwrap_err().contains("\"w\" is not one of"));
    }
}
