//! NetworkPolicy objects checked and turned into the compiler's model. An
//! invalid policy is reported with the field at fault and left out.
use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use thiserror::Error;

use crate::{
    cluster::{ObjectRef, protocol_number},
    output::Direction,
    selector::Selector,
};

#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{kind} {policy}: {field}: {reason}")]
pub struct PolicyError {
    /// `NetworkPolicy` or `ClusterNetworkPolicy`.
    pub kind: &'static str,
    /// `namespace/name` (a cluster policy's `name`), or `<unnamed>`.
    pub policy: String,
    /// JSON path of the offending field, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    pub reason: String,
}

const KIND: &str = "NetworkPolicy";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub key: ObjectRef,
    pub pod_selector: Selector,
    /// Rules per direction; `None` when the policy does not isolate it.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `None`: every peer.
    pub peers: Option<Vec<Peer>>,
    /// `None`: every protocol and port.
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods matching `pods` in namespaces matching `namespaces` (`None`: the
    /// policy's own namespace).
    Pods {
        namespaces: Option<Selector>,
        pods: Selector,
    },
    Block {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub protocol: u8,
    pub port: PortValue,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortValue {
    /// Every port of the protocol.
    All,
    /// `start..=end`.
    Range(u16, u16),
    Named(String),
}

impl Policy {
    pub fn parse(np: &NetworkPolicy) -> Result<Self, PolicyError> {
        let key = ObjectRef::of(&np.metadata).ok_or_else(|| PolicyError {
            kind: KIND,
            policy: "<unnamed>".into(),
            field: "metadata.name".into(),
            reason: "missing".into(),
        })?;
        let err = |field: String, reason: String| PolicyError { kind: KIND, policy: key.to_string(), field, reason };
        let spec = np.spec.as_ref().ok_or_else(|| err("spec".into(), "missing".into()))?;
        let pod_selector = selector(spec.pod_selector.as_ref(), "spec.podSelector").map_err(|(f, r)| err(f, r))?;

        let (isolates_ingress, isolates_egress) = isolated_directions(spec).map_err(|(f, r)| err(f, r))?;

        let ingress =
            rules(spec.ingress.as_deref(), "spec.ingress", "from", |r| (r.from.as_deref(), r.ports.as_deref()))
                .map_err(|(f, r)| err(f, r))?;
        let egress = rules(spec.egress.as_deref(), "spec.egress", "to", |r| (r.to.as_deref(), r.ports.as_deref()))
            .map_err(|(f, r)| err(f, r))?;
        Ok(Self {
            key,
            pod_selector,
            ingress: isolates_ingress.then_some(ingress),
            egress: isolates_egress.then_some(egress),
        })
    }

    /// What an invalid policy still says for sure: the pods it selects and
    /// the directions it isolates, with no rules. Enforced in its place, it
    /// fails closed: the pods it was written to isolate stay isolated and it
    /// grants nothing. A selector that cannot be parsed selects every pod of
    /// the namespace, unknown policy types isolate both directions. `None`
    /// for a policy without a name (nothing can refer to it).
    pub fn isolating_only(np: &NetworkPolicy) -> Option<Self> {
        let key = ObjectRef::of(&np.metadata)?;
        let spec = np.spec.as_ref();
        let pod_selector =
            spec.and_then(|s| selector(s.pod_selector.as_ref(), "spec.podSelector").ok()).unwrap_or_default();
        let (ingress, egress) = spec.map_or(Ok((true, true)), isolated_directions).unwrap_or((true, true));
        Some(Self { key, pod_selector, ingress: ingress.then(Vec::new), egress: egress.then(Vec::new) })
    }
}

/// Whether a policy isolates (ingress, egress): as `policyTypes` says, or
/// when it is absent, ingress always and egress if it has egress rules.
fn isolated_directions(spec: &NetworkPolicySpec) -> Result<(bool, bool), FieldError> {
    let types = spec.policy_types.clone().unwrap_or_default();
    for (i, t) in types.iter().enumerate() {
        if t != "Ingress" && t != "Egress" {
            return Err((format!("spec.policyTypes[{i}]"), format!("unknown policy type {t:?}")));
        }
    }
    Ok(if types.is_empty() {
        (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty()))
    } else {
        (types.iter().any(|t| t == "Ingress"), types.iter().any(|t| t == "Egress"))
    })
}

type FieldError = (String, String);

fn selector(s: Option<&LabelSelector>, field: &str) -> Result<Selector, FieldError> {
    s.map_or(Ok(Selector::default()), |s| Selector::parse(s).map_err(|r| (field.to_owned(), r)))
}

/// Parses an `ingress` or `egress` list; `parts` gives a rule's peers and ports.
fn rules<R>(
    list: Option<&[R]>,
    field: &str,
    peers_field: &str,
    parts: impl Fn(&R) -> (Option<&[NetworkPolicyPeer]>, Option<&[NetworkPolicyPort]>),
) -> Result<Vec<Rule>, FieldError> {
    list.into_iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            let (peers, ports) = parts(r);
            rule(peers, ports, &format!("{field}[{i}]"), peers_field)
        })
        .collect()
}

