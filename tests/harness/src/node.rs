use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};

use crate::{
    cmd::{ip, ip_output, tc},
    cni::{Chain, CniError, Sandbox},
    netns::{self, NetNs},
};

/// The pods' link-local default gateways, as the VPC CNI sets them.
const GATEWAY_V4: &str = "169.254.1.1";
const GATEWAY_V6: &str = "fe80::1";
/// The node's own address, on the node namespace's loopback.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd19, 0, 0, 0, 0, 0, 0, 1);

static NODES: AtomicU32 = AtomicU32::new(0);

/// A private node: a namespace with the host side of every pod.
#[derive(Debug)]
pub struct Node {
    // Pods first: their namespaces go before the node's.
    pods: Vec<Pod>,
    ns: NetNs,
    tag: String,
}

/// A pod: a namespace with `eth0` peered to a host veth in the node.
#[derive(Debug)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub host_veth: String,
    ns: NetNs,
    /// The runtime's sandbox id and the CNI chain's result, for a pod made
    /// through CNI.
    cni: Option<(String, serde_json::Value)>,
}

impl Pod {
    pub fn netns(&self) -> &NetNs {
        &self.ns
    }

    /// "namespace/name".
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// A pod from its CNI chain's ADD `result`.
    fn made_by_cni(
        namespace: &str,
        name: &str,
        ns: NetNs,
        container_id: String,
        result: serde_json::Value,
    ) -> Result<Self> {
        let address = |v6: bool| {
            result["ips"].as_array().into_iter().flatten().find_map(|ip| {
                let a: std::net::IpAddr = ip["address"].as_str()?.split('/').next()?.parse().ok()?;
                (a.is_ipv6() == v6).then_some(a)
            })
        };
        let (Some(std::net::IpAddr::V4(ip)), Some(std::net::IpAddr::V6(ip6))) = (address(false), address(true)) else {
            anyhow::bail!("the chain gave no address of each family: {result}");
        };
        // The host side just before the pod's own interface (a bridge
        // plugin lists its bridge first).
        let interfaces = result["interfaces"].as_array().cloned().unwrap_or_default();
        let pod_side = interfaces.iter().position(|i| i.get("sandbox").is_some()).unwrap_or(interfaces.len());
        let host_veth = interfaces[..pod_side]
            .iter()
            .rev()
            .find(|i| i.get("sandbox").is_none())
            .and_then(|i| i["name"].as_str())
            .with_context(|| format!("no host interface in {result}"))?
            .to_owned();
        Ok(Self {
            namespace: namespace.into(),
            name: name.into(),
            ip,
            ip6,
            host_veth,
            ns,
            cni: Some((container_id, result)),
        })
    }

    /// The sandbox as the runtime names it to CNI plugins, and the chain's
    /// ADD result, for a pod made through CNI.
    pub fn sandbox(&self) -> Option<(Sandbox<'_>, &serde_json::Value)> {
        let (container_id, result) = self.cni.as_ref()?;
        let sandbox = Sandbox { namespace: &self.namespace, name: &self.name, container_id, netns: Some(&self.ns) };
        Some((sandbox, result))
    }
}

