//! Service translation in the node namespace, written the way kube-proxy
//! writes it, in either of its Linux modes:
//! - iptables: `PREROUTING` and `OUTPUT` jump to `KUBE-SERVICES`, which sends
//!   each Service frontend to its `KUBE-SVC-…` chain, which picks one
//!   `KUBE-SEP-…` endpoint chain at random (`statistic --mode random`,
//!   probabilities 1/n, 1/(n-1), …), which DNATs. NodePorts hang off
//!   `KUBE-NODEPORTS` for every local address. Each sync rewrites the
//!   node's whole `nat` table, as kube-proxy's full syncs do.
//! - nftables: a `kube-proxy` table per family whose `services` chain (from
//!   the `dstnat` hooks) looks frontends up in the `service-ips` and
//!   `service-nodeports` verdict maps; each Service's chain picks an
//!   endpoint chain with `numgen random`, which DNATs.
//!
//! Either lives and dies with the node namespace.
use std::{
    fmt::Write as _,
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{NetNs, Proto};

/// One Service port: where it is reached and where it goes.
#[derive(Clone, Debug)]
pub struct ServicePort {
    /// `namespace/name:port`, kube-proxy's comment and chain-name seed.
    pub name: String,
    pub proto: Proto,
    /// ClusterIPs (one per family) and other frontend addresses on `port`.
    pub addrs: Vec<IpAddr>,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Endpoint addresses and their (target) ports.
    pub endpoints: Vec<(IpAddr, u16)>,
}

/// kube-proxy's Linux modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyMode {
    #[default]
    Iptables,
    Nftables,
}

/// The node's Services, rewritten into its tables on [`KubeProxy::sync`].
#[derive(Default)]
pub struct KubeProxy {
    pub mode: ProxyMode,
    pub services: Vec<ServicePort>,
}

impl KubeProxy {
    /// Writes every Service into `node`'s tables, both families.
    pub fn sync(&self, node: &NetNs) -> Result<()> {
        match self.mode {
            ProxyMode::Iptables => {
                for (tool, v6) in [("iptables-restore", false), ("ip6tables-restore", true)] {
                    restore(node, tool, &[], &self.rules(v6))?;
                }
            }
            ProxyMode::Nftables => restore(node, "nft", &["-f", "-"], &self.nft_rules())?,
        }
        Ok(())
    }

