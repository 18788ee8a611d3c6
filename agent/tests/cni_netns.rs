//! Pods started through the CNI protocol, as a container runtime starts
//! them: the real `ptp` plugin makes the veth, `na-cni` chained after it (or
//! the VPC CNI's gRPC call) holds the ADD until the agent enforces the pod.
//! Needs root and Debian's containernetworking-plugins (`cargo xtask setup`).
mod support;

use std::path::Path;

use na_agent::{
    bpffs::PinLayout,
    datapath::{AttachMode, inventory::pinned_pods},
    rpc::npbackend::{DeleteNpRequest, EnforceNpRequest, np_backend_client::NpBackendClient},
    source::manifests,
    veth::{DEFAULT_PREFIX, host_veth_name},
};
use na_harness::{
    Probe, Proto, Servers,
    cni::{Chain, Sandbox},
};
use serde_json::{Value, json};
use support::{
    Env,
    agent::{Agent, Manifests, NODE, binary, cni_socket, http_get, policy, status, wait_until},
};

/// `ptp`, then `na-cni` asking the agent on `socket`.
fn chain(tag: &Path, socket: &Path, extra: Value) -> Chain {
    chain_after(Chain::ptp, tag, socket, extra)
}

/// `first` (a chain's constructor), then `na-cni` asking the agent on `socket`.
fn chain_after(first: fn(&str) -> Chain, tag: &Path, socket: &Path, extra: Value) -> Chain {
    let na_cni = binary("na-cni", option_env!("CARGO_BIN_EXE_na-cni"));
    let mut conf = json!({"type": "na-cni", "socket": socket});
    conf.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    // The whole path: host-local's state directory is named after it, and
    // tests running at once must not share (and remove) one.
    let tag = tag.to_string_lossy().trim_start_matches('/').replace('/', "-");
    first(&tag).then(conf, na_cni.parent().unwrap())
}

/// na-cni's network configuration, asking the agent on `socket`, as a runtime gives it after `prev`.
fn conf(prev: &Value, socket: &Path) -> String {
    json!({"cniVersion": "1.0.0", "name": "na-test", "type": "na-cni", "socket": socket, "prevResult": prev})
        .to_string()
}

/// A pod as the API server shows it while its sandbox is being made: scheduled, no address yet.
fn starting_pod(name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "x", "labels": {"app": app}, "uid": format!("uid-{name}")},
           "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
           "status": {"phase": "Pending"}})
}

fn namespace() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
}

