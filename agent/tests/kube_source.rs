//! The agent's Kubernetes source (its kube-rs watchers) against a fake API
//! server that answers as kube-apiserver does: paginated lists, changes
//! pushed over held-open chunked watches, bookmarks, compaction, expired
//! continue tokens, an API restart. Whatever happens, what the source reports
//! must add up to exactly what the cluster holds.
mod support;

use std::{
    collections::BTreeMap,
    net::TcpListener,
    sync::MutexGuard,
    time::{Duration, Instant},
};

use na_agent::source::{
    Event, Kind, Object, ObjectKey,
    kube::{Update, client, spawn},
};
use serde_json::{Value, json};
use support::fake_apiserver::{
    AWS_CLUSTER_POLICIES, CLUSTER_POLICIES, Cluster, ENDPOINT_SLICES, NAMESPACES, PODS, POLICIES, Request, SERVICES,
    Server, VERSION, serve,
};
use tokio::sync::mpsc::Receiver;

/// The longest any wait may last.
const BOUND: Duration = Duration::from_secs(30);

const COLLECTIONS: [&str; 5] = [NAMESPACES, PODS, POLICIES, SERVICES, ENDPOINT_SLICES];

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"team": name}}})
}

fn pod(name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "x", "uid": format!("uid-{name}"), "labels": {"app": app}},
           "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
           "status": {"phase": "Running"}})
}

fn policy(name: &str, app: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "x"},
           "spec": {"podSelector": {"matchLabels": {"app": app}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}})
}

/// Namespace x, pods x/a and x/b, policy x/p, Service x/s and its EndpointSlice.
fn small() -> Cluster {
    let mut c = Cluster::new();
    c.apply(NAMESPACES, namespace("x"));
    c.apply(PODS, pod("a", "a"));
    c.apply(PODS, pod("b", "b"));
    c.apply(POLICIES, policy("p", "a"));
    c.apply(
        SERVICES,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "x"},
               "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "b"}, "ports": [{"port": 80}]}}),
    );
    c.apply(
        ENDPOINT_SLICES,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "s-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "s"}},
               "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.2"]}], "ports": [{"port": 80}]}),
    );
    c
}

/// Whether every collection at `paths` has a watch open: compacting history
/// then sends none of them below the compaction point.
fn watched(c: &Cluster, paths: &[&str]) -> bool {
    paths.iter().all(|path| c.watching(path))
}

/// The resourceVersion a watch started from.
fn from(r: &Request) -> u64 {
    r.params["resourceVersion"].parse().unwrap()
}

/// The agent's watchers on a fake cluster, and what they reported.
struct Watched {
    server: Server,
    rx: Receiver<Update>,
    /// The cluster as the reports so far describe it.
    objects: BTreeMap<ObjectKey, Object>,
    synced: BTreeMap<Kind, usize>,
    errors: Vec<Kind>,
    deleted: Vec<ObjectKey>,
    not_installed: BTreeMap<Kind, usize>,
}

impl Watched {
    fn start(cluster: Cluster) -> Self {
        let server = serve(TcpListener::bind("127.0.0.1:0").unwrap(), cluster);
        let config = kube::Config::new(format!("http://127.0.0.1:{}", server.port).parse().unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        spawn(client(config).unwrap(), tx);
        Self {
            server,
            rx,
            objects: BTreeMap::new(),
            synced: BTreeMap::new(),
            errors: Vec::new(),
            deleted: Vec::new(),
            not_installed: BTreeMap::new(),
        }
    }

    fn cluster(&self) -> MutexGuard<'_, Cluster> {
        self.server.cluster()
    }

