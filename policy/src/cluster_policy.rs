//! ClusterNetworkPolicy objects, upstream's (`policy.networking.k8s.io/v1alpha2`)
//! and AWS's (`networking.k8s.aws/v1alpha1`), checked and turned into one
//! model. Both are read from their JSON: neither has a type in k8s-openapi.
//!
//! Semantics (upstream's, for both: AWS's CRD documents the same tiers,
//! actions and order):
//! - Tiers are evaluated Admin, then NetworkPolicy, then Baseline. Within a
//!   tier, policies by `priority` (lower first; equal priorities by name,
//!   a choice upstream leaves open), and a policy's rules in list order. The
//!   first rule that matches decides: `Accept` allows, `Deny` drops, `Pass`
//!   skips the rest of its tier.
//! - A cluster policy does not isolate: what no rule decides falls through.
//!   Baseline rules decide only directions no NetworkPolicy isolates.
//! - A peer or port this agent does not know (a newer API's field,
//!   `domainNames`, `nodes`) fails closed, as upstream requires: an `Accept`
//!   rule holding one matches nothing, a `Deny` or `Pass` rule holding one
//!   becomes a `Deny` of everything. Each is reported on the object.
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Map, Value};

use crate::{cluster::protocol_number, output::Direction, parse::PolicyError, selector::Selector};

/// The upstream API version.
pub const UPSTREAM_API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";
/// The AWS API version.
pub const AWS_API_VERSION: &str = "networking.k8s.aws/v1alpha1";
/// Both CRDs' kind.
pub const KIND: &str = "ClusterNetworkPolicy";
/// The AWS CRD's API group: its objects are named `networking.k8s.aws/NAME`
/// here, so one of each CRD with the same name are two policies.
pub const AWS_GROUP: &str = "networking.k8s.aws";

/// Highest `priority` either CRD accepts.
const MAX_PRIORITY: i64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "Admin",
            Self::Baseline => "Baseline",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Deny,
    Pass,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "Accept",
            Self::Deny => "Deny",
            Self::Pass => "Pass",
        }
    }

    /// The datapath's [`na_common::policy::action`] for this action in `tier`.
    pub fn datapath(self, tier: Tier) -> u8 {
        use na_common::policy::action;
        match (tier, self) {
            (Tier::Admin, Self::Accept) => action::ADMIN_ACCEPT,
            (Tier::Admin, Self::Deny) => action::ADMIN_DENY,
            (Tier::Admin, Self::Pass) => action::ADMIN_PASS,
            (Tier::Baseline, Self::Accept) => action::BASELINE_ACCEPT,
            (Tier::Baseline, Self::Deny) => action::BASELINE_DENY,
            // A baseline Pass hands the packet to the default: the same as
            // no rule, so it must stop the baseline's later rules and allow.
            (Tier::Baseline, Self::Pass) => action::BASELINE_ACCEPT,
        }
    }
}

