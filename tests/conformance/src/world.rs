//! A model made real: a node namespace with the model's pods serving what
//! it says (x/y/z: TCP and UDP on 80 and 81, with a ClusterIP Service per
//! pod in both families translated by kube-proxy's iptables rules in the
//! node namespace), a manifests directory describing them, and `na-agent`
//! enforcing it in local mode. Everything is removed on drop.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use na_agent::{
    source::manifests,
    veth::{DEFAULT_PREFIX, host_veth_name},
};
use na_harness::{
    Node, Proto, Servers,
    kube_proxy::{KubeProxy, ServicePort},
};
use serde_json::{Value, json};

use crate::{
    case::Step,
    expected::Cluster,
    generated::Action,
    model::{Family, Model, ModelName, NAMESPACE_NAME_LABEL, Via},
    template::{self, Addresses},
};

/// The node name the agent runs as; every pod is scheduled on it.
const NODE: &str = "conformance-node";
/// This run's pins live in `/sys/fs/bpf/<PIN_PREFIX><pid>`.
const PIN_PREFIX: &str = "na-conformance-";
/// Pods a case of the x/y/z model may create (Cyclonus' `x/d`, `y-2/a`,
/// `y-2/b`, `w/a`): built with the others, serving from the start, but in
/// the cluster (the manifests, the probes) only from their creation to
/// their deletion.
const CREATABLE: [&str; 4] = ["x/d", "y-2/a", "y-2/b", "w/a"];
/// How long the agent may take to apply one change before the step fails.
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct World {
    // Drop order matters: the agent stops first, servers before their
    // namespaces, and pins and files last.
    agent: Agent,
    _servers: Servers,
    pub node: Node,
    pins: Removed,
    dir: Removed,
    model: Model,
    /// The pods in the cluster, with their labels.
    labels: BTreeMap<String, BTreeMap<String, String>>,
    /// The namespaces in the cluster, with their labels.
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Annotations of namespaces that have some.
    namespace_annotations: BTreeMap<String, BTreeMap<String, String>>,
    policies: BTreeMap<String, Value>,
}