/// The agent in `mode` on a node without pods, `x/a` and `x/b` in its manifests.
fn started(mode: &str) -> (Env, Manifests, std::path::PathBuf, Agent) {
    let env = Env::with_pods(AttachMode::default(), &[]).unwrap();
    let manifests = Manifests::new();
    let status_file = manifests.1.join("status.json");
    manifests.write(
        "cluster.yaml",
        &[
            namespace(),
            starting_pod("a", "a"),
            starting_pod("b", "b"),
            policy("b-closed", json!({"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"]})),
            policy(
                "a-from-b",
                json!({"podSelector": {"matchLabels": {"app": "a"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}),
            ),
            policy("egress-open", json!({"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]})),
        ],
    );
    let agent = Agent::start_with(&env, &manifests, &status_file, &["--enforcing-mode", mode]);
    wait_until("the agent answers CNI calls", || cni_socket(&status_file).exists());
    (env, manifests, status_file, agent)
}

fn first_packets_meet_the_policy(mode: &str, first: fn(&str) -> Chain) {
    let (mut env, _manifests, status_file, _agent) = started(mode);
    let chain = chain_after(first, &status_file, &cni_socket(&status_file), json!({}));
    let mut servers = Servers::default();
    let tcp80 = Probe::tcp(80);
    let a = env.node.add_pod_cni(&chain, "x", "a").unwrap().expect("ADD of a");
    servers.start(a, Proto::Tcp, 80).unwrap();
    let b = env.node.add_pod_cni(&chain, "x", "b").unwrap().expect("ADD of b");
    servers.start(b, Proto::Tcp, 80).unwrap();
    // At once, before anything else could happen: b's first packets are judged
    // by its policies. b is closed to a ...
    assert!(!env.reaches("x/a", "x/b", tcp80), "{mode}: b's ingress policy holds from its start");
    // ... and a admits b by its address, which only b's CNI result told the agent.
    assert!(env.reaches("x/b", "x/a", tcp80), "{mode}: b is a peer from its start");
    let pods = status(&status_file)["pods"].clone();
    let b_entry = pods.as_array().unwrap().iter().find(|p| p["name"] == "b").cloned().unwrap_or_default();
    assert_eq!(b_entry["veth"], env.pod("x/b").host_veth.as_str(), "{pods}");
    assert_eq!(b_entry["ips"], json!([env.pod("x/b").ip.to_string(), env.pod("x/b").ip6.to_string()]));
    let metrics = http_get(&env, 8162, "/metrics").expect("metrics served");
    assert!(metrics.contains("na_cni_adds_total{result=\"enforced\"} 2"), "{metrics}");
    assert!(metrics.contains("na_cni_add_seconds_count 2"), "{metrics}");
    drop(servers);
}

#[test]
fn a_pod_started_through_cni_meets_its_policy_from_its_first_packet() {
    first_packets_meet_the_policy("standard", Chain::ptp);
}

#[test]
fn in_strict_mode_too() {
    first_packets_meet_the_policy("strict", Chain::ptp);
}

/// The bridge plugin lists the bridge before the pod's veth: enforcing on
/// the bridge would see no pod's own traffic.
#[test]
fn behind_the_bridge_plugin_too() {
    first_packets_meet_the_policy("standard", Chain::bridge);
}

#[test]
fn add_fails_while_the_agent_is_down_unless_fail_open_is_set() {
    let mut env = Env::with_pods(AttachMode::default(), &[]).unwrap();
    let dir = Manifests::new();
    let nobody = dir.1.join("nobody.sock");
    let strict = chain(&dir.1.join("strict"), &nobody, json!({"timeoutSeconds": 2}));
    let e = env.node.add_pod_cni(&strict, "x", "a").unwrap().expect_err("no agent, no pod");
    assert_eq!(e["code"], 11, "try again later: {e}");
    assert!(e["msg"].as_str().unwrap().contains("cannot be reached"), "{e}");
    assert!(env.node.pod("x/a").is_none());
    let open = chain(&dir.1.join("open"), &nobody, json!({"failOpen": true}));
    env.node.add_pod_cni(&open, "x", "a").unwrap().expect("failOpen lets the pod start");
}

#[test]
fn del_removes_the_pods_state_twice_without_error_and_bad_input_changes_nothing() {
    let (mut env, _manifests, status_file, _agent) = started("standard");
    let chain = chain(&status_file, &cni_socket(&status_file), json!({}));
    env.node.add_pod_cni(&chain, "x", "a").unwrap().expect("ADD");
    let layout = PinLayout::new(env.root());
    let attached = || status(&status_file)["attached"].clone();
    wait_until("the status shows a", || attached() == json!(["x_a"]));
    let (sandbox, result) = env.pod("x/a").sandbox().unwrap();
    let (container_id, result) = (sandbox.container_id.to_owned(), result.clone());

    // Bad input gets the spec's errors and changes nothing.
    let call = |conf: &str| chain.exec(env.node.netns(), "na-cni", "ADD", &sandbox, conf).unwrap().unwrap_err();
    assert_eq!(call("{not json")["code"], 6);
    assert_eq!(call(r#"{"cniVersion":"1.0.0","name":"n","type":"na-cni","timeoutSeconds":"x"}"#)["code"], 7);
    assert_eq!(call(r#"{"cniVersion":"0.2.0","name":"n","type":"na-cni"}"#)["code"], 1);
    let no_prev = call(r#"{"cniVersion":"1.0.0","name":"n","type":"na-cni"}"#);
    assert_eq!(no_prev["code"], 7, "{no_prev}");
    let no_host_side = json!({"cniVersion": "1.0.0", "name": "n", "type": "na-cni",
        "prevResult": {"interfaces": [{"name": "eth0", "sandbox": "/run/netns/p"}], "ips": []}});
    assert_eq!(call(&no_host_side.to_string())["code"], 7);
    assert_eq!(attached(), json!(["x_a"]));
    chain.check(env.node.netns(), &sandbox, &result).unwrap().expect("CHECK: a is enforced");

    // A DEL of an older sandbox of a (a runtime tearing it down late) leaves a as it is.
    let older = Sandbox { container_id: "an-older-sandbox", netns: None, ..sandbox };
    chain
        .exec(env.node.netns(), "na-cni", "DEL", &older, &conf(&result, &cni_socket(&status_file)))
        .unwrap()
        .expect("DEL of an older sandbox");
    assert_eq!(attached(), json!(["x_a"]));
    chain.check(env.node.netns(), &sandbox, &result).unwrap().expect("CHECK: a is still enforced");

    env.node.del_pod_cni(&chain, "x/a").unwrap().expect("DEL");
    wait_until("a is detached", || attached() == json!([]));
    assert!(pinned_pods(&layout).unwrap().is_empty(), "a's maps are unpinned");
    let gone = Sandbox { namespace: "x", name: "a", container_id: &container_id, netns: None };
    chain.del(env.node.netns(), &gone, Some(&result)).unwrap().expect("a second DEL is not an error");
}

#[test]
fn the_vpc_cni_call_holds_a_pod_until_enforced_and_unknown_pods_get_the_modes_default() {
    let mut env = Env::with_pods(AttachMode::default(), &[]).unwrap();
    let manifests = Manifests::new();
    let status_file = manifests.1.join("status.json");
    manifests.write("ns.yaml", &[namespace()]);
    let _agent = Agent::start_with(&env, &manifests, &status_file, &["--enforcing-mode", "strict"]);
    wait_until("the agent answers CNI calls", || cni_socket(&status_file).exists());
    // Wired as the VPC CNI wires pods, the host veth named by its rule; the
    // client is no pod of the agent's.
    let (ip, ip6) = ("198.18.0.2".parse().unwrap(), "fd18::2".parse().unwrap());
    env.node.add_pod("x", "new", ip, ip6, &host_veth_name(DEFAULT_PREFIX, "x", "new")).unwrap();
    env.node.add_pod("x", "client", "198.18.0.3".parse().unwrap(), "fd18::3".parse().unwrap(), "client0").unwrap();
    let mut servers = Servers::default();
    servers.start(env.pod("x/new"), Proto::Tcp, 80).unwrap();
    let tcp80 = Probe::tcp(80);
    assert!(env.reaches("x/client", "x/new", tcp80), "nothing attached yet");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let socket = cni_socket(&status_file);
    let mut client = runtime.block_on(na_agent::rpc::connect(socket)).map(NpBackendClient::new).unwrap();
    let enforce = EnforceNpRequest {
        k8s_pod_name: "new".into(),
        k8s_pod_namespace: "x".into(),
        network_policy_mode: "strict".into(),
        interface_count: 1,
    };
    let reply = runtime.block_on(client.enforce_np_to_pod(enforce)).unwrap().into_inner();
    assert!(reply.success);
    assert!(!env.reaches("x/client", "x/new", tcp80), "unknown in strict mode: closed");
    let metrics = http_get(&env, 8162, "/metrics").expect("metrics served");
    assert!(metrics.contains("na_cni_adds_total{result=\"assumed\"} 1"), "{metrics}");

    // Its addresses, from the host routes to its veth: its own packets are not spoofed.
    let assumed = status(&status_file);
    assert_eq!(assumed["pods"][0]["ips"], json!(["198.18.0.2", "fd18::2"]), "{assumed}");
    assert_eq!(assumed["pods"][0]["assumed"], true, "the status file says so (na-cli pod shows it)");

    // Its object arrives: its policy takes over the same attachment.
    let ifindex = |s: &Value| s["pods"][0]["ifindex"].clone();
    let before = ifindex(&assumed);
    let mut new = starting_pod("new", "new");
    new["status"] =
        json!({"phase": "Running", "podIP": "198.18.0.2", "podIPs": [{"ip": "198.18.0.2"}, {"ip": "fd18::2"}]});
    let open = policy("new-open", json!({"podSelector": {"matchLabels": {"app": "new"}}, "ingress": [{}]}));
    manifests.write("new.yaml", &[new, open]);
    wait_until("new's policy admits the client", || env.reaches("x/client", "x/new", tcp80));
    let now = status(&status_file);
    assert_eq!(ifindex(&now), before);
    let log = std::fs::read_to_string(status_file.with_extension("log")).unwrap();
    assert!(!log.contains("detached"), "adopted, never detached and attached again (a gap): {log}");
    assert_eq!(now["pods"][0]["uid"], "uid-new");
    assert_eq!(now["pods"][0].get("assumed"), None, "known now");

    let del = DeleteNpRequest { k8s_pod_name: "new".into(), k8s_pod_namespace: "x".into() };
    assert!(runtime.block_on(client.delete_pod_np(del.clone())).unwrap().into_inner().success);
    wait_until("new is detached", || status(&status_file)["attached"] == json!([]));
    assert!(runtime.block_on(client.delete_pod_np(del)).unwrap().into_inner().success, "twice");
    // A VPC CNI configured for another mode is told about, once; the agent's mode holds.
    let log = || std::fs::read_to_string(status_file.with_extension("log")).unwrap();
    assert!(!log().contains("is not the agent's"), "{}", log());
    let standard = EnforceNpRequest {
        k8s_pod_name: "new".into(),
        k8s_pod_namespace: "x".into(),
        network_policy_mode: "standard".into(),
        interface_count: 1,
    };
    assert!(runtime.block_on(client.enforce_np_to_pod(standard)).unwrap().into_inner().success);
    wait_until("the mismatch is logged", || log().contains("NETWORK_POLICY_ENFORCING_MODE is not the agent's"));
    drop(servers);
}

#[test]
fn pods_started_together_are_each_enforced_when_their_add_returns() {
    let mut env = Env::with_pods(AttachMode::default(), &[("x", "client")]).unwrap();
    let manifests = Manifests::new();
    let status_file = manifests.1.join("status.json");
    let names: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    let mut objects = vec![
        namespace(),
        policy("closed", json!({"podSelector": {"matchLabels": {"app": "new"}}, "policyTypes": ["Ingress"]})),
    ];
    objects.extend(names.iter().map(|n| starting_pod(n, "new")));
    objects.push(starting_pod("open", "open"));
    manifests.write("cluster.yaml", &objects);
    let _agent = Agent::start(&env, &manifests, &status_file);
    wait_until("the agent answers CNI calls", || cni_socket(&status_file).exists());
    let chain = chain(&status_file, &cni_socket(&status_file), json!({}));
    let mut pods: Vec<(&str, &str)> = names.iter().map(|n| ("x", n.as_str())).collect();
    pods.push(("x", "open"));
    for (outcome, (_, name)) in env.node.add_pods_cni(&chain, &pods).unwrap().into_iter().zip(&pods) {
        outcome.unwrap_or_else(|e| panic!("ADD of {name}: {e}"));
    }
    let mut servers = Servers::default();
    for (_, name) in &pods {
        servers.start(env.pod(&format!("x/{name}")), Proto::Tcp, 80).unwrap();
    }
    assert!(env.reaches("x/client", "x/open", Probe::tcp(80)), "the client reaches pods no policy closes");
    for name in &names {
        assert!(!env.reaches("x/client", &format!("x/{name}"), Probe::tcp(80)), "{name} is closed from its start");
    }
    let metrics = http_get(&env, 8162, "/metrics").expect("metrics served");
    assert!(metrics.contains("na_cni_adds_total{result=\"enforced\"} 9"), "{metrics}");
    drop(servers);
}

#[test]
fn a_deletion_seen_late_does_not_take_the_sandbox_of_the_pod_that_replaced_it() {
    let (mut env, manifests, status_file, _agent) = started("standard");
    let chain = chain(&status_file, &cni_socket(&status_file), json!({}));
    env.node.add_pod_cni(&chain, "x", "b").unwrap().expect("ADD of b");
    let mut servers = Servers::default();
    servers.start(env.pod("x/b"), Proto::Tcp, 80).unwrap();
    let entry = || status(&status_file)["pods"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "b").cloned());
    let ifindex = entry().expect("b is attached")["ifindex"].clone();
    // The runtime made b's sandbox for a new b; the watch (here, the
    // manifests) still shows the old one going away, then the new one.
    let others = |b: Option<Value>| {
        let mut objects = vec![namespace(), starting_pod("a", "a")];
        objects.extend(b);
        objects.push(policy(
            "b-closed",
            json!({"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"]}),
        ));
        objects
    };
    manifests.write("cluster.yaml", &others(None));
    wait_until("the deletion is read", || {
        status(&status_file)["revision"] == manifests::load_dir(&manifests.0).revision.as_str()
    });
    assert_eq!(entry().map(|e| e["ifindex"].clone()), Some(ifindex.clone()), "b's sandbox is still enforced");
    let mut new_b = starting_pod("b", "b");
    new_b["metadata"]["uid"] = json!("uid-b-2");
    manifests.write("cluster.yaml", &others(Some(new_b)));
    wait_until("the new b takes its sandbox over", || entry().is_some_and(|e| e["uid"] == "uid-b-2"));
    assert_eq!(entry().unwrap()["ifindex"], ifindex);
    let log = std::fs::read_to_string(status_file.with_extension("log")).unwrap();
    assert!(!log.contains("detached"), "never detached: {log}");
    drop(servers);
}
