//! The parts of the CNI 1.0.0 protocol a chained plugin needs: how the
//! runtime calls it (environment and network configuration on stdin), the
//! previous plugin's result, and the error format.
use std::{collections::BTreeMap, net::IpAddr};

use serde::Deserialize;
use serde_json::Value;

/// What this plugin speaks. Results before 0.3.0 have no interface list,
/// so a host interface cannot be found in them.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
pub const VERSION: &str = "1.0.0";

/// The spec's well-known error codes, and ours from 100 on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    InvalidEnvironment = 4,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// The agent could not enforce the pod's policy.
    NotEnforced = 100,
}

/// A failure as the runtime reads it from stdout.
#[derive(Debug, PartialEq, Eq)]
pub struct Error {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl Error {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: details.into() }
    }

    /// The spec's error object, in the configuration's version when known.
    pub fn to_json(&self, version: Option<&str>) -> String {
        serde_json::json!({
            "cniVersion": version.unwrap_or(VERSION),
            "code": self.code as u32,
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

/// The runtime's `CNI_*` variables that this plugin uses.
#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` from `CNI_ARGS`, when the
    /// container is a Kubernetes pod.
    pub pod: Option<(String, String)>,
}

impl Invocation {
    /// Reads the invocation from `var` (the process environment, or a test's).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            other => {
                return Err(Error::new(
                    Code::InvalidEnvironment,
                    "CNI_COMMAND is not ADD, DEL, CHECK or VERSION",
                    format!("{other:?}"),
                ));
            }
        };
        let required = |name: &str| {
            var(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::new(Code::InvalidEnvironment, format!("{name} is not set"), ""))
        };
        let container_id = match command {
            Command::Version => String::new(),
            _ => {
                // The spec requires these of the runtime for every other command.
                required("CNI_IFNAME")?;
                required("CNI_PATH")?;
                required("CNI_CONTAINERID")?
            }
        };
        if matches!(command, Command::Add | Command::Check) {
            required("CNI_NETNS")?;
        }
        let args: BTreeMap<&str, &str> = Default::default();
        let raw = var("CNI_ARGS").unwrap_or_default();
        let args = raw.split(';').filter_map(|kv| kv.split_once('=')).fold(args, |mut m, (k, v)| {
            m.insert(k, v);
            m
        });
        let pod = match (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")) {
            (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Some((ns.to_string(), name.to_string())),
            _ => None,
        };
        Ok(Self { command, container_id, pod })
    }
}

/// The network configuration, as far as this plugin reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin: String,
    /// The previous plugin's result (chained plugins get one on ADD and CHECK).
    pub prev_result: Option<Value>,
    /// The agent's socket; the default is the agent's.
    pub socket: Option<std::path::PathBuf>,
    /// Let ADD succeed when no agent listens on the socket (the pod then
    /// runs unenforced until the agent finds it). Off: ADD fails and the
    /// runtime retries the pod, as the VPC CNI does. An agent that listens
    /// but does not answer in time fails the ADD either way.
    #[serde(default)]
    pub fail_open: bool,
    /// How long ADD waits for the agent, seconds.
    pub timeout_seconds: Option<f64>,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, Error> {
        // Not JSON is undecodable (6); JSON without what a configuration
        // needs, or with a field of the wrong type, is a bad one (7).
        let value: Value = serde_json::from_slice(stdin)
            .map_err(|e| Error::new(Code::Decode, "the network configuration is not JSON", e.to_string()))?;
        let conf: Self = serde_json::from_value(value)
            .map_err(|e| Error::new(Code::InvalidConfig, "the network configuration is not valid", e.to_string()))?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(Error::new(
                Code::IncompatibleVersion,
                format!("cniVersion {} is not supported", conf.cni_version),
                format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        Ok(conf)
    }
}

#[derive(Deserialize)]
struct PrevResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
}

#[derive(Deserialize)]
struct Interface {
    name: String,
    #[serde(default)]
    sandbox: String,
}

#[derive(Deserialize)]
struct IpConfig {
    address: String,
}

/// What the previous plugin set up: its host-side interface and the pod's addresses.
#[derive(Debug, PartialEq, Eq)]
pub struct Setup {
    pub host_interface: String,
    pub ips: Vec<IpAddr>,
}

