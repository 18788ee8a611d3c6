//! The case file format (`tests/cases/*.yaml`): steps of policy and label
//! changes, each followed by a truth table of expected verdicts.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use na_harness::{Probe, Proto};
use serde::Deserialize;
use thiserror::Error;

use crate::model::{Family, ModelName, PodPattern};

#[derive(Debug, Error)]
pub enum CaseError {
    #[error("{file}: {reason}")]
    Invalid { file: String, reason: String },
    #[error("{dir}: {source}")]
    Dir { dir: String, source: std::io::Error },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// The model it runs on.
    #[serde(default)]
    pub model: ModelName,
    #[serde(default = "both_families")]
    pub families: Vec<Family>,
    /// Why this case cannot run here; it is then reported as skipped.
    #[serde(default)]
    pub skip: Option<String>,
    pub steps: Vec<Step>,
    /// Where it was read from, for messages.
    #[serde(skip)]
    pub file: PathBuf,
}

fn both_families() -> Vec<Family> {
    vec![Family::Ipv4, Family::Ipv6]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    /// NetworkPolicy and ClusterNetworkPolicy objects to create or replace,
    /// by kind and namespace/name.
    #[serde(default)]
    pub policies: Vec<serde_json::Value>,
    /// Policies to delete, as "namespace/name".
    #[serde(default)]
    pub delete: Vec<String>,
    /// "ns/pod" -> the pod's new labels (replacing the old ones).
    #[serde(default)]
    pub pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// "ns" -> the namespace's new labels (`kubernetes.io/metadata.name` is
    /// kept, as the API server keeps it).
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// "ns" -> the namespace's new annotations (replacing the old ones):
    /// `na-agent.io/audit: "true"` audits it.
    #[serde(default)]
    pub namespace_annotations: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default = "tcp_80")]
    pub probes: Vec<ProbeSpec>,
    pub expect: Expect,
}

fn tcp_80() -> Vec<ProbeSpec> {
    vec![ProbeSpec::Run(Probe::tcp(80))]
}

/// A probe as written, `TCP/80`: one the harness can send, or SCTP, which
/// this kernel lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ProbeSpec {
    Run(Probe),
    Sctp(u16),
}

impl TryFrom<String> for ProbeSpec {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let (proto, port) = s.split_once('/').ok_or_else(|| format!("probe {s:?}: expected PROTO/PORT"))?;
        let port: u16 = port.parse().map_err(|_| format!("probe {s:?}: bad port"))?;
        match proto {
            "TCP" => Ok(Self::Run(Probe { proto: Proto::Tcp, port })),
            "UDP" => Ok(Self::Run(Probe { proto: Proto::Udp, port })),
            "SCTP" => Ok(Self::Sctp(port)),
            _ => Err(format!("probe {s:?}: protocol must be TCP, UDP or SCTP")),
        }
    }
}

impl std::fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Run(p) => p.fmt(f),
            Self::Sctp(port) => write!(f, "SCTP/{port}"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub default: Verdict,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
    /// As a default only: what the reference evaluator derives from the
    /// step's objects (a suite that asserts some cells, as
    /// network-policy-api's does, still has every cell checked).
    Reference,
}

/// Later rules win over earlier ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub from: PodPattern,
    pub to: PodPattern,
    /// Only this probe; every probe when absent.
    #[serde(default)]
    pub probe: Option<ProbeSpec>,
    pub verdict: Verdict,
}

/// Why SCTP probes are not run.
pub const SCTP_SKIPPED: &str = "SCTP is not in this kernel; SCTP verdicts are covered by crafted-packet datapath tests";

impl Case {
    /// Whether the case can run here; the reason when it cannot. A case
    /// probing SCTP besides other protocols runs without its SCTP probes.
    pub fn skip_reason(&self) -> Option<String> {
        if let Some(why) = &self.skip {
            return Some(why.clone());
        }
        let only_sctp = self.steps.iter().flat_map(|s| &s.probes).all(|p| matches!(p, ProbeSpec::Sctp(_)));
        only_sctp.then(|| SCTP_SKIPPED.into())
    }

    /// Whether some of its probes are SCTP (skipped: see [`SCTP_SKIPPED`]).
    pub fn probes_sctp(&self) -> bool {
        self.steps.iter().flat_map(|s| &s.probes).any(|p| matches!(p, ProbeSpec::Sctp(_)))
    }