/// Pin directories of earlier runs that were killed before cleaning up.
fn remove_stale_pins() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PIN_PREFIX) else { continue };
        if pid.parse::<u32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A path removed (recursively) on drop.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM: the agent exits leaving its programs pinned, and the pin
        // directory goes with the world.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).expect("pid fits")),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl World {
    /// Builds `model`'s pods and starts `agent` on them; returns once every
    /// pod is enforced.
    pub fn new(agent: &Path, model: ModelName) -> Result<Self> {
        let model = model.model();
        remove_stale_pins();
        let tag = format!("{}", std::process::id());
        let dir = Removed(std::env::temp_dir().join(format!("na-conformance-{tag}")));
        let pins = Removed(PathBuf::from(format!("/sys/fs/bpf/{PIN_PREFIX}{tag}")));
        std::fs::create_dir_all(dir.0.join("manifests"))?;
        let mut node = Node::new()?;
        let creatable = if model.name == ModelName::Netpol { CREATABLE.as_slice() } else { &[] };
        let keys = model.keys().into_iter().chain(creatable.iter().map(|k| k.to_string()));
        for (i, key) in keys.enumerate() {
            let (ns, pod) = key.split_once('/').expect("model keys are ns/pod");
            let host = u8::try_from(i + 2).expect("a dozen pods");
            let ip6 = Ipv6Addr::new(0xfd18, 0, 0, 0, 0, 0, 0, u16::from(host));
            node.add_pod(ns, pod, Ipv4Addr::new(198, 18, 0, host), ip6, &host_veth_name(DEFAULT_PREFIX, ns, pod))?;
        }
        let mut servers = Servers::default();
        for pod in node.pods() {
            for probe in &model.serves {
                servers.start(pod, probe.proto, probe.port)?;
            }
        }
        if model.services {
            service_proxy(&node, &model).sync(node.netns())?;
        }
        let status = dir.0.join("status.json");
        let log = std::fs::File::create(dir.0.join("agent.log"))?;
        let child = Command::new("nsenter")
            // Only the network namespace: the agent must share our bpffs. With
            // the DaemonSet's privileges, no more.
            .arg(format!("--net=/run/netns/{}", node.netns().name()))
            .arg("--")
            .args(na_harness::privileges::as_daemon_set())
            .arg(agent)
            .args(["--node-name", NODE, "--manifests"])
            .arg(dir.0.join("manifests"))
            .arg("--status-file")
            .arg(&status)
            .arg("--cni-socket")
            .arg(dir.0.join("cni.sock"))
            .arg("--bpffs-root")
            .arg(&pins.0)
            .stdout(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", agent.display()))?;
        let mut world = Self {
            agent: Agent(child),
            _servers: servers,
            node,
            pins,
            dir,
            model,
            labels: BTreeMap::new(),
            namespace_labels: BTreeMap::new(),
            namespace_annotations: BTreeMap::new(),
            policies: BTreeMap::new(),
        };
        world.reset()?;
        Ok(world)
    }

    pub fn model(&self) -> ModelName {
        self.model.name
    }

    /// Whether probes may go through pods' Services.
    pub fn has_services(&self) -> bool {
        self.model.services
    }

    /// Back to the starting labels and no policies, applied by the agent.
    pub fn reset(&mut self) -> Result<()> {
        self.policies.clear();
        self.labels = self.model.pods.iter().cloned().collect();
        self.namespace_labels = self.model.namespaces.iter().cloned().collect();
        self.namespace_annotations.clear();
        self.publish()
    }

    /// The pods in the cluster, in table order.
    pub fn pods(&self) -> Vec<&na_harness::Pod> {
        self.node.pods().iter().filter(|p| self.labels.contains_key(&p.key())).collect()
    }

    /// Their keys, in table order.
    pub fn keys(&self) -> Vec<String> {
        self.pods().iter().map(|p| p.key()).collect()
    }

    /// Each pod's address in `family`.
    pub fn addresses(&self, family: Family) -> Addresses {
        self.node.pods().iter().map(|p| (p.key(), family.harness().of(p))).collect::<BTreeMap<String, IpAddr>>()
    }

    /// Where probes reach each pod in the cluster, in table order.
    pub fn targets(&self, family: Family, via: Via) -> Vec<IpAddr> {
        let pods = self.node.pods().iter().enumerate().filter(|(_, p)| self.labels.contains_key(&p.key()));
        assert!(via == Via::Pod || self.model.services, "the model has no Services");
        match via {
            Via::Pod => pods.map(|(_, p)| family.harness().of(p)).collect(),
            Via::Service => pods.map(|(i, _)| service_addrs(i)[usize::from(family == Family::Ipv6)]).collect(),
        }
    }

    /// Applies `step`'s changes, in `family`, and waits for the agent to
    /// enforce them.
    pub fn apply(&mut self, step: &Step, family: Family) -> Result<()> {
        let addrs = self.addresses(family);
        for policy in &step.policies {
            let policy = template::expand(policy, &addrs, family == Family::Ipv6).map_err(anyhow::Error::msg)?;
            let key =
                policy_key(&policy).context("policies: metadata.name (and a NetworkPolicy's namespace) are needed")?;
            self.policies.insert(key, policy);
        }
        let deletes = step.delete.iter().map(|key| {
            let (ns, name) = key.split_once('/').unwrap_or((key, ""));
            Action::DeletePolicy(ns.into(), name.into())
        });
        let pod_labels = step.pod_labels.iter().map(|(pod, labels)| Action::SetPodLabels(pod.clone(), labels.clone()));
        let namespace_labels =
            step.namespace_labels.iter().map(|(ns, labels)| Action::SetNamespaceLabels(ns.clone(), labels.clone()));
        for action in deletes.chain(pod_labels).chain(namespace_labels) {
            self.act(&action)?;
        }
        for (ns, annotations) in &step.namespace_annotations {
            if !self.namespace_labels.contains_key(ns) {
                bail!("namespaceAnnotations: no namespace {ns}");
            }
            self.namespace_annotations.insert(ns.clone(), annotations.clone());
        }
        self.publish()
    }

    /// Applies a generated step's actions and waits for the agent to
    /// enforce them. Creating a policy that exists, or updating or deleting
    /// one that does not, is an error, as it is for Cyclonus.
    pub fn apply_actions(&mut self, actions: &[Action]) -> Result<()> {
        for action in actions {
            self.act(action)?;
        }
        self.publish()
    }

    /// One change to the cluster, not yet published.
    fn act(&mut self, action: &Action) -> Result<()> {
        let key = |policy: &Value| policy_key(policy).unwrap_or_default();
        match action {
            Action::CreatePolicy(p) => {
                if self.policies.insert(key(p), p.clone()).is_some() {
                    bail!("create: policy {} exists", key(p));
                }
            }
            Action::UpdatePolicy(p) => {
                if self.policies.insert(key(p), p.clone()).is_none() {
                    bail!("update: no policy {}", key(p));
                }
            }
            Action::DeletePolicy(ns, name) => {
                if self.policies.remove(&format!("{ns}/{name}")).is_none() {
                    bail!("delete: no policy {ns}/{name}");
                }
            }
            Action::SetPodLabels(pod, labels) => {
                *self.labels.get_mut(pod).with_context(|| format!("set labels: no pod {pod}"))? = labels.clone();
            }
            Action::SetNamespaceLabels(ns, labels) => {
                let slot =
                    self.namespace_labels.get_mut(ns).with_context(|| format!("set labels: no namespace {ns}"))?;
                *slot = labels.clone();
                slot.insert(NAMESPACE_NAME_LABEL.into(), ns.clone());
            }
            Action::CreateNamespace(ns, labels) => {
                let mut labels = labels.clone();
                labels.insert(NAMESPACE_NAME_LABEL.into(), ns.clone());
                if self.namespace_labels.insert(ns.clone(), labels).is_some() {
                    bail!("create: namespace {ns} exists");
                }
            }
            Action::DeleteNamespace(ns) => {
                if self.namespace_labels.remove(ns).is_none() {
                    bail!("delete: no namespace {ns}");
                }
                self.labels.retain(|key, _| !key.starts_with(&format!("{ns}/")));
            }
            Action::CreatePod(pod, labels) => {
                let ns = pod.split_once('/').map(|(ns, _)| ns).unwrap_or_default();
                if !CREATABLE.contains(&pod.as_str()) || !self.namespace_labels.contains_key(ns) {
                    bail!("create: pod {pod} is not one this runner can create, or namespace {ns} is missing");
                }
                if self.labels.insert(pod.clone(), labels.clone()).is_some() {
                    bail!("create: pod {pod} exists");
                }
            }
            Action::DeletePod(pod) => {
                if self.labels.remove(pod).is_none() {
                    bail!("delete: no pod {pod}");
                }
            }
        }
        Ok(())
    }

    /// What a failed case needs read next to its tables: the agent's last
    /// log lines, and what the datapath holds for `pods` (`na-cli pod`, run
    /// in the node's namespace as an operator would on the node).
    pub fn diagnose(&self, pods: &[String]) -> String {
        let log = na_harness::last_lines(&self.dir.0.join("agent.log"), 20);
        let mut out = format!("the agent's last log lines:\n{log}\n");
        let cli = std::env::current_exe().map(|exe| exe.with_file_name("na-cli")).unwrap_or_default();
        for pod in pods {
            let shown = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.node.netns().name()))
                .arg("--")
                .arg(&cli)
                .arg("--bpffs-root")
                .arg(&self.pins.0)
                .arg("--status-file")
                .arg(self.dir.0.join("status.json"))
                .args(["pod", pod])
                .output();
            let text = match shown {
                // Its first tracked flows are enough to see it judges.
                Ok(o) => {
                    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                    text.lines().take(40).collect::<Vec<_>>().join("\n")
                }
                Err(e) => format!("running {}: {e}", cli.display()),
            };
            out.push_str(&format!("na-cli pod {pod}:\n{text}\n"));
        }
        out
    }

    /// The cluster's objects as last published, for the reference evaluator.
    pub fn cluster(&self) -> Result<Cluster> {
        fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
            serde_json::from_value(v).context("a manifest the runner wrote")
        }
        let (cluster_policies, policies): (Vec<&Value>, Vec<&Value>) =
            self.policies.values().partition(|p| p["kind"] == "ClusterNetworkPolicy");
        Ok(Cluster {
            namespaces: self.namespace_documents().into_iter().map(parse).collect::<Result<_>>()?,
            pods: self.pods().into_iter().map(|p| parse(self.pod_manifest(p))).collect::<Result<_>>()?,
            policies: policies.into_iter().cloned().map(parse).collect::<Result<_>>()?,
            cluster_policies: cluster_policies.into_iter().cloned().collect(),
        })
    }

    fn namespace_documents(&self) -> Vec<Value> {
        self.namespace_labels
            .iter()
            .map(|(ns, labels)| {
                let annotations = self.namespace_annotations.get(ns).cloned().unwrap_or_default();
                json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": ns, "labels": labels, "annotations": annotations}})
            })
            .collect()
    }

    /// Writes the whole cluster as one file (renamed in, so the agent never
    /// reads half of it) and waits until the agent reports enforcing it.
    fn publish(&mut self) -> Result<()> {
        let mut docs = self.namespace_documents();
        docs.extend(self.pods().into_iter().map(|p| self.pod_manifest(p)));
        if self.model.services {
            let present = self.node.pods().iter().enumerate().filter(|(_, p)| self.labels.contains_key(&p.key()));
            docs.extend(present.map(|(i, p)| service_manifest(i, p, &self.model)));
        }
        docs.extend(self.policies.values().cloned());
        let text: Vec<String> = docs.iter().map(|d| serde_json::to_string(d).expect("json")).collect();
        let manifests = self.dir.0.join("manifests");
        let tmp = self.dir.0.join("cluster.yaml.tmp");
        std::fs::write(&tmp, text.join("\n---\n"))?;
        std::fs::rename(&tmp, manifests.join("cluster.yaml"))?;
        let want = manifests::load_dir(&manifests).revision;
        self.wait_applied(&want)
    }

    fn pod_manifest(&self, pod: &na_harness::Pod) -> Value {
        let key = pod.key();
        // One container per declared port.
        let containers: Vec<Value> = self
            .model
            .container_ports
            .iter()
            .map(|p| {
                json!({"name": format!("cont-{}-{}", p.port, p.protocol.to_lowercase()),
                       "ports": [{"name": p.name, "containerPort": p.port, "protocol": p.protocol}]})
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": format!("uid-{}-{}", pod.namespace, pod.name),
                            "labels": self.labels[&key]},
               "spec": {"nodeName": NODE, "containers": containers},
               "status": {"phase": "Running", "podIP": pod.ip.to_string(),
                          "podIPs": [{"ip": pod.ip.to_string()}, {"ip": pod.ip6.to_string()}]}})
    }

    fn wait_applied(&mut self, revision: &str) -> Result<()> {
        let status_file = self.dir.0.join("status.json");
        let deadline = Instant::now() + APPLY_TIMEOUT;
        loop {
            let status: Value =
                std::fs::read(&status_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
            let applied = status["revision"] == revision;
            let pending = status["pending"].as_array().is_some_and(|p| !p.is_empty());
            if applied && !pending {
                return match status["errors"].as_array().map(Vec::as_slice) {
                    Some([]) | None => Ok(()),
                    Some(errors) => bail!("the agent reported errors: {errors:?}"),
                };
            }
            if Instant::now() > deadline {
                bail!("the agent did not apply revision {revision} within {APPLY_TIMEOUT:?}; status: {status}");
            }
            if let Ok(Some(exit)) = self.agent.0.try_wait() {
                bail!("the agent exited ({exit}); its log: {}", self.dir.0.join("agent.log").display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The ClusterIPs of pod `i`'s Service: IPv4, IPv6.
fn service_addrs(i: usize) -> [IpAddr; 2] {
    let host = u8::try_from(10 + i).expect("a dozen pods");
    [IpAddr::V4(Ipv4Addr::new(10, 96, 0, host)), IpAddr::V6(Ipv6Addr::new(0xfd96, 0, 0, 0, 0, 0, 0, u16::from(host)))]
}

/// Pod `i`'s Service: both families, what the model's pods serve. Without
/// a selector (its endpoints are the pod, whatever labels a case gives it),
/// as a Service with hand-written EndpointSlices is.
fn service_manifest(i: usize, pod: &na_harness::Pod, model: &Model) -> Value {
    let ports: Vec<Value> = model
        .serves
        .iter()
        .map(|probe| {
            let proto = match probe.proto {
                Proto::Tcp => "TCP",
                Proto::Udp => "UDP",
            };
            let port = probe.port;
            json!({"name": format!("{}-{port}", proto.to_lowercase()), "protocol": proto, "port": port, "targetPort": port})
        })
        .collect();
    let ips: Vec<String> = service_addrs(i).iter().map(ToString::to_string).collect();
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": format!("s-{}", pod.name), "namespace": pod.namespace},
           "spec": {"clusterIP": ips[0], "clusterIPs": ips, "ipFamilyPolicy": "RequireDualStack", "ports": ports}})
}

/// kube-proxy's rules for every pod's Service.
fn service_proxy(node: &Node, model: &Model) -> KubeProxy {
    let mut proxy = KubeProxy::default();
    for (i, pod) in node.pods().iter().enumerate() {
        for probe in &model.serves {
            let port = probe.port;
            proxy.services.push(ServicePort {
                name: format!("{}/s-{}:{port}", pod.namespace, pod.name),
                proto: probe.proto,
                addrs: service_addrs(i).to_vec(),
                port,
                node_port: None,
                endpoints: vec![(IpAddr::V4(pod.ip), port), (IpAddr::V6(pod.ip6), port)],
            });
        }
    }
    proxy
}

/// A policy's key in the world: a NetworkPolicy's `namespace/name`, a
/// ClusterNetworkPolicy's `ClusterNetworkPolicy/name`.
fn policy_key(policy: &Value) -> Option<String> {
    let name = policy["metadata"]["name"].as_str()?;
    if policy["kind"] == "ClusterNetworkPolicy" {
        return Some(format!("ClusterNetworkPolicy/{name}"));
    }
    Some(format!("{}/{name}", policy["metadata"]["namespace"].as_str()?))
}