/// Which pods a policy applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// Every pod of the matching namespaces.
    Namespaces(Selector),
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPeer {
    Namespaces(Selector),
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
    Networks(Vec<IpNet>),
    /// Every address: what a `Deny` or `Pass` rule with a peer this agent
    /// does not know becomes.
    Everything,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterPort {
    /// `protocol` on ports `start..=end`.
    Range { protocol: u8, start: u16, end: u16 },
    /// A container port name, of whatever protocol the pod gives it.
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRule {
    pub name: Option<String>,
    pub action: Action,
    /// Never empty: both CRDs require a peer.
    pub peers: Vec<ClusterPeer>,
    /// `None`: every protocol and port.
    pub ports: Option<Vec<ClusterPort>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPolicy {
    pub name: String,
    pub tier: Tier,
    pub priority: u16,
    pub subject: Subject,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
    /// What fails closed (unknown peers and ports), with where.
    pub unsupported: Vec<PolicyError>,
}

impl ClusterPolicy {
    pub fn rules(&self, dir: Direction) -> &[ClusterRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// The name the agent knows an object of either CRD by: upstream's by its
    /// name, AWS's as `networking.k8s.aws/NAME`.
    pub fn key_of(obj: &Value) -> Option<String> {
        let name = obj.pointer("/metadata/name")?.as_str()?;
        match obj.get("apiVersion")?.as_str()? {
            AWS_API_VERSION => Some(format!("{AWS_GROUP}/{name}")),
            _ => Some(name.to_owned()),
        }
    }

    /// Whether `apiVersion`/`kind` name one of the two CRDs.
    pub fn is_cluster_policy(api_version: &str, kind: &str) -> bool {
        kind == KIND && (api_version == UPSTREAM_API_VERSION || api_version == AWS_API_VERSION)
    }

    /// Parses an object of either CRD (told apart by `apiVersion`).
    pub fn parse(obj: &Value) -> Result<Self, PolicyError> {
        let name = Self::key_of(obj).or_else(|| obj.pointer("/metadata/name")?.as_str().map(str::to_owned));
        let err = |field: &str, reason: String| PolicyError {
            kind: KIND,
            policy: name.clone().unwrap_or_else(|| "<unnamed>".into()),
            field: field.to_owned(),
            reason,
        };
        let Some(name) = name.clone() else { return Err(err("metadata.name", "missing".into())) };
        let flavour = match obj.get("apiVersion").and_then(Value::as_str) {
            Some(UPSTREAM_API_VERSION) => Flavour::Upstream,
            Some(AWS_API_VERSION) => Flavour::Aws,
            other => return Err(err("apiVersion", format!("{other:?} is not a ClusterNetworkPolicy version"))),
        };
        let mut parser = Parser { flavour, unsupported: Vec::new() };
        let policy = parser.policy(name.clone(), obj).map_err(|(f, r)| err(&f, r))?;
        let unsupported = parser.unsupported.into_iter().map(|(f, r)| err(&f, r)).collect();
        Ok(Self { unsupported, ..policy })
    }

    /// What an invalid object still says for sure, enforced in its place when
    /// no earlier version of it is: its subject's traffic in the directions
    /// it has rules for is denied (admin tier, its priority or the highest).
    /// `None` when not even its subject can be read.
    pub fn failing_closed(obj: &Value) -> Option<Self> {
        let name = Self::key_of(obj)?;
        let spec = obj.get("spec")?;
        let mut parser = Parser { flavour: Flavour::Upstream, unsupported: Vec::new() };
        let subject = parser.subject(spec.get("subject")?, "spec.subject").ok()?;
        let tier = match spec.get("tier").and_then(Value::as_str) {
            Some("Baseline") => Tier::Baseline,
            _ => Tier::Admin,
        };
        let priority = spec.get("priority").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
        let deny_all = |dir: &str| {
            let present = spec.get(dir).and_then(Value::as_array).is_some_and(|a| !a.is_empty());
            present.then(|| ClusterRule::deny_everything(None)).into_iter().collect()
        };
        Some(Self {
            name,
            tier,
            priority: priority.min(MAX_PRIORITY as u16),
            subject,
            ingress: deny_all("ingress"),
            egress: deny_all("egress"),
            unsupported: Vec::new(),
        })
    }
}

impl ClusterRule {
    fn deny_everything(name: Option<String>) -> Self {
        Self { name, action: Action::Deny, peers: vec![ClusterPeer::Everything], ports: None }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Upstream,
    Aws,
}

type FieldError = (String, String);

struct Parser {
    flavour: Flavour,
    /// Unknown peers and ports met, failing closed.
    unsupported: Vec<FieldError>,
}

impl Parser {
    fn policy(&mut self, name: String, obj: &Value) -> Result<ClusterPolicy, FieldError> {
        let spec = object(obj.get("spec"), "spec")?;
        known_fields(spec, "spec", &["tier", "priority", "subject", "ingress", "egress"])?;
        let tier = match spec.get("tier").and_then(Value::as_str) {
            Some("Admin") => Tier::Admin,
            Some("Baseline") => Tier::Baseline,
            other => return Err(("spec.tier".into(), format!("{other:?} is not Admin or Baseline"))),
        };
        let priority = spec
            .get("priority")
            .and_then(Value::as_i64)
            .filter(|p| (0..=MAX_PRIORITY).contains(p))
            .ok_or_else(|| ("spec.priority".to_owned(), format!("must be an integer in 0-{MAX_PRIORITY}")))?;
        let subject = self.subject(required(spec.get("subject"), "spec.subject")?, "spec.subject")?;
        let mut rules = |dir: Direction| -> Result<Vec<ClusterRule>, FieldError> {
            let field = format!("spec.{dir}");
            let list = match spec.get(dir.as_str()) {
                None | Some(Value::Null) => return Ok(Vec::new()),
                Some(Value::Array(list)) => list,
                Some(_) => return Err((field, "must be a list".into())),
            };
            list.iter().enumerate().map(|(i, r)| self.rule(r, dir, &format!("{field}[{i}]"))).collect()
        };
        let ingress = rules(Direction::Ingress)?;
        let egress = rules(Direction::Egress)?;
        Ok(ClusterPolicy { name, tier, priority: priority as u16, subject, ingress, egress, unsupported: Vec::new() })
    }

    fn subject(&mut self, v: &Value, field: &str) -> Result<Subject, FieldError> {
        let (key, value) = one_of(v, field)?;
        let field = format!("{field}.{key}");
        match key.as_str() {
            "namespaces" => Ok(Subject::Namespaces(selector(value, &field)?)),
            "pods" => {
                let (namespaces, pods) = self.namespaced_pods(value, &field)?;
                Ok(Subject::Pods { namespaces, pods })
            }
            _ => Err((field, "unknown subject: expected namespaces or pods".into())),
        }
    }

    fn namespaced_pods(&self, v: &Value, field: &str) -> Result<(Selector, Selector), FieldError> {
        let o = object(Some(v), field)?;
        let namespaces = match o.get("namespaceSelector") {
            Some(s) => selector(s, &format!("{field}.namespaceSelector"))?,
            None if self.flavour == Flavour::Aws => {
                return Err((format!("{field}.namespaceSelector"), "missing".into()));
            }
            None => Selector::default(),
        };
        let pods = selector(
            required(o.get("podSelector"), &format!("{field}.podSelector"))?,
            &format!("{field}.podSelector"),
        )?;
        Ok((namespaces, pods))
    }

    fn rule(&mut self, v: &Value, dir: Direction, field: &str) -> Result<ClusterRule, FieldError> {
        let o = object(Some(v), field)?;
        let peers_key = if dir == Direction::Ingress { "from" } else { "to" };
        let ports_key = if self.flavour == Flavour::Upstream { "protocols" } else { "ports" };
        known_fields(o, field, &["name", "action", peers_key, ports_key])?;
        let name = o.get("name").and_then(Value::as_str).map(str::to_owned);
        let action = match o.get("action").and_then(Value::as_str) {
            Some("Accept") => Action::Accept,
            Some("Deny") => Action::Deny,
            Some("Pass") => Action::Pass,
            other => return Err((format!("{field}.action"), format!("{other:?} is not Accept, Deny or Pass"))),
        };
        let peers_field = format!("{field}.{peers_key}");
        let list = match o.get(peers_key) {
            Some(Value::Array(l)) if !l.is_empty() => l,
            _ => return Err((peers_field, "at least one peer is required".into())),
        };
        let mut peers = Vec::new();
        let mut fails_closed = false;
        for (i, p) in list.iter().enumerate() {
            match self.peer(p, dir, &format!("{peers_field}[{i}]"))? {
                Some(peer) => peers.push(peer),
                None => fails_closed = true,
            }
        }
        let ports = match self.flavour {
            Flavour::Upstream => self.upstream_ports(o.get("protocols"), &format!("{field}.protocols"))?,
            Flavour::Aws => self.aws_ports(o.get("ports"), &format!("{field}.ports"))?,
        };
        let (ports, unknown_port) = ports;
        fails_closed |= unknown_port;
        if fails_closed && action != Action::Accept {
            return Ok(ClusterRule::deny_everything(name));
        }
        if fails_closed {
            // An Accept that cannot be read exactly accepts nothing.
            peers.clear();
        }
        Ok(ClusterRule { name, action, peers, ports })
    }

    /// A peer, or `None` (reported) for one this agent does not know.
    fn peer(&mut self, v: &Value, dir: Direction, field: &str) -> Result<Option<ClusterPeer>, FieldError> {
        let Some((key, value)) = one_of(v, field).ok() else {
            self.unsupported.push((field.to_owned(), "a peer with no field this agent knows: fails closed".into()));
            return Ok(None);
        };
        let field = format!("{field}.{key}");
        match key.as_str() {
            "namespaces" => Ok(Some(ClusterPeer::Namespaces(selector(value, &field)?))),
            "pods" => {
                let (namespaces, pods) = self.namespaced_pods(value, &field)?;
                Ok(Some(ClusterPeer::Pods { namespaces, pods }))
            }
            "networks" if dir == Direction::Egress => {
                let list = value
                    .as_array()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| (field.clone(), "must be a non-empty list".to_owned()))?;
                let nets = list
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let f = format!("{field}[{i}]");
                        let s = n.as_str().ok_or_else(|| (f.clone(), "must be a CIDR string".to_owned()))?;
                        s.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| (f, format!("invalid CIDR {s:?}")))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Some(ClusterPeer::Networks(nets)))
            }
            other => {
                self.unsupported
                    .push((field.clone(), format!("peer {other:?} is not supported by this agent: fails closed")));
                Ok(None)
            }
        }
    }

    /// Upstream `protocols`, and whether an item was not understood.
    fn upstream_ports(
        &mut self,
        v: Option<&Value>,
        field: &str,
    ) -> Result<(Option<Vec<ClusterPort>>, bool), FieldError> {
        let Some(list) = list_or_absent(v, field)? else { return Ok((None, false)) };
        let mut ports = Vec::new();
        let mut unknown = false;
        for (i, item) in list.iter().enumerate() {
            let f = format!("{field}[{i}]");
            let Ok((key, value)) = one_of(item, &f) else {
                self.unsupported.push((f, "a protocol with no field this agent knows: fails closed".into()));
                unknown = true;
                continue;
            };
            let f = format!("{f}.{key}");
            match key.as_str() {
                "tcp" | "udp" | "sctp" => {
                    let protocol = protocol_number(&key.to_uppercase()).expect("known protocol");
                    let dest = object(Some(value), &f)?.get("destinationPort");
                    let f = format!("{f}.destinationPort");
                    let (which, port) = one_of(required(dest, &f)?, &f)?;
                    let f = format!("{f}.{which}");
                    let (start, end) = match which.as_str() {
                        "number" => {
                            let n = port_number(Some(port), &f)?;
                            (n, n)
                        }
                        "range" => range(port, &f)?,
                        _ => return Err((f, "expected number or range".into())),
                    };
                    ports.push(ClusterPort::Range { protocol, start, end });
                }
                "destinationNamedPort" => ports.push(ClusterPort::Named(port_name(value, &f)?)),
                other => {
                    self.unsupported
                        .push((f, format!("protocol {other:?} is not supported by this agent: fails closed")));
                    unknown = true;
                }
            }
        }
        Ok((Some(ports), unknown))
    }

    /// AWS `ports`: every key of an item counts.
    fn aws_ports(&mut self, v: Option<&Value>, field: &str) -> Result<(Option<Vec<ClusterPort>>, bool), FieldError> {
        let Some(list) = list_or_absent(v, field)? else { return Ok((None, false)) };
        let mut ports = Vec::new();
        let mut unknown = false;
        for (i, item) in list.iter().enumerate() {
            let f = format!("{field}[{i}]");
            let o = object(Some(item), &f)?;
            let protocol = |o: &Map<String, Value>, f: &str| {
                let name = o.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                protocol_number(name).ok_or_else(|| (format!("{f}.protocol"), format!("unsupported protocol {name:?}")))
            };
            let mut known = false;
            if let Some(n) = o.get("portNumber") {
                let f = format!("{f}.portNumber");
                let n_obj = object(Some(n), &f)?;
                let port = port_number(n_obj.get("port"), &format!("{f}.port"))?;
                ports.push(ClusterPort::Range { protocol: protocol(n_obj, &f)?, start: port, end: port });
                known = true;
            }
            if let Some(r) = o.get("portRange") {
                let f = format!("{f}.portRange");
                let (start, end) = range(r, &f)?;
                ports.push(ClusterPort::Range { protocol: protocol(object(Some(r), &f)?, &f)?, start, end });
                known = true;
            }
            if let Some(n) = o.get("namedPort") {
                ports.push(ClusterPort::Named(port_name(n, &format!("{f}.namedPort"))?));
                known = true;
            }
            if !known {
                self.unsupported.push((f, "a port with no field this agent knows: fails closed".into()));
                unknown = true;
            }
        }
        Ok((Some(ports), unknown))
    }
}

/// Refuses a misspelt field (`ingres`) as the API server's strict field
/// validation does: dropped silently, it would change what the policy says.
/// Peers and ports are not checked here: an unknown one fails closed.
fn known_fields(o: &Map<String, Value>, field: &str, known: &[&str]) -> Result<(), FieldError> {
    match o.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err((format!("{field}.{k}"), "unknown field".into())),
        None => Ok(()),
    }
}

fn required<'a>(v: Option<&'a Value>, field: &str) -> Result<&'a Value, FieldError> {
    v.filter(|v| !v.is_null()).ok_or_else(|| (field.to_owned(), "missing".into()))
}

