//! Pods made the way a container runtime makes them: the pod's network
//! namespace first, then a CNI plugin chain called through the CNI protocol
//! (`CNI_*` variables, the network configuration on stdin, the previous
//! plugin's result passed on) from the node's namespace.
use std::{
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::NetNs;

/// Where Debian's containernetworking-plugins are.
pub const PLUGINS_DIR: &str = "/usr/lib/cni";

/// What a failed plugin printed: the spec's error object.
pub type CniError = Value;

/// A plugin chain (a conflist) and where its binaries are.
#[derive(Debug)]
pub struct Chain {
    name: String,
    plugins: Vec<Value>,
    cni_path: Vec<PathBuf>,
    /// host-local's state, removed on drop.
    ipam_dir: PathBuf,
    /// Every plugin call so far, for timing.
    calls: Mutex<Vec<Call>>,
}

/// One plugin call and how long it took.
#[derive(Clone, Debug)]
pub struct Call {
    pub plugin: String,
    pub command: String,
    pub took: Duration,
}

/// Pod addresses the `ptp` chain hands out.
pub const SUBNET_V4: &str = "10.77.0.0/24";
pub const SUBNET_V6: &str = "fd77::/64";

impl Chain {
    /// The `ptp` plugin with dual-stack `host-local` addresses: a veth pair
    /// per pod and a host route to each address, as routed CNIs (the VPC
    /// CNI among them) wire pods.
    pub fn ptp(tag: &str) -> Self {
        let ipam_dir = std::env::temp_dir().join(format!("{tag}-ipam"));
        let ptp = json!({"type": "ptp", "ipMasq": false, "ipam": {
            "type": "host-local", "dataDir": ipam_dir,
            "ranges": [[{"subnet": SUBNET_V4}], [{"subnet": SUBNET_V6}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}});
        Self {
            name: "na-test".into(),
            plugins: vec![ptp],
            cni_path: vec![PLUGINS_DIR.into()],
            ipam_dir,
            calls: Mutex::default(),
        }
    }

    /// The calls made since the last time this was asked.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The IPv4 address the `ptp` chain's next ADD will give (host-local
    /// hands them out in order after the last one it gave), while the range
    /// has not wrapped around.
    pub fn next_ipv4(&self) -> Result<Ipv4Addr> {
        let last = self.ipam_dir.join(&self.name).join("last_reserved_ip.0");
        let last: Ipv4Addr = match std::fs::read_to_string(&last) {
            Ok(text) => text.trim().parse().with_context(|| format!("{}: {text:?}", last.display()))?,
            // The range starts at .1, the gateway's.
            Err(_) => return Ok(Ipv4Addr::new(10, 77, 0, 2)),
        };
        let next = Ipv4Addr::from(u32::from(last) + 1);
        anyhow::ensure!(next.octets()[3] < 255, "the {SUBNET_V4} range is used up");
        Ok(next)
    }

    /// The `bridge` plugin with the same addresses: every pod's veth a port
    /// of one bridge in the node, which holds the gateway address. Its
    /// result lists the bridge before the pod's veth.
    pub fn bridge(tag: &str) -> Self {
        let mut chain = Self::ptp(tag);
        let ipam = chain.plugins[0]["ipam"].clone();
        chain.plugins[0] =
            json!({"type": "bridge", "bridge": "na-br0", "isGateway": true, "ipMasq": false, "ipam": ipam});
        chain
    }

    /// Chains `plugin` (its configuration, `type` naming a binary in `dir`) after the others.
    pub fn then(mut self, plugin: Value, dir: &Path) -> Self {
        self.plugins.push(plugin);
        if !self.cni_path.iter().any(|d| d == dir) {
            self.cni_path.push(dir.into());
        }
        self
    }

    /// ADD through the whole chain, each plugin given the previous result;
    /// the last result, or the first failure.
    pub fn add(&self, node: &NetNs, pod: &Sandbox<'_>) -> Result<std::result::Result<Value, CniError>> {
        let mut prev: Option<Value> = None;
        for plugin in &self.plugins {
            match self.call(node, plugin, "ADD", pod, prev.as_ref())? {
                Ok(result) => prev = Some(result),
                Err(e) => return Ok(Err(e)),
            }
        }
        prev.context("an empty chain").map(Ok)
    }

    /// DEL through the chain in reverse, as runtimes do, each plugin given
    /// the chain's ADD result; the first failure stops it.
    pub fn del(
        &self,
        node: &NetNs,
        pod: &Sandbox<'_>,
        added: Option<&Value>,
    ) -> Result<std::result::Result<(), CniError>> {
        self.through(self.plugins.iter().rev(), node, "DEL", pod, added)
    }

    /// CHECK through the chain, each plugin given the ADD result.
    pub fn check(&self, node: &NetNs, pod: &Sandbox<'_>, added: &Value) -> Result<std::result::Result<(), CniError>> {
        self.through(self.plugins.iter(), node, "CHECK", pod, Some(added))
    }

    /// `command` through `plugins` in that order, each given `prev`; the
    /// first failure stops it.
    fn through<'a>(
        &self,
        plugins: impl Iterator<Item = &'a Value>,
        node: &NetNs,
        command: &str,
        pod: &Sandbox<'_>,
        prev: Option<&Value>,
    ) -> Result<std::result::Result<(), CniError>> {
        for plugin in plugins {
            if let Err(e) = self.call(node, plugin, command, pod, prev)? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    /// One plugin, called as a runtime calls it; its result, or its error.
    pub fn call(
        &self,
        node: &NetNs,
        plugin: &Value,
        command: &str,
        pod: &Sandbox<'_>,
        prev: Option<&Value>,
    ) -> Result<std::result::Result<Value, CniError>> {
        let mut conf = plugin.clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!(self.name);
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let out = self.exec(
            node,
            plugin["type"].as_str().context("plugin without a type")?,
            command,
            pod,
            &conf.to_string(),
        )?;
        Ok(out)
    }

    /// Runs plugin binary `kind` with `stdin`; stdout parsed as the result
    /// on success (empty is null), as the spec's error object on failure.
    pub fn exec(
        &self,
        node: &NetNs,
        kind: &str,
        command: &str,
        pod: &Sandbox<'_>,
        stdin: &str,
    ) -> Result<std::result::Result<Value, CniError>> {
        let binary = self.cni_path.iter().map(|d| d.join(kind)).find(|p| p.exists()).with_context(|| {
            format!("no plugin {kind} in {:?} (cargo xtask setup installs containernetworking-plugins)", self.cni_path)
        })?;
        let path = std::env::join_paths(&self.cni_path)?;
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            pod.namespace, pod.name, pod.container_id
        );
        let started = Instant::now();
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.name()))
            .arg("--")
            .arg(&binary)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod.container_id)
            .env("CNI_NETNS", pod.netns.map(|n| format!("/run/netns/{}", n.name())).unwrap_or_default())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", path)
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", binary.display()))?;
        child.stdin.take().expect("piped").write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        let call = Call { plugin: kind.into(), command: command.into(), took: started.elapsed() };
        self.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(call);
        let text = String::from_utf8_lossy(&out.stdout);
        let parsed = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("{kind} {command} printed {text:?}"))?
        };
        if out.status.success() {
            return Ok(Ok(parsed));
        }
        if parsed.get("code").is_none() {
            bail!(
                "{kind} {command} failed without a CNI error: {text:?}, stderr {:?}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Err(parsed))
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.ipam_dir);
    }
}

/// A pod's sandbox as the runtime names it to plugins.
#[derive(Clone, Copy, Debug)]
pub struct Sandbox<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub container_id: &'a str,
    /// None once it is gone (a DEL may come after).
    pub netns: Option<&'a NetNs>,
}