impl Setup {
    pub fn from_prev_result(prev: &Value) -> Result<Self, Error> {
        let bad = |what: String| Error::new(Code::InvalidConfig, "prevResult is not a CNI result", what);
        let r: PrevResult = serde_json::from_value(prev.clone()).map_err(|e| bad(e.to_string()))?;
        let ips = r
            .ips
            .iter()
            .map(|ip| {
                ip.address
                    .split('/')
                    .next()
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| bad(format!("ips: {:?}", ip.address)))
            })
            .collect::<Result<_, _>>()?;
        // The pod's interface lives in its sandbox; the host side has none.
        // Plugins list the host side just before the pod's side (ptp: veth,
        // eth0; bridge: the bridge, then the veth, then eth0), so the host
        // interface nearest before the first sandbox one is the veth, never
        // a bridge the plugin lists first.
        let pod_side = r.interfaces.iter().position(|i| !i.sandbox.is_empty()).unwrap_or(r.interfaces.len());
        let host = r.interfaces[..pod_side].iter().rev().find(|i| i.sandbox.is_empty()).ok_or_else(|| {
            Error::new(
                Code::InvalidConfig,
                "prevResult names no host-side interface",
                "na-cni enforces on the host side of a pod's veth: chain it after a plugin that makes one (ptp, bridge, the VPC CNI)",
            )
        })?;
        Ok(Self { host_interface: host.name.clone(), ips })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    const ADD: [(&str, &str); 6] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/p"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=c0ffee"),
    ];

    #[test]
    fn invocations_as_runtimes_make_them() {
        let i = Invocation::from_env(env(&ADD)).unwrap();
        assert_eq!(i.command, Command::Add);
        assert_eq!(i.container_id, "c0ffee");
        assert_eq!(i.pod, Some(("x".into(), "a".into())));
        let no_netns: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != "CNI_NETNS").collect();
        assert_eq!(Invocation::from_env(env(&no_netns)).unwrap_err().code, Code::InvalidEnvironment);
        let del: Vec<_> = no_netns.iter().map(|&(k, v)| if k == "CNI_COMMAND" { (k, "DEL") } else { (k, v) }).collect();
        assert_eq!(Invocation::from_env(env(&del)).unwrap().command, Command::Del, "DEL needs no netns");
        let not_a_pod: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != "CNI_ARGS").collect();
        assert_eq!(Invocation::from_env(env(&not_a_pod)).unwrap().pod, None);
        assert_eq!(Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")])).unwrap().command, Command::Version);
        assert_eq!(Invocation::from_env(env(&[("CNI_COMMAND", "GC")])).unwrap_err().code, Code::InvalidEnvironment);
    }

    #[test]
    fn configurations_and_versions() {
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"k8s","type":"na-cni","failOpen":true}"#).unwrap();
        assert!(conf.fail_open && conf.prev_result.is_none());
        let old = NetConf::parse(br#"{"cniVersion":"0.2.0","name":"k8s","type":"na-cni"}"#).unwrap_err();
        assert_eq!(old.code, Code::IncompatibleVersion);
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, Code::Decode);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err().code,
            Code::InvalidConfig,
            "name and type"
        );
    }

    #[test]
    fn the_host_side_of_a_ptp_result() {
        let prev = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "veth1a2b", "mac": "aa:bb:cc:dd:ee:ff"},
                           {"name": "eth0", "mac": "aa:bb:cc:dd:ee:00", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
                    {"address": "fd01::5/64", "interface": 1}]});
        let setup = Setup::from_prev_result(&prev).unwrap();
        assert_eq!(setup.host_interface, "veth1a2b");
        assert_eq!(setup.ips, ["10.1.0.5".parse::<IpAddr>().unwrap(), "fd01::5".parse().unwrap()]);
        // The bridge plugin lists its bridge first: the veth is the host side.
        let bridge = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"}, {"name": "veth77", "mac": "aa:bb:cc:dd:ee:02"},
                           {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.1.0.6/24", "gateway": "10.1.0.1", "interface": 2}]});
        assert_eq!(Setup::from_prev_result(&bridge).unwrap().host_interface, "veth77");
        let macvlan = json!({"interfaces": [{"name": "eth0", "sandbox": "/run/netns/p"}], "ips": []});
        assert_eq!(Setup::from_prev_result(&macvlan).unwrap_err().code, Code::InvalidConfig);
        let bad_ip = json!({"interfaces": [{"name": "v"}], "ips": [{"address": "10.1.0/24"}]});
        assert_eq!(Setup::from_prev_result(&bad_ip).unwrap_err().code, Code::InvalidConfig);
        assert_eq!(Setup::from_prev_result(&json!([1])).unwrap_err().code, Code::InvalidConfig);
    }

    #[test]
    fn errors_in_the_specs_shape() {
        let e = Error::new(Code::TryAgainLater, "the agent is not running", "connect: no such file");
        let v: Value = serde_json::from_str(&e.to_json(Some("0.4.0"))).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion": "0.4.0", "code": 11, "msg": "the agent is not running", "details": "connect: no such file"})
        );
    }
}