    /// Both families' `kube-proxy` tables in nft's syntax, replacing any
    /// earlier ones.
    fn nft_rules(&self) -> String {
        let mut out = String::new();
        for (family, v6) in [("ip", false), ("ip6", true)] {
            let addr_type = if v6 { "ipv6_addr" } else { "ipv4_addr" };
            // Created first so the delete never fails, then rebuilt whole.
            let _ = writeln!(out, "table {family} kube-proxy {{}}\ndelete table {family} kube-proxy");
            let _ = writeln!(out, "table {family} kube-proxy {{");
            let mut chains = String::new();
            let (mut ips, mut node_ports) = (Vec::new(), Vec::new());
            for (i, svc) in self.services.iter().enumerate() {
                let proto = proto_name(svc.proto);
                let endpoints: Vec<_> = svc.endpoints.iter().filter(|(ip, _)| ip.is_ipv6() == v6).collect();
                let chain = format!("service-{i:04}");
                let picks: Vec<String> =
                    (0..endpoints.len()).map(|n| format!("{n} : goto endpoint-{i:04}-{n:02}")).collect();
                let pick = if picks.is_empty() {
                    String::new()
                } else {
                    format!("numgen random mod {} vmap {{ {} }}", picks.len(), picks.join(", "))
                };
                let _ = writeln!(chains, "  chain {chain} {{\n    {pick}\n  }}");
                for (n, (ip, port)) in endpoints.iter().enumerate() {
                    let to = if v6 { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") };
                    let _ = writeln!(
                        chains,
                        "  chain endpoint-{i:04}-{n:02} {{\n    meta l4proto {proto} dnat to {to}\n  }}"
                    );
                }
                for addr in svc.addrs.iter().filter(|a| a.is_ipv6() == v6) {
                    ips.push(format!("{addr} . {proto} . {} : goto {chain}", svc.port));
                }
                if let Some(node_port) = svc.node_port {
                    node_ports.push(format!("{proto} . {node_port} : goto {chain}"));
                }
            }
            let elements =
                |e: &[String]| if e.is_empty() { String::new() } else { format!("elements = {{ {} }}", e.join(", ")) };
            let _ = writeln!(
                out,
                "  map service-ips {{\n    type {addr_type} . inet_proto . inet_service : verdict\n    {}\n  }}",
                elements(&ips)
            );
            let _ = writeln!(
                out,
                "  map service-nodeports {{\n    type inet_proto . inet_service : verdict\n    {}\n  }}",
                elements(&node_ports)
            );
            out.push_str(&chains);
            let _ = writeln!(
                out,
                "  chain services {{\n    {family} daddr . meta l4proto . th dport vmap @service-ips\n    \
                 fib daddr type local meta l4proto . th dport vmap @service-nodeports\n  }}"
            );
            let _ = writeln!(
                out,
                "  chain nat-prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }}"
            );
            let _ = writeln!(
                out,
                "  chain nat-output {{\n    type nat hook output priority -100; policy accept;\n    jump services\n  }}"
            );
            out.push_str("}\n");
        }
        out
    }

    /// One family's `nat` table in iptables-restore's format.
    fn rules(&self, v6: bool) -> String {
        let mut chains = vec!["KUBE-SERVICES".to_owned(), "KUBE-NODEPORTS".to_owned()];
        let mut rules = vec![
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".to_owned(),
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".to_owned(),
        ];
        for (i, svc) in self.services.iter().enumerate() {
            let proto = proto_name(svc.proto);
            let endpoints: Vec<_> = svc.endpoints.iter().filter(|(ip, _)| ip.is_ipv6() == v6).collect();
            let chain = format!("KUBE-SVC-{i:04}");
            chains.push(chain.clone());
            let comment = format!("-m comment --comment \"{}\"", svc.name);
            for addr in svc.addrs.iter().filter(|a| a.is_ipv6() == v6) {
                let host = if v6 { 128 } else { 32 };
                rules.push(format!(
                    "-A KUBE-SERVICES -d {addr}/{host} -p {proto} {comment} -m {proto} --dport {} -j {chain}",
                    svc.port
                ));
            }
            if let Some(node_port) = svc.node_port {
                rules.push(format!("-A KUBE-NODEPORTS -p {proto} {comment} -m {proto} --dport {node_port} -j {chain}"));
            }
            for (n, (ip, port)) in endpoints.iter().enumerate() {
                let sep = format!("KUBE-SEP-{i:04}-{n:02}");
                chains.push(sep.clone());
                let left = endpoints.len() - n;
                let pick = if left > 1 {
                    format!("-m statistic --mode random --probability {:.11} ", 1.0 / left as f64)
                } else {
                    String::new()
                };
                rules.push(format!("-A {chain} {comment} {pick}-j {sep}"));
                let to = if v6 { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") };
                rules.push(format!("-A {sep} -p {proto} {comment} -m {proto} -j DNAT --to-destination {to}"));
            }
        }
        rules.push(
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
                .to_owned(),
        );
        let mut out = String::from(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
        );
        for chain in chains {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for rule in rules {
            let _ = writeln!(out, "{rule}");
        }
        out.push_str("COMMIT\n");
        out
    }
}

fn proto_name(proto: Proto) -> &'static str {
    match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

/// Feeds `rules` to `tool` (with `args`) inside `node`.
fn restore(node: &NetNs, tool: &str, args: &[&str], rules: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", node.name(), tool])
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {tool} (`cargo xtask setup` installs it)"))?;
    child.stdin.take().expect("piped").write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{tool}: {}\n{rules}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
