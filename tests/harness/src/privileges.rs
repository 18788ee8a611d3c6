//! The agent's privileges as deploy/daemonset.yaml grants them, for tests
//! that run it as a node would: what needs more fails there as it would on
//! a node.
use std::path::Path;

/// `setpriv` with its arguments, up to and including `--`, for a command
/// run as the DaemonSet's agent container runs: root, with only the
/// capabilities it adds (none inheritable or ambient), and no_new_privs when
/// it forbids privilege escalation.
pub fn as_daemon_set() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ds: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let containers = ds["spec"]["template"]["spec"]["containers"].as_sequence().expect("the pod's containers");
    let agent = containers.iter().find(|c| c["name"] == "na-agent").expect("the agent's container");
    let security = &agent["securityContext"];
    let caps = &security["capabilities"];
    assert_eq!(caps["drop"], serde_yaml::from_str::<serde_yaml::Value>("[ALL]").unwrap(), "drops every capability");
    let add: Vec<String> = caps["add"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|c| format!("+{}", c.as_str().expect("a capability name").to_lowercase()))
        .collect();
    let mut args: Vec<String> = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all"].map(Into::into).into();
    if security["allowPrivilegeEscalation"] == serde_yaml::Value::Bool(false) {
        args.push("--no-new-privs".into());
    }
    args.extend(["--bounding-set".into(), format!("-all,{}", add.join(",")), "--".into()]);
    args
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_agent_gets_the_daemon_sets_capabilities_and_no_more() {
        let args = super::as_daemon_set().join(" ");
        assert_eq!(
            args,
            "setpriv --inh-caps=-all --ambient-caps=-all --no-new-privs --bounding-set -all,+bpf,+net_admin,+perfmon --"
        );
    }
}
