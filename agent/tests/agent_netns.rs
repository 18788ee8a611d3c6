//! `na-agent` end to end: pods in network namespaces, the cluster as a
//! directory of manifests (behind an API server: `kube_netns.rs`), every
//! change checked with probes.
//! Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces).
mod support;

use aya::programs::links::{FdLink, PinnedLink};
use na_agent::{
    bpffs::PinLayout,
    datapath::{AttachMode, NodeAddrTable, NodeTables, PinnedMaps, inventory},
    pod_id::PodId,
};
use na_common::names::{PROG_EGRESS, PROG_INGRESS};
use na_harness::Probe;
use serde_json::{Value, json};
use support::{
    Env,
    agent::{Agent, Manifests, echoes, http_get, pod, policy, status, wait_until},
};

#[test]
fn local_mode_follows_the_manifests_and_survives_restarts() {
    let (env, manifests, status_file) = three_pods();
    let tcp80 = Probe::tcp(80);
    manifests.write("ns.yaml", &[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})]);

    let agent = Agent::start(&env, &manifests, &status_file);
    wait_until("all three pods are attached", || {
        status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 3)
    });
    assert!(env.reaches("x/b", "x/a", tcp80) && env.reaches("x/c", "x/a", tcp80));
    assert!(env.reaches("x/b", "x/a", Probe::tcp(81)), "a serves 81 too: its later denial is the policy's");

    manifests.write("deny.yaml", &[policy("deny-a", json!({"podSelector": {"matchLabels": {"app": "a"}}}))]);
    wait_until("a's ingress is closed", || !env.reaches("x/b", "x/a", tcp80));
    assert!(env.reaches("x/a", "x/b", tcp80), "egress untouched");

    manifests.write(
        "allow.yaml",
        &[policy(
            "a-from-b",
            json!({"podSelector": {"matchLabels": {"app": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": "http"}]}]}),
        )],
    );
    wait_until("b may reach a", || env.reaches("x/b", "x/a", tcp80));
    assert!(!env.reaches("x/c", "x/a", tcp80));
    assert!(!env.reaches("x/b", "x/a", Probe::tcp(81)), "only the named port");

    // Metrics and readiness, from inside the node where the agent listens.
    let get = |port: u16, path: &'static str| http_get(&env, port, path).expect("the agent answers");
    assert!(get(8163, "/readyz").starts_with("HTTP/1.1 200"));
    let metrics = get(8162, "/metrics");
    assert!(metrics.contains("na_pods_enforced 3"), "{metrics}");
    let denied_into_a = metrics
        .lines()
        .find(|l| l.starts_with(r#"na_policy_packets_total{namespace="x",pod="a",direction="ingress",verdict="deny"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert!(denied_into_a.is_some_and(|n| n > 0), "{metrics}");
    assert!(metrics.contains("na_policy_programming_seconds_count 2"), "two policy changes: {metrics}");

    // A long-lived connection across an agent crash and restart.
    let mut conn = env.connect("x/b", "x/a", 80);
    assert!(echoes(&mut conn));
    agent.kill();
    assert!(echoes(&mut conn), "the flow lives on with the agent dead");
    assert!(!env.reaches("x/c", "x/a", tcp80), "deny rules keep denying with the agent dead");

    // While it is down, c becomes a "b"; the restarted agent adopts the pinned
    // state and applies the change without a gap.
    manifests.write("pods.yaml", &[pod(&env, "x/a", "a"), pod(&env, "x/b", "b"), pod(&env, "x/c", "b")]);
    std::fs::remove_file(&status_file).unwrap();
    let agent = Agent::start(&env, &manifests, &status_file);
    wait_until("c may reach a", || env.reaches("x/c", "x/a", tcp80));
    assert!(echoes(&mut conn), "the flow survived the restart");
    assert!(!env.reaches("x/b", "x/a", Probe::tcp(81)));

    // A bad document is reported; enforcement of everything else goes on.
    manifests.write_raw("broken.yaml", "kind: Pod\nmetadata: [unclosed\n");
    wait_until("the bad file is reported", || {
        status(&status_file)["errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|l| l.as_str().unwrap_or("").contains("broken.yaml")))
    });
    assert!(env.reaches("x/b", "x/a", tcp80) && !env.reaches("x/b", "x/a", Probe::tcp(81)));

    // The flow log names the pod and, for allowed flows, the policy rule.
    let flows_file = status_file.with_extension("flows");
    let flows = || -> Vec<Value> {
        std::fs::read_to_string(&flows_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let b_ip = env.pod("x/b").ip.to_string();
    let from_b = |f: &Value, port: u64, verdict: &str| {
        f["pod"] == "a"
            && f["namespace"] == "x"
            && f["direction"] == "ingress"
            && f["src_ip"] == b_ip.as_str()
            && f["dst_port"] == port
            && f["verdict"] == verdict
    };
    wait_until("b's flows to a are in the flow log", || {
        let f = flows();
        f.iter().any(|f| from_b(f, 80, "ACCEPT") && f["policy"] == "x/a-from-b" && f["rule"] == 0)
            && f.iter().any(|f| from_b(f, 81, "DENY") && f["policy"].is_null())
    });

    // A pod recreated under the same name (new uid) starts from fresh maps:
    // nothing of the old pod's flows or state carries over (AWS issue 616).
    let map_id =
        || aya::maps::MapInfo::from_pin(env.root().join("maps/x_b_conntrack_map")).map(|m| m.id()).unwrap_or(0);
    let before = map_id();
    let mut b2 = pod(&env, "x/b", "b");
    b2["metadata"]["uid"] = json!("uid-x/b-recreated");
    manifests.write("pods.yaml", &[pod(&env, "x/a", "a"), b2.clone(), pod(&env, "x/c", "b")]);
    wait_until("b has new maps", || map_id() != before && map_id() != 0);
    assert!(env.reaches("x/b", "x/a", tcp80));

    // A deleted pod loses its programs and pins.
    manifests.write("pods.yaml", &[pod(&env, "x/a", "a"), b2]);
    wait_until("c is detached", || status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 2));
    let pins: Vec<String> = ["maps", "links"]
        .iter()
        .flat_map(|d| std::fs::read_dir(env.root().join(d)).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(pins.iter().any(|p| p.starts_with("x_a_")), "{pins:?}");
    assert!(pins.iter().all(|p| !p.starts_with("x_c_")), "{pins:?}");
    assert!(echoes(&mut conn));
    drop(agent);
}

/// Pods a, b and c in the manifests; the status file's path.
fn three_pods() -> (Env, Manifests, std::path::PathBuf) {
    let env = Env::new(AttachMode::default()).unwrap();
    let manifests = Manifests::new();
    let status_file = manifests.1.join("status.json");
    manifests.write("pods.yaml", &[pod(&env, "x/a", "a"), pod(&env, "x/b", "b"), pod(&env, "x/c", "c")]);
    (env, manifests, status_file)
}

/// [`three_pods`], and a policy closing a's ingress.
fn a_closed() -> (Env, Manifests, std::path::PathBuf) {
    let (env, manifests, status_file) = three_pods();
    manifests.write("deny.yaml", &[policy("deny-a", json!({"podSelector": {"matchLabels": {"app": "a"}}}))]);
    (env, manifests, status_file)
}

#[test]
fn veths_the_cni_did_not_name_are_found_by_their_route() {
    let (env, manifests, status_file) = a_closed();
    assert!(env.reaches("x/b", "x/a", Probe::tcp(80)), "baseline: nothing attached yet");
    let _agent =
        Agent::start_with(&env, &manifests, &status_file, &["--veth-prefix", "nomatch", "--ebpf-log-level", "debug"]);
    wait_until("all three pods are attached", || {
        status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 3)
    });
    assert!(!env.reaches("x/b", "x/a", Probe::tcp(80)));
    assert!(env.reaches("x/a", "x/b", Probe::tcp(80)));
    // The programs' own log reaches the agent's.
    wait_until("the kernel's denial is in the agent log", || {
        std::fs::read_to_string(status_file.with_extension("log")).is_ok_and(|l| l.contains("denied"))
    });
}

#[test]
fn a_kernel_log_ring_of_another_size_is_left_unread() {
    let (env, manifests, status_file) = a_closed();
    // As an agent of another version would have left it: twice the size
    // this object declares.
    let layout = PinLayout::new(env.root());
    std::fs::create_dir_all(layout.maps_dir()).unwrap();
    let pin = layout.global_map(na_common::names::MAP_LOGS);
    let created = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args(["type", "ringbuf", "key", "0", "value", "0", "entries", &(1u32 << 18).to_string(), "name", "AYA_LOGS"])
        .status()
        .unwrap();
    assert!(created.success());
    let mut agent = Agent::start_with(&env, &manifests, &status_file, &["--ebpf-log-level", "debug"]);
    wait_until("all three pods are attached", || {
        status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 3)
    });
    let log = || std::fs::read_to_string(status_file.with_extension("log")).unwrap_or_default();
    wait_until("the agent says why the kernel log is off", || log().contains("kernel log's pinned ring is not"));
    for _ in 0..5 {
        assert!(!env.reaches("x/b", "x/a", Probe::tcp(80)), "a stays enforced");
    }
    assert!(agent.running(), "the agent runs on: {}", log());
}

#[test]
fn bad_input_keeps_the_last_good_state_and_fails_closed() {
    let (env, manifests, status_file) = three_pods();
    let tcp80 = Probe::tcp(80);
    let a_from_b = json!({"podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]});
    manifests.write("allow.yaml", &[policy("a-from-b", a_from_b.clone())]);
    assert!(env.reaches("x/c", "x/a", tcp80) && env.reaches("x/b", "x/c", tcp80), "baseline: nothing attached yet");
    let _agent = Agent::start(&env, &manifests, &status_file);
    wait_until("c is kept from a", || !env.reaches("x/c", "x/a", tcp80));
    assert!(env.reaches("x/b", "x/a", tcp80));
    let reported = |file: &str| {
        status(&status_file)["errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|l| l.as_str().unwrap_or("").contains(file)))
    };
    let unchanged = || env.reaches("x/b", "x/a", tcp80) && !env.reaches("x/c", "x/a", tcp80);

    // The policy, misspelt: refused and reported, its last good version enforced.
    let mut misspelt = policy("a-from-b", a_from_b);
    misspelt["spec"]["ingres"] = misspelt["spec"]["ingress"].take();
    manifests.write("allow.yaml", &[misspelt]);
    wait_until("the misspelt policy is reported", || reported("allow.yaml"));
    assert!(unchanged(), "the last good version of the policy holds");
    // Broken YAML: the same.
    manifests.write_raw("allow.yaml", "kind: [unclosed\n");
    wait_until("the broken file is reported", || {
        status(&status_file)["errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|l| l.as_str().unwrap_or("").contains("invalid YAML")))
    });
    assert!(unchanged(), "the last good version of the policy holds");

    // A policy that was never valid (a bad CIDR) still isolates what it
    // selects: left out, it would leave c open.
    let bad_cidr = json!({"podSelector": {"matchLabels": {"app": "c"}}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]});
    manifests.write("c.yaml", &[policy("c-bad", bad_cidr)]);
    wait_until("c is closed by the invalid policy", || !env.reaches("x/b", "x/c", tcp80));
    assert!(reported("c-bad"));
    // Rules too many for the maps: reported, and the pod fails closed.
    assert!(env.reaches("x/a", "x/b", tcp80));
    let ports: Vec<Value> = (0..65).map(|i| json!({"port": 1000 + 2 * i})).collect();
    let many = json!({"podSelector": {"matchLabels": {"app": "b"}}, "ingress": [{"ports": ports}]});
    manifests.write("b.yaml", &[policy("b-many", many)]);
    wait_until("b is closed", || !env.reaches("x/a", "x/b", tcp80));
    wait_until("the pod's error is reported", || reported("pod x/b"));

    // Files that are not manifests are not read, and writing them does not
    // make the agent read the directory again.
    let generation = || status(&status_file)["generation"].as_u64().unwrap();
    let before = generation();
    for i in 0..20 {
        std::fs::write(manifests.0.join("agent.log"), format!("line {i}\n")).unwrap();
        std::fs::write(manifests.0.join(".allow.yaml.swp"), format!("{i}")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(generation(), before, "no reload for files that are not manifests");

    // Removing the document is what deletes the policy.
    std::fs::remove_file(manifests.0.join("allow.yaml")).unwrap();
    wait_until("a is open once its policy's file is gone", || env.reaches("x/c", "x/a", tcp80));

    // A file is read once written and closed, never half-written: while a
    // writer has written only the first of its two documents, the second's
    // policy stays.
    let nothing = policy("selects-nothing", json!({"podSelector": {"matchLabels": {"app": "none"}}}));
    let deny_a = policy("deny-a", json!({"podSelector": {"matchLabels": {"app": "a"}}}));
    manifests.write("pair.yaml", &[nothing.clone(), deny_a.clone()]);
    wait_until("a is closed", || !env.reaches("x/c", "x/a", tcp80));
    let mut writer = std::fs::File::create(manifests.0.join("pair.yaml")).unwrap();
    use std::io::Write;
    writer.write_all(serde_json::to_string(&nothing).unwrap().as_bytes()).unwrap();
    writer.flush().unwrap();
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(!env.reaches("x/c", "x/a", tcp80), "a half-written file opened a");
    }
    writer.write_all(format!("\n---\n{}", serde_json::to_string(&deny_a).unwrap()).as_bytes()).unwrap();
    drop(writer);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!env.reaches("x/c", "x/a", tcp80));
}

#[test]
fn a_filter_removed_from_under_the_agent_is_put_back() {
    // The kernel reports the removal: put back at once.
    attachment_removed_is_put_back(&["--attach-mode", "netlink"], |env, _| env.node.delete_clsact("x/a").unwrap());
}

#[test]
fn a_link_detached_from_under_the_agent_is_put_back() {
    // Nothing reports a detached link: found by the periodic check.
    let flags = ["--attach-mode", "tcx", "--conntrack-sweep-interval", "1"];
    attachment_removed_is_put_back(&flags, |_, layout| {
        for prog in [PROG_INGRESS, PROG_EGRESS] {
            let link = PinnedLink::from_pin(layout.link(&PodId::new("x", "a"), prog)).unwrap();
            let id = FdLink::from(link).info().unwrap().id().to_string();
            let out = std::process::Command::new("bpftool").args(["link", "detach", "id", &id]).output().unwrap();
            assert!(out.status.success(), "bpftool link detach: {}", String::from_utf8_lossy(&out.stderr));
        }
    });
}

#[test]
fn changing_the_attach_mode_leaves_one_attachment_per_hook() {
    let (env, manifests, status_file) = a_closed();
    let layout = PinLayout::new(env.root());
    // (pinned links, our filters) over the three pods' veths.
    let attachments = || {
        let links = std::fs::read_dir(layout.links_dir()).map_or(0, |d| {
            d.filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("x_"))).count()
        });
        let filters: usize = ["x/a", "x/b", "x/c"]
            .iter()
            .flat_map(|pod| ["ingress", "egress"].map(|hook| (env.pod(pod).host_veth.clone(), hook)))
            .filter(|(veth, hook)| {
                let args = ["-n", env.node.netns().name(), "filter", "show", "dev", veth, hook];
                let out = std::process::Command::new("tc").args(args).output().unwrap();
                String::from_utf8_lossy(&out.stdout).contains("handle_")
            })
            .count();
        (links, filters)
    };
    let enforced = || !env.reaches("x/b", "x/a", Probe::tcp(80)) && env.reaches("x/a", "x/b", Probe::tcp(80));
    for (mode, want) in [("tcx", (6, 0)), ("auto", (0, 6)), ("tcx", (6, 0))] {
        let _ = std::fs::remove_file(&status_file);
        let _agent = Agent::start_with(&env, &manifests, &status_file, &["--attach-mode", mode]);
        wait_until(&format!("the pods are attached in mode {mode}"), || {
            status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 3) && attachments() == want
        });
        assert!(enforced(), "enforced in mode {mode}");
    }
}

/// Starts an agent with `flags` enforcing a closed a, lets `remove` take
/// a's attachment away, and checks that the agent puts it back and only it.
fn attachment_removed_is_put_back(flags: &[&str], remove: impl FnOnce(&Env, &PinLayout)) {
    let (env, manifests, status_file) = a_closed();
    let _agent = Agent::start_with(&env, &manifests, &status_file, flags);
    wait_until("all three pods are attached", || {
        status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 3)
    });
    assert!(!env.reaches("x/b", "x/a", Probe::tcp(80)));
    let restored = || restored(&env);
    assert_eq!(restored(), Some(0));
    let layout = PinLayout::new(env.root());
    let programs = || env.node.netns().run(|| inventory::attachments(&layout).unwrap()).unwrap();
    let before = programs();
    assert!(before.iter().all(|a| a.prog_id != 0), "every pod runs the programs: {before:?}");
    remove(&env, &layout);
    assert!(programs().iter().any(|a| a.prog_id == 0), "a's attachment is gone");
    wait_until("a's attachment is restored", || restored() == Some(1));
    let after = programs();
    assert!(after.iter().all(|a| a.prog_id != 0), "a runs the programs on both hooks again: {after:?}");
    assert!(!env.reaches("x/b", "x/a", Probe::tcp(80)), "a is enforced again");
    assert!(env.reaches("x/a", "x/b", Probe::tcp(80)));
    assert_eq!(restored(), Some(1), "only a's was put back");
}

/// The agent's `na_attachments_restored_total`.
fn restored(env: &Env) -> Option<u64> {
    let metrics = http_get(env, 8162, "/metrics").expect("the agent answers");
    metrics.lines().find_map(|l| l.strip_prefix("na_attachments_restored_total ")?.parse::<u64>().ok())
}

#[test]
fn a_record_leading_to_another_pods_maps_is_put_back() {
    let (env, manifests, status_file) = three_pods();
    let from_c = json!({"podSelector": {"matchLabels": {"app": "a"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "c"}}}]}]});
    manifests.write("a.yaml", &[policy("a-from-c", from_c)]);
    let _agent = Agent::start_with(&env, &manifests, &status_file, &["--conntrack-sweep-interval", "1"]);
    wait_until("all three pods are attached", || {
        status(&status_file)["attached"].as_array().is_some_and(|a| a.len() == 3)
    });
    let tcp80 = Probe::tcp(80);
    assert!(env.reaches("x/c", "x/a", tcp80) && !env.reaches("x/b", "x/a", tcp80));
    assert_eq!(restored(&env), Some(0));
    // What pods taking spare slots while the spares were made again could
    // leave (fixed since): a's veth judged by b's maps, b's rules in a's place.
    let layout = PinLayout::new(env.root());
    let ifindex = |key: &str| {
        let veth = env.pod(key).host_veth.clone();
        env.node.netns().run(move || nix::net::if_::if_nametoindex(veth.as_str())).unwrap().unwrap()
    };
    let mut tables = NodeTables::open(&layout).unwrap();
    let mut record = tables.pods.get(&ifindex("x/a"), 0).unwrap();
    record.slot = tables.pods.get(&ifindex("x/b"), 0).unwrap().slot;
    tables.pods.insert(ifindex("x/a"), record, 0).unwrap();
    wait_until("a's record is put back", || restored(&env) == Some(1));
    let slot = tables.pods.get(&ifindex("x/a"), 0).unwrap().slot;
    let a = PinnedMaps::of_pod(&layout, &PodId::new("x", "a")).unwrap();
    assert!(tables.holds(slot, &a.inner()), "a's record leads to a's maps");
    assert!(env.reaches("x/c", "x/a", tcp80) && !env.reaches("x/b", "x/a", tcp80), "a's rules judge it again");
    assert_eq!(restored(&env), Some(1), "only a's was put back");
}

#[test]
fn veths_are_followed_as_the_kernel_reports_them_without_polling() {
    let (env, manifests, status_file) = a_closed();
    // The pod is scheduled, its sandbox not wired yet.
    env.node.delete_veth("x/a").unwrap();
    let _agent = Agent::start(&env, &manifests, &status_file);
    let pending = || status(&status_file)["pending"].clone();
    wait_until("a waits for its veth", || pending() == json!(["x/a"]));
    // Nothing is done for it while nothing changes: the status file, written
    // after every reconcile, stays as it is.
    let written = || std::fs::metadata(&status_file).and_then(|m| m.modified()).unwrap();
    let before = written();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(written(), before, "no reconcile while nothing changed");
    // The CNI wires the pod: the agent hears of it from the kernel at once.
    env.node.wire_veth("x/a").unwrap();
    wait_until("a is attached", || pending() == json!([]));
    assert!(!env.reaches("x/b", "x/a", Probe::tcp(80)), "a is enforced");
    assert!(env.reaches("x/a", "x/b", Probe::tcp(80)));

    // The sandbox is made again under the running agent (same name and
    // addresses, a new device with nothing attached): enforced again at once,
    // under its new ifindex.
    let ifindex = || {
        let pods = status(&status_file)["pods"].clone();
        pods.as_array().unwrap().iter().find(|p| p["name"] == "a").map(|p| p["ifindex"].clone())
    };
    let old = ifindex();
    env.node.recreate_veth("x/a").unwrap();
    wait_until("a is enforced on its new veth", || ifindex() != old && pending() == json!([]));
    assert!(!env.reaches("x/b", "x/a", Probe::tcp(80)), "a is enforced on its new veth");
    assert!(env.reaches("x/a", "x/b", Probe::tcp(80)));
    // Nothing of a's is left under its old ifindex, which the kernel may
    // give the next veth.
    let tables = NodeTables::open(&PinLayout::new(env.root())).unwrap();
    let old: u32 = old.and_then(|i| i.as_u64()).and_then(|i| i.try_into().ok()).unwrap();
    assert!(!tables.ifindexes().contains(&old), "the old ifindex {old} still leads to a's maps");
    assert!(tables.pods.get(&old, 0).is_err(), "the old ifindex {old} still has a's record");
}

#[test]
fn the_nodes_ipv6_addresses_reach_the_programs_as_they_change() {
    let (env, manifests, status_file) = a_closed();
    let _agent = Agent::start(&env, &manifests, &status_file);
    let known = || NodeAddrTable::open(&PinLayout::new(env.root())).and_then(|t| t.addrs()).unwrap_or_default();
    wait_until("the node's address on lo is known", || known().contains(&na_harness::NODE_IP6));
    // A CNI puts a pod's gateway address on its host veth, then takes it away.
    let gateway: std::net::Ipv6Addr = "fd18::fe".parse().unwrap();
    let veth = env.pod("x/a").host_veth.clone();
    let ip = |op: &str| {
        let args = ["-n", env.node.netns().name(), "addr", op, "fd18::fe/128", "dev", &veth];
        let flags: &[&str] = if op == "add" { &["nodad"] } else { &[] };
        assert!(std::process::Command::new("ip").args(args).args(flags).status().unwrap().success());
    };
    ip("add");
    wait_until("the gateway address is known", || known().contains(&gateway));
    ip("del");
    wait_until("and forgotten", || !known().contains(&gateway));
    assert!(known().iter().all(|a| !a.is_unicast_link_local()), "link-local addresses are exempt by prefix");
}

#[test]
fn only_a_host_route_names_a_pods_veth() {
    let env = Env::without_servers(AttachMode::default(), &[("x", "a")]).unwrap();
    let a = env.pod("x/a");
    let (veth, node) = (a.host_veth.clone(), env.node.netns().name().to_owned());
    // A subnet and a default route through the same veth carry addresses
    // that are no pod's.
    let ip = |args: &[&str]| assert!(std::process::Command::new("ip").args(args).status().unwrap().success());
    ip(&["-n", &node, "route", "add", "10.99.0.0/24", "dev", &veth]);
    ip(&["-n", &node, "route", "add", "default", "dev", &veth]);
    let (pod_ip, pod_ip6) = (a.ip.into(), a.ip6.into());
    let found = env
        .node
        .netns()
        .run(move || {
            [pod_ip, pod_ip6, "10.99.0.5".parse().unwrap(), "192.0.2.7".parse().unwrap()].map(na_agent::veth::by_route)
        })
        .unwrap();
    assert_eq!(found[0].as_deref(), Some(veth.as_str()), "the pod's /32");
    assert_eq!(found[1].as_deref(), Some(veth.as_str()), "the pod's /128");
    assert_eq!(found[2], None, "an address of a /24 through the veth");
    assert_eq!(found[3], None, "an address of the default route through the veth");
}