    /// Takes reports until `cond` holds; fails the test after [`BOUND`].
    async fn until(&mut self, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + BOUND;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            // What the server saw changes without a report: look again soon.
            if let Ok(update) = tokio::time::timeout(Duration::from_millis(20), self.rx.recv()).await {
                self.take(update.expect("the watchers run"));
            }
        }
    }

    fn take(&mut self, update: Update) {
        match update {
            Update::Event(Event::Applied(o)) => {
                self.objects.insert(o.key().unwrap(), o);
            }
            Update::Event(Event::Deleted(k)) => {
                self.objects.remove(&k);
                self.deleted.push(k);
            }
            Update::Synced(kind) => *self.synced.entry(kind).or_default() += 1,
            Update::WatchError(kind, _) => self.errors.push(kind),
            Update::NotInstalled(kind) => *self.not_installed.entry(kind).or_default() += 1,
        }
    }

    /// Whether the reports describe the cluster exactly as it is.
    fn current(&self) -> bool {
        let c = self.cluster();
        let typed = |path, wrap: fn(Value) -> Object| c.objects(path).map(move |v| wrap(v.clone()));
        let cluster: BTreeMap<ObjectKey, Object> =
            typed(NAMESPACES, |v| Object::Namespace(Box::new(serde_json::from_value(v).unwrap())))
                .chain(typed(PODS, |v| Object::Pod(Box::new(serde_json::from_value(v).unwrap()))))
                .chain(typed(POLICIES, |v| Object::NetworkPolicy(Box::new(serde_json::from_value(v).unwrap()))))
                .chain(typed(SERVICES, |v| Object::Service(Box::new(serde_json::from_value(v).unwrap()))))
                .chain(typed(ENDPOINT_SLICES, |v| Object::EndpointSlice(Box::new(serde_json::from_value(v).unwrap()))))
                .map(|o| (o.key().unwrap(), o))
                .collect();
        self.objects == cluster
    }

    fn synced(&self, kind: Kind) -> usize {
        self.synced.get(&kind).copied().unwrap_or(0)
    }

    /// Waits for the first full list of every kind, and checks it was the
    /// cluster whole.
    async fn first_lists(&mut self) {
        self.until("every kind is listed", |w| w.synced.len() == COLLECTIONS.len()).await;
        let seen: Vec<String> = self.objects.keys().map(|k| k.id.to_string()).collect();
        assert!(self.current(), "the lists were the cluster whole; seen: {seen:?}");
    }

    /// Waits until every kind has a watch open.
    async fn watching(&mut self) {
        self.when("every kind has a watch open", |c| watched(c, &COLLECTIONS), |_| ()).await;
    }

    /// Makes `change` at the first moment `ready` holds, under the same lock:
    /// a watch found open then cannot end before the change reaches it.
    async fn when(&mut self, what: &str, ready: impl Fn(&Cluster) -> bool, change: impl FnOnce(&mut Cluster)) {
        let change = std::cell::Cell::new(Some(change));
        self.until(what, |w| {
            let mut c = w.cluster();
            let now = ready(&c);
            if now && let Some(change) = change.take() {
                change(&mut c);
            }
            now
        })
        .await;
    }

    /// Nothing failed and nothing was listed twice.
    fn no_trouble(&self) {
        assert!(self.errors.is_empty(), "watch errors: {:?}", self.errors);
        assert!(self.synced.values().all(|&n| n == 1), "relisted: {:?}", self.synced);
    }

    /// The watchers asked for nothing the ClusterRole does not grant.
    fn asked_only_what_rbac_grants(&self) {
        let allowed: Vec<String> = na_agent::source::kube::watched_resources().iter().map(|c| c.path()).collect();
        // The version is public to every authenticated client
        // (system:public-info-viewer), no grant of ours.
        for r in self.cluster().requests.iter().filter(|r| r.path != VERSION) {
            assert_eq!(r.method, "GET");
            assert!(allowed.contains(&r.path), "{} is not a watched collection", r.path);
            assert!(na_agent::source::kube::VERBS.contains(&r.verb), "{} on {}", r.verb, r.path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginated_lists_arrive_whole_and_changes_stream_over_one_watch() {
    let mut cluster = Cluster::new();
    cluster.page_size = 2;
    for ns in ["x", "y", "z"] {
        cluster.apply(NAMESPACES, namespace(ns));
    }
    for i in 0..9 {
        cluster.apply(PODS, pod(&format!("p{i}"), "a"));
    }
    for i in 0..5 {
        cluster.apply(POLICIES, policy(&format!("q{i}"), "a"));
    }
    let mut w = Watched::start(cluster);
    w.first_lists().await;
    for (path, n) in [(NAMESPACES, 3_usize), (PODS, 9), (POLICIES, 5)] {
        let c = w.cluster();
        let continued: Vec<bool> = c.requests_to(path, "list").map(|r| r.params.contains_key("continue")).collect();
        assert_eq!(continued.len(), n.div_ceil(2), "{path} came in pages of two");
        assert!(!continued[0] && continued[1..].iter().all(|&c| c), "{path}: {continued:?}");
    }

    w.watching().await;
    let watches = |w: &Watched| COLLECTIONS.map(|path| w.cluster().requests_to(path, "watch").count());
    assert_eq!(watches(&w), [1; COLLECTIONS.len()]);
    for i in 0..4 {
        {
            let mut c = w.cluster();
            c.apply(PODS, pod(&format!("p{i}"), "b"));
            c.apply(PODS, pod(&format!("n{i}"), "a"));
            c.delete(PODS, &format!("x/p{}", 8 - i));
            c.apply(POLICIES, policy(&format!("q{i}"), &format!("app{i}")));
            c.apply(NAMESPACES, namespace(&format!("n{i}")));
        }
        w.until("the changes arrive", Watched::current).await;
    }
    assert_eq!(watches(&w), [1; COLLECTIONS.len()], "every change came over the watch opened after the list");
    w.no_trouble();
    w.asked_only_what_rbac_grants();
}

fn cluster_policy(name: &str) -> Value {
    json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
           "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                    "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_crd_is_reported_once_and_watched_for_until_installed() {
    let mut w = Watched::start(small());
    w.first_lists().await;
    let both = [Kind::ClusterNetworkPolicy, Kind::AwsClusterNetworkPolicy];
    w.until("both CRDs are reported missing", |w| both.iter().all(|k| w.not_installed.contains_key(k))).await;
    // The watchers keep asking (the backoff starts under a second)...
    w.until("the upstream CRD is asked for again", |w| {
        w.cluster().requests_to(CLUSTER_POLICIES, "list").filter(|r| r.code == Some(404)).count() >= 3
    })
    .await;
    // ...without reporting it again, or as an error.
    assert_eq!(w.not_installed, both.iter().map(|k| (*k, 1)).collect(), "reported once each");
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    {
        let mut c = w.cluster();
        c.install_crd(CLUSTER_POLICIES, "policy.networking.k8s.io/v1alpha2");
        c.apply(CLUSTER_POLICIES, cluster_policy("guard"));
    }
    w.until("the new CRD is listed", |w| w.synced(Kind::ClusterNetworkPolicy) == 1).await;
    let key = ObjectKey { kind: Kind::ClusterNetworkPolicy, id: na_policy::ObjectRef::cluster("guard") };
    let served = w.cluster().objects(CLUSTER_POLICIES).next().cloned().unwrap();
    assert_eq!(w.objects.get(&key), Some(&Object::ClusterNetworkPolicy(Box::new(served))), "the object as served");
    w.cluster().apply(CLUSTER_POLICIES, cluster_policy("fence"));
    let fence = ObjectKey { kind: Kind::ClusterNetworkPolicy, id: na_policy::ObjectRef::cluster("fence") };
    w.until("a new policy comes over the watch", |w| w.objects.contains_key(&fence)).await;
    assert_eq!(w.not_installed[&Kind::AwsClusterNetworkPolicy], 1);
    assert!(w.cluster().requests_to(AWS_CLUSTER_POLICIES, "list").all(|r| r.code == Some(404)));
    // The CRD removed: its objects go with it, and it is reported again.
    w.cluster().uninstall_crd(CLUSTER_POLICIES);
    w.until("the removed CRD's objects are reported deleted", |w| {
        !w.objects.contains_key(&key) && !w.objects.contains_key(&fence)
    })
    .await;
    w.until("and it is reported missing again", |w| w.not_installed[&Kind::ClusterNetworkPolicy] == 2).await;
    w.asked_only_what_rbac_grants();
}

/// Whether `r` asked for the collection's initial state in its watch.
fn streamed(r: &Request) -> bool {
    r.params.get("sendInitialEvents").is_some_and(|v| v == "true")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_1_32_on_streams_the_initial_state_in_the_watch() {
    let mut cluster = small();
    cluster.version = (1, 33);
    cluster.watch_list = true;
    cluster.max_watch = Some(Duration::from_millis(500));
    let mut w = Watched::start(cluster);
    w.first_lists().await;
    for path in COLLECTIONS {
        let c = w.cluster();
        assert_eq!(c.requests_to(path, "list").count(), 0, "{path} was never listed");
        assert!(c.requests_to(path, "watch").next().is_some_and(streamed), "{path}'s first watch streamed it");
    }
    // Changes come over the watch; one that ended resumes from its
    // bookmark without asking for the state again.
    w.cluster().apply(PODS, pod("c", "c"));
    w.until("c arrives", Watched::current).await;
    w.until("the pods watch resumed", |w| w.cluster().requests_to(PODS, "watch").count() > 1).await;
    w.cluster().apply(PODS, pod("d", "d"));
    w.until("d arrives", Watched::current).await;
    assert!(w.cluster().requests_to(PODS, "watch").skip(1).all(|r| !streamed(r) && from(r) > 0));
    w.no_trouble();
    w.asked_only_what_rbac_grants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_streamed_lists_is_listed_in_pages() {
    let mut cluster = small();
    // 1.32 or later, WatchList turned off.
    cluster.version = (1, 33);
    cluster.watch_list = false;
    let mut w = Watched::start(cluster);
    w.first_lists().await;
    for path in COLLECTIONS {
        let c = w.cluster();
        let watches: Vec<(bool, Option<u16>)> = c.requests_to(path, "watch").map(|r| (streamed(r), r.code)).collect();
        assert_eq!(watches[0], (true, Some(422)), "{path}: asked to stream once, refused");
        assert!(watches[1..].iter().all(|(streamed, _)| !streamed), "{path}: never asked again");
        assert_eq!(c.requests_to(path, "list").count(), 1, "{path} listed instead");
    }
    w.cluster().apply(PODS, pod("c", "c"));
    w.until("c arrives", Watched::current).await;
    w.no_trouble();
    w.asked_only_what_rbac_grants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_gives_410_only_below_its_point_and_the_relist_is_followed() {
    let mut cluster = small();
    cluster.max_watch = Some(Duration::from_millis(500));
    let mut w = Watched::start(cluster);
    w.first_lists().await;

    // A change, then history compacted at it. Every watch resumes from the
    // point: pods from the change, namespaces and policies from the bookmark
    // their last watch ended with. Nothing is Gone.
    let mut point = 0;
    w.when(
        "every kind has a watch open",
        |c| watched(c, &COLLECTIONS),
        |c| {
            c.apply(PODS, pod("a", "a2"));
            c.compact();
            point = c.rv();
        },
    )
    .await;
    w.until("the change arrives", Watched::current).await;
    w.until("every kind watches again from the compaction point", |w| {
        let c = w.cluster();
        COLLECTIONS.iter().all(|path| c.requests_to(path, "watch").any(|r| from(r) == point && r.code == Some(200)))
    })
    .await;
    w.no_trouble();

    // The next pods watch is slow to start; meanwhile b is deleted and history
    // compacted past where that watch resumes: it is told 410 Gone, and only a
    // relist can show that b is gone.
    w.cluster().delay(PODS, Duration::from_secs(2));
    w.when(
        "a pods watch waits, the others are open",
        |c| c.requests_to(PODS, "watch").any(|r| r.code.is_none()) && watched(c, &[NAMESPACES, POLICIES]),
        |c| {
            c.delete(PODS, "x/b");
            c.compact();
            c.delay(PODS, Duration::ZERO);
        },
    )
    .await;
    w.until("the relist finds b gone", |w| w.synced(Kind::Pod) == 2 && w.current()).await;
    assert_eq!(w.deleted.iter().map(|k| k.id.to_string()).collect::<Vec<_>>(), ["x/b"]);
    assert_eq!(w.errors, [Kind::Pod], "the 410 is one watch error");

    // A change after the relist comes over the watch that followed it.
    w.cluster().apply(PODS, pod("c", "c"));
    w.until("c arrives", Watched::current).await;
    assert_eq!(w.synced(Kind::Pod), 2, "no further relist");
    assert_eq!(w.cluster().requests.iter().filter(|r| r.code == Some(410)).count(), 1);
    w.asked_only_what_rbac_grants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_continue_token_means_a_full_relist() {
    let mut cluster = Cluster::new();
    cluster.page_size = 2;
    cluster.apply(NAMESPACES, namespace("x"));
    for i in 0..9 {
        cluster.apply(PODS, pod(&format!("p{i}"), "a"));
    }
    cluster.apply(POLICIES, policy("p", "a"));
    cluster.delay(PODS, Duration::from_secs(2));
    let mut w = Watched::start(cluster);

    // While the second page of pods is on its way, p0 (on the first page)
    // is deleted, p9 created and history compacted: the page's snapshot is
    // gone, so is its continue token.
    w.when(
        "the second page of pods is asked for, the other kinds are watched",
        |c| {
            c.requests_to(PODS, "list").any(|r| r.params.contains_key("continue") && r.code.is_none())
                && watched(c, &[NAMESPACES, POLICIES])
        },
        |c| {
            c.delete(PODS, "x/p0");
            c.apply(PODS, pod("p9", "a"));
            c.compact();
            c.delay(PODS, Duration::ZERO);
        },
    )
    .await;
    // The first lists are then whole: p9 there, p0 reported gone although
    // the first page had shown it.
    w.first_lists().await;
    let pages: Vec<(bool, Option<u16>)> =
        w.cluster().requests_to(PODS, "list").map(|r| (r.params.contains_key("continue"), r.code)).collect();
    assert_eq!(pages[..3], [(false, Some(200)), (true, Some(410)), (false, Some(200))], "a relist from the start");
    assert_eq!(pages.len(), 2 + 5, "{pages:?}");
    assert_eq!(w.errors, [Kind::Pod], "the expired token is one list error");
    assert_eq!(w.synced(Kind::Pod), 1);
    w.asked_only_what_rbac_grants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_restart_is_ridden_out_and_what_changed_meanwhile_arrives() {
    let mut w = Watched::start(small());
    w.first_lists().await;
    w.watching().await;

    w.cluster().set_down(true);
    w.until("every watcher met the restart", |w| {
        [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy].iter().all(|k| w.errors.contains(k))
    })
    .await;
    {
        let mut c = w.cluster();
        c.apply(PODS, pod("c", "c"));
        c.delete(PODS, "x/b");
        c.apply(POLICIES, policy("q", "c"));
        c.apply(NAMESPACES, namespace("y"));
        assert!(c.requests.iter().any(|r| r.code == Some(503)));
    }
    assert!(!w.current());
    w.cluster().set_down(false);
    w.until("what changed during the restart arrives", Watched::current).await;
    // History was kept: the watches resumed where they were cut.
    assert!(w.synced.values().all(|&n| n == 1), "relisted: {:?}", w.synced);

    w.cluster().apply(PODS, pod("d", "d"));
    w.until("a change after it arrives", Watched::current).await;
    w.asked_only_what_rbac_grants();
}
