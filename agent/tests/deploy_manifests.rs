//! `deploy/`: every manifest is what it says (strictly parsed), the
//! ClusterRole grants exactly what the watchers use, and every setting the
//! DaemonSet gives the agent is one the agent accepts.
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use clap::CommandFactory;
use na_agent::{config::Args, source::kube};
use support::deploy::{environment, load};

/// What the downward API gives as `status.hostIPs` in these checks.
const HOST_IPS: &str = "10.0.0.1,fd00::1";

#[test]
fn every_manifest_parses_strictly_and_refers_to_the_others() {
    let o = load();
    let ns = o.namespaces[0].metadata.name.clone().unwrap();
    let sa = &o.service_accounts[0].metadata;
    assert_eq!(sa.namespace.as_deref(), Some(ns.as_str()));
    let binding = &o.bindings[0];
    assert_eq!(binding.role_ref.name, o.cluster_roles[0].metadata.name.clone().unwrap());
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!((subject.name.as_str(), subject.namespace.as_deref()), (sa.name.as_deref().unwrap(), Some(ns.as_str())));
    let pod = o.daemon_sets[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, sa.name);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
}

#[test]
fn the_cluster_role_grants_exactly_what_the_agent_uses() {
    let o = load();
    let mut granted = BTreeSet::new();
    for rule in o.cluster_roles[0].rules.as_ref().unwrap() {
        for group in rule.api_groups.as_ref().unwrap() {
            for resource in rule.resources.as_ref().unwrap() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let used: BTreeSet<(String, String, String)> = kube::watched_resources()
        .into_iter()
        .flat_map(|c| kube::VERBS.map(|v| (c.group.clone(), c.plural.clone(), v.to_owned())))
        .chain(na_agent::rpc::server::FETCHES.map(|(g, r, v)| (g.to_owned(), r.to_owned(), v.to_owned())))
        .collect();
    assert_eq!(granted, used);
}

/// Runs `command` (a container's) with `env` and `--check-config`: exit 0
/// means every flag and variable was accepted with its value.
fn check_config(command: &[String], env: &BTreeMap<String, String>) -> String {
    assert_eq!(command[0], "/usr/local/bin/na-agent");
    let out = Command::new(env!("CARGO_BIN_EXE_na-agent"))
        .args(&command[1..])
        .arg("--check-config")
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{command:?} with {env:?}: {}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn every_setting_the_daemon_set_gives_is_one_the_agent_accepts() {
    let o = load();
    let config = &o.config_maps[0];
    let known_env: BTreeSet<String> =
        Args::command().get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect();
    for key in config.data.as_ref().unwrap().keys() {
        assert!(known_env.contains(key), "ConfigMap key {key} is no na-agent setting");
    }
    let pod = o.daemon_sets[0].spec.as_ref().unwrap().template.spec.clone().unwrap();
    let agent = pod.containers.iter().find(|c| c.name == "na-agent").unwrap();
    let env = environment(agent, config, HOST_IPS);
    for name in env.keys() {
        assert!(known_env.contains(name), "{name} is no na-agent setting");
    }
    let resolved = check_config(agent.command.as_ref().unwrap(), &env);
    for expected in ["node_name: \"node-1\"", "enable_policy_event_logs: true", "flow_log_accept: false", "fd00::1"] {
        assert!(resolved.contains(expected), "{expected} not in {resolved}");
    }
    // The probes and the scrape annotation point where the agent listens.
    let port =
        |name: &str| agent.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name)).unwrap().container_port;
    assert!(env["NA_HEALTH_ADDR"].ends_with(&format!(":{}", port("health"))));
    assert!(env["NA_METRICS_ADDR"].ends_with(&format!(":{}", port("metrics"))));
    // Nothing listens on every interface of the node; health only on
    // loopback, which is where the probes go.
    let flat: String = resolved.split_whitespace().collect();
    assert!(flat.contains("health_addr:At(127.0.0.1:8163,)"), "{resolved}");
    assert!(flat.contains("metrics_addr:Node(8162,)"), "{resolved}");
    assert!(!env["NA_METRICS_ADDR"].starts_with("0.0.0.0") && !env["NA_METRICS_ADDR"].starts_with("[::]"));
    for probe in [&agent.liveness_probe, &agent.readiness_probe] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap();
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"), "a probe must go where health listens");
    }
    // The status file is on the node, where na-cli reads it.
    let run = pod.volumes.iter().flatten().find(|v| v.name == "run").unwrap();
    assert_eq!(run.host_path.as_ref().map(|h| h.path.as_str()), Some("/run/na-agent"));
    assert!(env["NA_STATUS_FILE"].starts_with("/run/na-agent/"));
    // The CNI socket is on the node, where the VPC CNI and na-cni call it.
    let socket = pod.volumes.iter().flatten().find(|v| v.name == "cni-socket").unwrap();
    assert_eq!(socket.host_path.as_ref().map(|h| h.path.as_str()), Some("/var/run/aws-node"));
    assert!(env["NA_CNI_SOCKET"].starts_with("/var/run/aws-node/"));
    let mounted = agent.volume_mounts.iter().flatten().find(|m| m.name == "cni-socket").unwrap();
    assert_eq!(mounted.mount_path, "/var/run/aws-node");
    let annotations =
        o.daemon_sets[0].spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.clone().unwrap();
    assert_eq!(annotations["prometheus.io/port"], port("metrics").to_string());

    let inits = pod.init_containers.unwrap();
    let prepare = inits.iter().find(|c| c.name == "prepare-bpffs").unwrap();
    let resolved = check_config(prepare.command.as_ref().unwrap(), &environment(prepare, config, HOST_IPS));
    assert!(resolved.contains("prepare_bpffs: true"), "{resolved}");
    // The installer really installs, into a directory of our own.
    let install = inits.iter().find(|c| c.name == "install-binaries").unwrap().command.clone().unwrap();
    assert_eq!(install[..3], ["/usr/local/bin/na-cli", "install", "--dir"]);
    let dir = std::env::temp_dir().join(format!("na-deploy-install-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_na-cli")).args(&install[1..3]).arg(&dir).status().unwrap();
    let installed = Command::new(dir.join("na-cli")).arg("--version").output();
    let plugin = Command::new(dir.join("na-cni")).env("CNI_COMMAND", "VERSION").output();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(status.success());
    assert!(installed.unwrap().status.success());
    let plugin = plugin.unwrap();
    assert!(String::from_utf8_lossy(&plugin.stdout).contains("\"1.0.0\""), "na-cni answers VERSION: {plugin:?}");
}

#[test]
fn a_bad_setting_is_refused_by_name() {
    let env = BTreeMap::from([
        ("NODE_NAME".to_owned(), "n".to_owned()),
        ("NA_FLOW_LOG_MAX_PER_SEC".to_owned(), "lots".to_owned()),
    ]);
    let out =
        Command::new(env!("CARGO_BIN_EXE_na-agent")).arg("--check-config").env_clear().envs(&env).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--flow-log-max-per-sec"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