    /// Patterns name only the model's pods; `reference` is a default only.
    fn check(&self) -> Result<(), String> {
        let model = self.model.model();
        for (i, step) in self.steps.iter().enumerate() {
            for (j, rule) in step.expect.rules.iter().enumerate() {
                let at = format!("steps[{i}].expect.rules[{j}]");
                rule.from.check(&model).map_err(|e| format!("{at}.from: {e}"))?;
                rule.to.check(&model).map_err(|e| format!("{at}.to: {e}"))?;
                if rule.verdict == Verdict::Reference {
                    return Err(format!("{at}.verdict: `reference` is a default, not a rule's verdict"));
                }
            }
        }
        Ok(())
    }
}

/// Every case in `dir` (files `*.yaml`/`*.yml`, sorted by name), or the
/// errors of those that do not parse, each naming its file and field.
pub fn load_dir(dir: &Path) -> Result<Vec<Result<Case, CaseError>>, CaseError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CaseError::Dir { dir: dir.display().to_string(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    Ok(files.iter().map(|f| load(f)).collect())
}

fn load(file: &Path) -> Result<Case, CaseError> {
    let invalid = |reason: String| CaseError::Invalid { file: file.display().to_string(), reason };
    let text = std::fs::read_to_string(file).map_err(|e| invalid(e.to_string()))?;
    let mut case: Case = serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    case.file = file.to_owned();
    if case.steps.is_empty() {
        return Err(invalid("steps: at least one step is needed".into()));
    }
    // A skipped case may name what this runner cannot build.
    if case.skip.is_none() {
        case.check().map_err(invalid)?;
    }
    Ok(case)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Case, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_fields() {
        let case = parse(
            "name: n\nsteps:\n  - podLabels: {x/a: {pod: a, extra: '1'}}\n    expect: {default: allow, rules: [{from: '*/*', to: 'x/*', probe: UDP/81, verdict: deny}]}\n",
        )
        .unwrap();
        assert_eq!(case.families, [Family::Ipv4, Family::Ipv6]);
        let step = &case.steps[0];
        assert_eq!(step.probes, [ProbeSpec::Run(Probe::tcp(80))]);
        assert_eq!(step.expect.rules[0].probe, Some(ProbeSpec::Run(Probe::udp(81))));
        assert_eq!(step.pod_labels["x/a"]["extra"], "1");
        assert_eq!(case.skip_reason(), None);
    }

    #[test]
    fn mistakes_are_named() {
        let e = parse("name: n\nsteps: [{expect: {default: allow}, probe: [TCP/80]}]\n").unwrap_err();
        assert!(e.contains("unknown field `probe`"), "{e}");
        let e = parse("name: n\nsteps: [{expect: {default: allow}, probes: [ICMP/80]}]\n").unwrap_err();
        assert!(e.contains("protocol must be TCP, UDP or SCTP"), "{e}");
        let e = parse("name: n\nsteps: [{expect: {default: maybe}}]\n").unwrap_err();
        assert!(e.contains("unknown variant `maybe`"), "{e}");
        let e = parse("name: n\nsteps: [{expect: {default: allow, rules: [{from: 'x', to: '*/*', verdict: deny}]}}]\n")
            .unwrap_err();
        assert!(e.contains("\"x\": expected NAMESPACE/POD"), "{e}");
        let case =
            parse("name: n\nsteps: [{expect: {default: allow, rules: [{from: 'w/a', to: '*/*', verdict: deny}]}}]\n")
                .unwrap();
        assert!(case.check().unwrap_err().contains("steps[0].expect.rules[0].from: namespace \"w\""));
        let case = parse(
            "name: n\nsteps: [{expect: {default: allow, rules: [{from: 'x/a', to: '*/*', verdict: reference}]}}]\n",
        )
        .unwrap();
        assert!(case.check().unwrap_err().contains("a default, not a rule's verdict"));
    }

    #[test]
    fn sctp_cases_say_why_they_skip() {
        let case = parse("name: n\nsteps: [{probes: [SCTP/80], expect: {default: allow}}]\n").unwrap();
        assert!(case.skip_reason().unwrap().contains("SCTP"));
        let mixed = parse("name: n\nsteps: [{probes: [SCTP/80, TCP/80], expect: {default: allow}}]\n").unwrap();
        assert_eq!(mixed.skip_reason(), None, "runs without its SCTP probes");
        assert!(mixed.probes_sctp());
    }
}
