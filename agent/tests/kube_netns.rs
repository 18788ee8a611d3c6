//! `na-agent` in Kubernetes mode in a test node, fed by the fake API server
//! inside the node: it follows the server, judges nothing before it has
//! listed every kind, and keeps enforcing through an API outage.
//! Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces).
mod support;

use std::time::{Duration, Instant};

use na_agent::{
    datapath::AttachMode,
    rpc::npbackend::{EnforceNpRequest, np_backend_client::NpBackendClient},
};
use na_harness::Probe;
use serde_json::{Value, json};
use support::{
    Env,
    agent::{ApiInNode, cni_socket, http_get, pod, policy, wait_until},
    fake_apiserver::{AWS_CLUSTER_POLICIES, CLUSTER_POLICIES, Cluster, NAMESPACES, PODS, POLICIES, VERSION},
};

/// The agent's default metrics and health ports, inside the node.
const METRICS: u16 = 8162;
const HEALTH: u16 = 8163;

const TCP80: Probe = Probe::tcp(80);

/// The fake API server in a test node serving namespace x, its pods a, b
/// and c (labelled app: their name), and `policies`.
fn api(env: &Env, policies: &[Value]) -> ApiInNode {
    let mut c = Cluster::new();
    c.apply(NAMESPACES, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}));
    for app in ["a", "b", "c"] {
        c.apply(PODS, pod(env, &format!("x/{app}"), app));
    }
    for p in policies {
        c.apply(POLICIES, p.clone());
    }
    ApiInNode::serve(env, c)
}

/// `a` admits ingress only from pods labelled `app: from`.
fn a_admits(from: &str) -> Value {
    policy(
        "a-ingress",
        json!({"podSelector": {"matchLabels": {"app": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from}}}]}]}),
    )
}

/// `/readyz`'s status code.
fn readyz(env: &Env) -> Option<u16> {
    http_get(env, HEALTH, "/readyz")?.split_whitespace().nth(1)?.parse().ok()
}

fn watch_errors(env: &Env) -> u64 {
    let metrics = http_get(env, METRICS, "/metrics").expect("metrics served");
    metrics.lines().find_map(|l| l.strip_prefix("na_watch_errors_total ")?.parse().ok()).expect("na_watch_errors_total")
}

#[test]
fn kubernetes_mode_follows_the_api_server() {
    let env = Env::new(AttachMode::default()).unwrap();
    assert!(env.reaches("x/b", "x/a", TCP80) && env.reaches("x/c", "x/a", TCP80), "baseline: nothing attached yet");
    let api = api(&env, &[policy("deny-a", json!({"podSelector": {"matchLabels": {"app": "a"}}}))]);
    let _agent = api.agent(&env);
    wait_until("all three pods are attached", || api.attached() == 3);
    assert!(!env.reaches("x/b", "x/a", TCP80));
    assert_eq!(readyz(&env), Some(200));

    api.cluster().apply(POLICIES, a_admits("b"));
    wait_until("a watched policy lets b in", || env.reaches("x/b", "x/a", TCP80));
    assert!(!env.reaches("x/c", "x/a", TCP80));

    api.cluster().delete(PODS, "x/c");
    wait_until("a watched deletion detaches c", || api.attached() == 2);
    assert_eq!(watch_errors(&env), 0);
}

/// ClusterNetworkPolicies come from their CRDs' watches: the upstream CRD
/// installed, the AWS one not (reported once, no watch error, the rest
/// enforced); an admin Deny overrides the NetworkPolicy that admits b, and
/// its deletion gives b back.
#[test]
fn cluster_network_policies_are_watched_and_a_missing_crd_is_no_outage() {
    let env = Env::new(AttachMode::default()).unwrap();
    let api = api(&env, &[a_admits("b")]);
    api.cluster().install_crd(CLUSTER_POLICIES, "policy.networking.k8s.io/v1alpha2");
    let _agent = api.agent(&env);
    wait_until("all three pods are attached", || api.attached() == 3);
    assert_eq!(readyz(&env), Some(200), "ready without the AWS CRD");
    assert!(env.reaches("x/b", "x/a", TCP80) && !env.reaches("x/c", "x/a", TCP80));

    let guard = json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
                       "metadata": {"name": "guard"},
                       "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                                "ingress": [{"action": "Deny", "from": [{"pods": {"podSelector": {"matchLabels": {"app": "b"}}}}]}]}});
    api.cluster().apply(CLUSTER_POLICIES, guard);
    wait_until("the admin Deny holds over the NetworkPolicy", || !env.reaches("x/b", "x/a", TCP80));
    api.cluster().delete(CLUSTER_POLICIES, "guard");
    wait_until("b is let in again", || env.reaches("x/b", "x/a", TCP80));
    assert_eq!(watch_errors(&env), 0, "a missing CRD is not a watch error");
    let c = api.cluster();
    assert!(c.requests_to(AWS_CLUSTER_POLICIES, "list").next().is_some_and(|r| r.code == Some(404)));
}