fn object<'a>(v: Option<&'a Value>, field: &str) -> Result<&'a Map<String, Value>, FieldError> {
    required(v, field)?.as_object().ok_or_else(|| (field.to_owned(), "must be an object".into()))
}

fn list_or_absent<'a>(v: Option<&'a Value>, field: &str) -> Result<Option<&'a Vec<Value>>, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(l)) if !l.is_empty() => Ok(Some(l)),
        Some(_) => Err((field.to_owned(), "must be a non-empty list".into())),
    }
}

/// The one field set in an object that must have exactly one.
fn one_of<'a>(v: &'a Value, field: &str) -> Result<(String, &'a Value), FieldError> {
    let o = object(Some(v), field)?;
    let set: Vec<(&String, &Value)> = o.iter().filter(|(_, v)| !v.is_null()).collect();
    match set.as_slice() {
        [(k, v)] => Ok(((*k).clone(), *v)),
        [] => Err((field.to_owned(), "one field must be set".into())),
        _ => Err((field.to_owned(), format!("exactly one field may be set, not {}", set.len()))),
    }
}

fn selector(v: &Value, field: &str) -> Result<Selector, FieldError> {
    let s: LabelSelector = serde_json::from_value(v.clone()).map_err(|e| (field.to_owned(), e.to_string()))?;
    Selector::parse(&s).map_err(|r| (field.to_owned(), r))
}

fn port_number(v: Option<&Value>, field: &str) -> Result<u16, FieldError> {
    required(v, field)?
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n != 0)
        .ok_or_else(|| (field.to_owned(), "must be a port in 1-65535".into()))
}

fn range(v: &Value, field: &str) -> Result<(u16, u16), FieldError> {
    let o = object(Some(v), field)?;
    let start = port_number(o.get("start"), &format!("{field}.start"))?;
    let end = port_number(o.get("end"), &format!("{field}.end"))?;
    if start >= end {
        return Err((format!("{field}.end"), format!("{end} must be greater than start {start}")));
    }
    Ok((start, end))
}

fn port_name(v: &Value, field: &str) -> Result<String, FieldError> {
    let name = v.as_str().ok_or_else(|| (field.to_owned(), "must be a string".to_owned()))?;
    if !crate::parse::is_port_name(name) {
        return Err((field.to_owned(), format!("{name:?} is not a valid port name")));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests;