impl Node {
    /// A new node namespace with forwarding on and the node IP configured.
    pub fn new() -> Result<Self> {
        netns::remove_stale();
        let tag = format!("{}{}-{}", netns::PREFIX, std::process::id(), NODES.fetch_add(1, Ordering::Relaxed));
        let ns = NetNs::create(format!("{tag}-node"))?;
        let n = ns.name().to_owned();
        // On loopback: no dummy driver is needed, and source selection still
        // picks it for traffic the node itself sends to pods.
        ip(&["-n", &n, "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"])?;
        ip(&["-n", &n, "addr", "add", &format!("{NODE_IP6}/128"), "dev", "lo"])?;
        ns.run(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
        })?
        .context("enabling forwarding in the node namespace")?;
        Ok(Self { pods: Vec::new(), ns, tag })
    }

    pub fn netns(&self) -> &NetNs {
        &self.ns
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod(&self, key: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.key() == key)
    }

    /// Adds pod `namespace/name` with addresses `ip_addr` and `ip6`, wired like
    /// the VPC CNI with `host_veth` as the node side (the caller applies the
    /// CNI's naming).
    pub fn add_pod(
        &mut self,
        namespace: &str,
        name: &str,
        ip_addr: Ipv4Addr,
        ip6: Ipv6Addr,
        host_veth: &str,
    ) -> Result<&Pod> {
        let host_veth = host_veth.to_owned();
        let ns = NetNs::create(format!("{}-{}-{}", self.tag, namespace, name))?;
        self.wire(&ns, ip_addr, ip6, &host_veth)?;
        self.pods.push(Pod {
            namespace: namespace.into(),
            name: name.into(),
            ip: ip_addr,
            ip6,
            host_veth,
            ns,
            cni: None,
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Makes pod `namespace/name` as a container runtime does: its network
    /// namespace, then `chain`'s ADD (which must give it an address of each
    /// family and a host-side interface). A failed ADD is followed by DEL
    /// and the namespace's removal, as runtimes do, and returned.
    pub fn add_pod_cni(
        &mut self,
        chain: &Chain,
        namespace: &str,
        name: &str,
    ) -> Result<std::result::Result<&Pod, CniError>> {
        let added = self.add_pods_cni(chain, &[(namespace, name)])?.pop().context("one pod asked")?;
        Ok(added.map(|()| self.pods.last().expect("just pushed")))
    }

    /// [`Self::add_pod_cni`] for several pods at once, their ADDs running
    /// concurrently as a runtime starting them together runs them; each
    /// pod's outcome in order.
    pub fn add_pods_cni(
        &mut self,
        chain: &Chain,
        pods: &[(&str, &str)],
    ) -> Result<Vec<std::result::Result<(), CniError>>> {
        let mut made = Vec::new();
        for (namespace, name) in pods {
            let ns = NetNs::create(format!("{}-{}-{}", self.tag, namespace, name))?;
            made.push((*namespace, *name, format!("{}-{namespace}-{name}", self.tag), ns));
        }
        let node = &self.ns;
        let results: Vec<Result<std::result::Result<serde_json::Value, CniError>>> = std::thread::scope(|s| {
            let adding: Vec<_> = made
                .iter()
                .map(|(namespace, name, container_id, ns)| {
                    s.spawn(move || {
                        let sandbox = Sandbox { namespace, name, container_id, netns: Some(ns) };
                        let added = chain.add(node, &sandbox)?;
                        if added.is_err() {
                            chain
                                .del(node, &sandbox, None)?
                                .map_err(|d| anyhow::anyhow!("DEL after a failed ADD: {d}"))?;
                        }
                        Ok(added)
                    })
                })
                .collect();
            adding.into_iter().map(|a| a.join().expect("ADD thread")).collect()
        });
        let mut outcomes = Vec::new();
        for ((namespace, name, container_id, ns), result) in made.into_iter().zip(results) {
            match result? {
                Ok(result) => {
                    self.pods.push(Pod::made_by_cni(namespace, name, ns, container_id, result)?);
                    outcomes.push(Ok(()));
                }
                Err(e) => outcomes.push(Err(e)),
            }
        }
        Ok(outcomes)
    }

    /// `chain`'s DEL for pod `key` (made by [`Self::add_pod_cni`]); if it
    /// succeeds the pod is unlisted and its namespace removed.
    pub fn del_pod_cni(&mut self, chain: &Chain, key: &str) -> Result<std::result::Result<(), CniError>> {
        let i = self.pods.iter().position(|p| p.key() == key).with_context(|| format!("no pod {key}"))?;
        let (sandbox, result) = self.pods[i].sandbox().with_context(|| format!("{key} was not made through CNI"))?;
        let out = chain.del(&self.ns, &sandbox, Some(result))?;
        if out.is_ok() {
            self.pods.remove(i);
        }
        Ok(out)
    }

    /// Deletes pod `key`'s veth pair and makes it again, addresses and names
    /// unchanged, as a CNI does for a recreated sandbox: the host side gets a
    /// new ifindex.
    pub fn recreate_veth(&self, key: &str) -> Result<()> {
        self.delete_veth(key)?;
        self.wire_veth(key)
    }

    /// Wires pod `key` again after [`Self::delete_veth`], as a CNI ADD does.
    pub fn wire_veth(&self, key: &str) -> Result<()> {
        let pod = self.pod(key).with_context(|| format!("no pod {key}"))?;
        self.wire(&pod.ns, pod.ip, pod.ip6, &pod.host_veth)
    }

    /// Deletes pod `key`'s veth pair, as a CNI DEL does; the pod stays listed
    /// but can no longer be reached.
    pub fn delete_veth(&self, key: &str) -> Result<()> {
        let pod = self.pod(key).with_context(|| format!("no pod {key}"))?;
        ip(&["-n", self.ns.name(), "link", "del", &pod.host_veth])
    }

    /// Deletes the clsact qdisc of pod `key`'s host veth, and with it every
    /// filter on it: what a stray `tc qdisc del` does to an agent's filters.
    pub fn delete_clsact(&self, key: &str) -> Result<()> {
        let pod = self.pod(key).with_context(|| format!("no pod {key}"))?;
        tc(&["-n", self.ns.name(), "qdisc", "del", "dev", &pod.host_veth, "clsact"])
    }

    /// A veth pair from the node to `ns`, routed both ways for both families.
    fn wire(&self, ns: &NetNs, ip_addr: Ipv4Addr, ip6: Ipv6Addr, host_veth: &str) -> Result<()> {
        let (n, p) = (self.ns.name(), ns.name());
        ip(&["-n", n, "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", p])?;
        ip(&["-n", n, "link", "set", host_veth, "up"])?;
        ip(&["-n", n, "route", "add", &format!("{ip_addr}/32"), "dev", host_veth, "scope", "link"])?;
        let host_mac = mac_address(n, host_veth)?;
        ip(&["-n", p, "addr", "add", &format!("{ip_addr}/32"), "dev", "eth0"])?;
        ip(&["-n", p, "link", "set", "eth0", "up"])?;
        ip(&["-n", p, "route", "add", GATEWAY_V4, "dev", "eth0", "scope", "link"])?;
        ip(&["-n", p, "route", "add", "default", "via", GATEWAY_V4, "dev", "eth0"])?;
        ip(&["-n", p, "neigh", "add", GATEWAY_V4, "lladdr", &host_mac, "dev", "eth0", "nud", "permanent"])?;
        ip(&["-n", n, "-6", "route", "add", &format!("{ip6}/128"), "dev", host_veth])?;
        ip(&["-n", p, "-6", "addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"])?;
        ip(&["-n", p, "-6", "neigh", "add", GATEWAY_V6, "lladdr", &host_mac, "dev", "eth0", "nud", "permanent"])?;
        ip(&["-n", p, "-6", "route", "add", "default", "via", GATEWAY_V6, "dev", "eth0"])
    }
}

/// The MAC address of `link` in namespace `ns` (sysfs would show the root namespace's).
fn mac_address(ns: &str, link: &str) -> Result<String> {
    let out = ip_output(&["-n", ns, "-o", "link", "show", "dev", link])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no MAC address for {link}: {out}"))
}