fn rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    field: &str,
    peers_field: &str,
) -> Result<Rule, FieldError> {
    Ok(Rule {
        peers: non_empty(peers, &format!("{field}.{peers_field}"), peer)?,
        ports: non_empty(ports, &format!("{field}.ports"), port)?,
    })
}

/// Parses each item of a list; an absent or empty list is `None` ("all").
fn non_empty<T, U>(
    list: Option<&[T]>,
    field: &str,
    item: impl Fn(&T, &str) -> Result<U, FieldError>,
) -> Result<Option<Vec<U>>, FieldError> {
    match list {
        Some(l) if !l.is_empty() => {
            l.iter().enumerate().map(|(i, x)| item(x, &format!("{field}[{i}]"))).collect::<Result<_, _>>().map(Some)
        }
        _ => Ok(None),
    }
}

fn peer(p: &NetworkPolicyPeer, field: &str) -> Result<Peer, FieldError> {
    match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
        (Some(block), None, None) => {
            let cidr = parse_cidr(&block.cidr).map_err(|r| (format!("{field}.ipBlock.cidr"), r))?;
            let mut except = Vec::new();
            for (i, e) in block.except.iter().flatten().enumerate() {
                let f = format!("{field}.ipBlock.except[{i}]");
                let e = parse_cidr(e).map_err(|r| (f.clone(), r))?;
                if !(cidr.contains(&e) && e.prefix_len() > cidr.prefix_len()) {
                    return Err((f, format!("{e} is not strictly inside cidr {cidr}")));
                }
                except.push(e);
            }
            Ok(Peer::Block { cidr, except })
        }
        (Some(_), _, _) => Err((field.to_owned(), "ipBlock cannot be combined with selectors".into())),
        (None, None, None) => {
            Err((field.to_owned(), "must specify a podSelector, namespaceSelector or ipBlock".into()))
        }
        (None, ns, pods) => Ok(Peer::Pods {
            namespaces: ns.as_ref().map(|s| selector(Some(s), &format!("{field}.namespaceSelector"))).transpose()?,
            pods: selector(pods.as_ref(), &format!("{field}.podSelector"))?,
        }),
    }
}

/// A CIDR with its host bits cleared, as the API server accepts them.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| format!("invalid CIDR {s:?}"))
}

fn port(p: &NetworkPolicyPort, field: &str) -> Result<PortSpec, FieldError> {
    let proto_name = p.protocol.as_deref().unwrap_or("TCP");
    let protocol = protocol_number(proto_name)
        .ok_or_else(|| (format!("{field}.protocol"), format!("unsupported protocol {proto_name:?}")))?;
    let end = p.end_port;
    let port = match (&p.port, end) {
        (None, None) => PortValue::All,
        (None, Some(_)) => return Err((format!("{field}.endPort"), "requires a numeric port".into())),
        (Some(IntOrString::Int(n)), end) => {
            let start = valid_port(*n).ok_or_else(|| (format!("{field}.port"), format!("{n} is not in 1-65535")))?;
            let end = match end {
                None => start,
                Some(e) => valid_port(e)
                    .filter(|e| *e >= start)
                    .ok_or_else(|| (format!("{field}.endPort"), format!("{e} must be in {start}-65535")))?,
            };
            PortValue::Range(start, end)
        }
        (Some(IntOrString::String(name)), None) => {
            if !is_port_name(name) {
                return Err((format!("{field}.port"), format!("{name:?} is not a valid port name")));
            }
            PortValue::Named(name.clone())
        }
        (Some(IntOrString::String(_)), Some(_)) => {
            return Err((format!("{field}.endPort"), "cannot be used with a named port".into()));
        }
    };
    Ok(PortSpec { protocol, port })
}

fn valid_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// An IANA service name: 1-15 of [a-z0-9-], at least one letter, no leading,
/// trailing or double hyphen.
pub(crate) fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

#[cfg(test)]
mod tests;