#[test]
fn the_first_reconcile_waits_for_every_list() {
    let env = Env::new(AttachMode::default()).unwrap();
    let api = api(&env, &[policy("deny-a", json!({"podSelector": {"matchLabels": {"app": "a"}}}))]);
    let agent = api.agent(&env);
    wait_until("all three pods are attached", || api.attached() == 3);
    // The probe reaches where nothing denies, so its silence is a denial.
    assert!(env.reaches("x/a", "x/b", TCP80) && !env.reaches("x/b", "x/a", TCP80));
    agent.kill();

    // The next agent (an upgrade, say) finds the policies slow to list while
    // pods and namespaces come at once. Reconciling without the policies
    // would open a.
    let before = api.cluster().requests.len();
    api.cluster().delay(POLICIES, Duration::from_secs(4));
    let _agent = api.agent(&env);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_waiting = false;
    loop {
        assert!(Instant::now() < deadline, "the policies were never listed");
        let ready = readyz(&env);
        assert!(!env.reaches("x/b", "x/a", TCP80), "a was reachable before the policies were listed");
        assert!(env.reaches("x/a", "x/b", TCP80));
        let c = api.cluster();
        let listed = |path| c.requests[before..].iter().any(|r| r.path == path && r.verb == "list" && r.code.is_some());
        // Read after the probes: not listed now, not listed when they ran.
        if listed(POLICIES) {
            break;
        }
        assert_ne!(ready, Some(200), "ready before the policies were listed");
        seen_waiting |= ready == Some(503) && listed(PODS) && listed(NAMESPACES);
    }
    assert!(seen_waiting, "never saw the agent up, not ready, with pods and namespaces listed");
    wait_until("the agent is ready", || readyz(&env) == Some(200));
    assert!(env.reaches("x/a", "x/b", TCP80) && !env.reaches("x/b", "x/a", TCP80));
}

#[test]
fn enforcement_holds_through_an_api_outage() {
    let env = Env::new(AttachMode::default()).unwrap();
    let api = api(&env, &[a_admits("b")]);
    let _agent = api.agent(&env);
    let admits = |open: &str, closed: &str| env.reaches(open, "x/a", TCP80) && !env.reaches(closed, "x/a", TCP80);
    wait_until("b may reach a, c may not", || admits("x/b", "x/c"));
    assert_eq!(watch_errors(&env), 0);

    // The API server restarts, and while it is down a's policy is changed to
    // admit c instead of b. The agent cannot know yet: what it enforces stays.
    {
        let mut c = api.cluster();
        c.set_down(true);
        c.apply(POLICIES, a_admits("c"));
    }
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(4) {
        assert!(admits("x/b", "x/c"), "enforcement changed during the outage");
    }
    assert!(watch_errors(&env) > 0, "the outage shows in na_watch_errors_total");
    api.cluster().set_down(false);
    wait_until("the change made during the outage is enforced", || admits("x/c", "x/b"));
}

/// Puts `a` (pod x/a) in the cluster while the agent's pod watch lags
/// behind, then asks the agent to enforce it as the VPC CNI does on ADD;
/// whether it succeeded. The watch stays held.
fn enforce_a_while_the_watch_lags(api: &ApiInNode, a: Value) -> bool {
    {
        let mut c = api.cluster();
        c.hold_watches(PODS, true);
        c.apply(PODS, a);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut client =
        runtime.block_on(na_agent::rpc::connect(cni_socket(&api.status_file))).map(NpBackendClient::new).unwrap();
    let enforce = EnforceNpRequest { k8s_pod_name: "a".into(), k8s_pod_namespace: "x".into(), ..Default::default() };
    runtime.block_on(client.enforce_np_to_pod(enforce)).is_ok_and(|r| r.into_inner().success)
}

#[test]
fn a_cni_add_ahead_of_the_watch_fetches_the_pod() {
    let env = Env::new(AttachMode::default()).unwrap();
    let api = api(&env, &[a_admits("c")]);
    let a = api.cluster().objects(PODS).find(|p| p["metadata"]["name"] == "a").cloned().unwrap();
    api.cluster().delete(PODS, "x/a");
    let _agent = api.agent(&env);
    wait_until("b and c are attached", || api.attached() == 2);
    assert!(enforce_a_while_the_watch_lags(&api, a));
    assert!(!env.reaches("x/b", "x/a", TCP80), "a's policy holds, not the default (open)");
    assert!(env.reaches("x/c", "x/a", TCP80));
    let gets: Vec<String> = api
        .cluster()
        .requests
        .iter()
        .filter(|r| r.verb == "get" && r.path != VERSION)
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(gets, ["/api/v1/namespaces/x/pods/a"]);
}

#[test]
fn a_cni_add_for_a_pod_last_seen_unscheduled_fetches_it_again() {
    let env = Env::new(AttachMode::default()).unwrap();
    let api = api(&env, &[a_admits("c")]);
    let scheduled = api.cluster().objects(PODS).find(|p| p["metadata"]["name"] == "a").cloned().unwrap();
    let mut pending = scheduled.clone();
    pending["spec"].as_object_mut().unwrap().remove("nodeName");
    pending["status"] = json!({"phase": "Pending"});
    api.cluster().apply(PODS, pending);
    let _agent = api.agent(&env);
    wait_until("b and c are attached", || api.attached() == 2);
    assert!(enforce_a_while_the_watch_lags(&api, scheduled), "the ADD of a pod last seen unscheduled");
    assert!(!env.reaches("x/b", "x/a", TCP80) && env.reaches("x/c", "x/a", TCP80), "a's policy holds");
}
