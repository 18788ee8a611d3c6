//! The policies Cyclonus' generator builds (its `pkg/generator/netpol.go`
//! and `constants.go`): a policy as a target and per-direction rules, the
//! base policy most families change one thing of, and the selectors and
//! ports they use.
use serde_json::{Value, json};

/// One rule: ports and peers, each omitted from the object when empty.
#[derive(Clone, Debug, Default)]
pub struct Rule {
    pub ports: Vec<Value>,
    pub peers: Vec<Value>,
}

/// A NetworkPolicy: a direction is in `policyTypes` exactly when its rules
/// are `Some` (no rules then isolates that direction).
#[derive(Clone, Debug)]
pub struct Netpol {
    pub name: String,
    pub namespace: String,
    pub pod_selector: Value,
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Netpol {
    pub fn new(name: &str, namespace: &str, pod_selector: Value) -> Self {
        Self { name: name.into(), namespace: namespace.into(), pod_selector, ingress: None, egress: None }
    }

    pub fn with(mut self, ingress: bool, rules: Vec<Rule>) -> Self {
        *self.rules_mut(ingress) = Some(rules);
        self
    }

    fn rules_mut(&mut self, ingress: bool) -> &mut Option<Vec<Rule>> {
        if ingress { &mut self.ingress } else { &mut self.egress }
    }

    /// The first rule of a direction the base policy has.
    fn first_rule(&mut self, ingress: bool) -> &mut Rule {
        let rules = self.rules_mut(ingress).as_mut().expect("the base policy has both directions");
        rules.first_mut().expect("the base policy has a rule in each direction")
    }

    pub fn set_namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.into();
        self
    }

    pub fn set_pod_selector(mut self, selector: Value) -> Self {
        self.pod_selector = selector;
        self
    }

    /// Replaces every rule of a direction (for egress, the DNS rule too).
    pub fn set_rules(self, ingress: bool, rules: Vec<Rule>) -> Self {
        self.with(ingress, rules)
    }

    /// Replaces the first rule's ports.
    pub fn set_ports(mut self, ingress: bool, ports: Vec<Value>) -> Self {
        self.first_rule(ingress).ports = ports;
        self
    }

    /// Replaces the first rule's peers.
    pub fn set_peers(mut self, ingress: bool, peers: Vec<Value>) -> Self {
        self.first_rule(ingress).peers = peers;
        self
    }

    pub fn to_json(&self) -> Value {
        let rules = |rules: &[Rule], peers_key: &str| -> Vec<Value> {
            rules
                .iter()
                .map(|r| {
                    let mut rule = serde_json::Map::new();
                    if !r.ports.is_empty() {
                        rule.insert("ports".into(), Value::Array(r.ports.clone()));
                    }
                    if !r.peers.is_empty() {
                        rule.insert(peers_key.into(), Value::Array(r.peers.clone()));
                    }
                    Value::Object(rule)
                })
                .collect()
        };
        let mut spec = serde_json::Map::new();
        spec.insert("podSelector".into(), self.pod_selector.clone());
        let mut types = Vec::new();
        if let Some(ingress) = &self.ingress {
            types.push("Ingress");
            spec.insert("ingress".into(), Value::Array(rules(ingress, "from")));
        }
        if let Some(egress) = &self.egress {
            types.push("Egress");
            spec.insert("egress".into(), Value::Array(rules(egress, "to")));
        }
        spec.insert("policyTypes".into(), json!(types));
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec})
    }
}

pub fn match_labels(key: &str, value: &str) -> Value {
    json!({"matchLabels": {key: value}})
}

pub fn match_in(key: &str, values: &[&str]) -> Value {
    json!({"matchExpressions": [{"key": key, "operator": "In", "values": values}]})
}

pub fn empty_selector() -> Value {
    json!({})
}

/// `{protocol, port, endPort}`, each omitted when `None`; a port is a
/// number or a name.
pub fn port(protocol: Option<&str>, port: Option<Value>, end_port: Option<u16>) -> Value {
    let mut p = serde_json::Map::new();
    if let Some(protocol) = protocol {
        p.insert("protocol".into(), json!(protocol));
    }
    if let Some(port) = port {
        p.insert("port".into(), port);
    }
    if let Some(end) = end_port {
        p.insert("endPort".into(), json!(end));
    }
    Value::Object(p)
}

pub fn tcp(n: u16) -> Value {
    port(Some("TCP"), Some(json!(n)), None)
}

/// Port 53 over UDP and TCP, to anyone: always the base policy's second
/// egress rule.
pub fn allow_dns() -> Rule {
    Rule { ports: vec![port(Some("UDP"), Some(json!(53)), None), tcp(53)], peers: Vec::new() }
}

/// `x/base`: pod a, ingress TCP/80 from pods b, c of namespaces x, y; egress
/// TCP/80 to pods a, b of namespaces y, z, and DNS.
pub fn base() -> Netpol {
    let peer = |pods: &[&str], namespaces: &[&str]| json!({"podSelector": match_in("pod", pods), "namespaceSelector": match_in("ns", namespaces)});
    Netpol::new("base", "x", match_labels("pod", "a"))
        .with(true, vec![Rule { ports: vec![tcp(80)], peers: vec![peer(&["b", "c"], &["x", "y"])] }])
        .with(false, vec![Rule { ports: vec![tcp(80)], peers: vec![peer(&["a", "b"], &["y", "z"])] }, allow_dns()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_policy_restricts_both_directions() {
        let p = base().to_json();
        assert_eq!(p["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(
            p["spec"]["egress"][1],
            json!({"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]})
        );
        assert_eq!(p["spec"]["ingress"][0]["from"][0]["namespaceSelector"], match_in("ns", &["x", "y"]));
    }

    #[test]
    fn setters_change_one_thing() {
        let p = base().set_peers(false, Vec::new()).to_json();
        assert_eq!(
            p["spec"]["egress"][0],
            json!({"ports": [{"protocol": "TCP", "port": 80}]}),
            "empty peers are omitted"
        );
        assert_eq!(p["spec"]["egress"].as_array().unwrap().len(), 2, "the DNS rule stays");
        let p = base().set_rules(false, Vec::new()).to_json();
        assert_eq!(p["spec"]["egress"], json!([]), "deny all, DNS included");
        assert_eq!(p["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    }
}
