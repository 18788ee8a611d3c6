//! The Kubernetes source against an in-process fake API server that speaks
//! real list and watch HTTP: resourceVersions, bookmarks, a 410 Gone that
//! forces a relist, and objects deleted while no watch was looking.
mod support;

use std::{
    net::TcpListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use na_agent::source::{
    Event, Kind, Object,
    kube::{Update, spawn},
};
use na_policy::{CompileOptions, Compiler};
use serde_json::{Value, json};
use support::fake_apiserver::{Cluster, NAMESPACES, PODS, POLICIES};

fn pod(name: &str, app: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "x", "uid": format!("uid-{name}"), "labels": {"app": app}},
           "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn policy() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"},
           "spec": {"podSelector": {"matchLabels": {"app": "a"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}})
}

fn compiler() -> Compiler {
    Compiler::new(CompileOptions { node_name: "n1".into(), ..Default::default() })
}

fn feed(c: &mut Compiler, obj: Object) {
    match obj {
        Object::Pod(p) => c.upsert_pod(&p),
        Object::Namespace(n) => c.upsert_namespace(&n),
        Object::NetworkPolicy(p) => c.upsert_policy(&p).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_relists_after_410_and_finds_what_vanished() {
    let cluster = Arc::new(Mutex::new(Cluster::new()));
    {
        let mut c = cluster.lock().unwrap();
        c.change(NAMESPACES, "ADDED", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}));
        c.change(PODS, "ADDED", pod("a", "a", "10.0.0.1"));
        c.change(PODS, "ADDED", pod("b", "b", "10.0.0.2"));
        c.change(POLICIES, "ADDED", policy());
    }
    let port = support::fake_apiserver::serve(TcpListener::bind("127.0.0.1:0").unwrap(), cluster.clone());
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    spawn(client, tx);

    let mut watched = compiler();
    let mut synced = 0;
    let mut errors = 0;
    let mut deleted = Vec::new();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("an update in time").expect("open")
    };
    while synced < 3 {
        match next().await {
            Update::Synced(_) => synced += 1,
            Update::Event(Event::Applied(o)) => feed(&mut watched, o),
            other => panic!("unexpected before the first sync: {other:?}"),
        }
    }
    // Live changes: c appears, a is relabelled.
    {
        let mut c = cluster.lock().unwrap();
        c.change(PODS, "ADDED", pod("c", "b", "10.0.0.3"));
        c.change(PODS, "MODIFIED", pod("a", "a", "10.0.0.11"));
    }
    // Namespaces saw no event since the list, yet their watch resumes from the
    // newest resourceVersion: it followed the server's bookmarks.
    let current = cluster.lock().unwrap().rv;
    let bookmarked = async {
        while !cluster.lock().unwrap().watches.iter().any(|&(p, from)| p == NAMESPACES && from >= current) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), bookmarked).await.expect("namespaces watch resumed from a bookmark");
    // Then b is deleted while history is compacted: the next watch is told 410
    // Gone and only a relist can show that b is gone.
    {
        let mut c = cluster.lock().unwrap();
        c.collections.get_mut(PODS).unwrap().objects.remove("x/b");
        c.rv += 1;
        c.compacted_before = c.rv + 1;
    }
    let mut pod_resynced = false;
    while !(pod_resynced && deleted.iter().any(|k: &na_agent::source::ObjectKey| k.id.name == "b")) {
        match next().await {
            Update::Event(Event::Applied(o)) => feed(&mut watched, o),
            Update::Event(Event::Deleted(k)) => {
                if k.kind == Kind::Pod {
                    watched.remove_pod(&k.id);
                }
                deleted.push(k);
            }
            Update::Synced(Kind::Pod) => pod_resynced = true,
            Update::Synced(_) => {}
            Update::WatchError(..) => errors += 1,
        }
    }
    assert!(errors >= 1, "the 410 surfaced as a watch error");
    assert_eq!(deleted.len(), 1, "{deleted:?}");

    // The same cluster fed directly compiles to the same rules.
    let mut direct = compiler();
    {
        let c = cluster.lock().unwrap();
        for obj in c.collections[NAMESPACES].objects.values() {
            direct.upsert_namespace(&serde_json::from_value::<Namespace>(obj.clone()).unwrap());
        }
        for obj in c.collections[PODS].objects.values() {
            direct.upsert_pod(&serde_json::from_value::<Pod>(obj.clone()).unwrap());
        }
        for obj in c.collections[POLICIES].objects.values() {
            direct.upsert_policy(&serde_json::from_value::<NetworkPolicy>(obj.clone()).unwrap()).unwrap();
        }
    }
    // The watchers asked for nothing the ClusterRole does not grant.
    let allowed: Vec<String> = na_agent::source::kube::watched_resources()
        .iter()
        .map(|(group, plural)| match group.as_str() {
            "" => format!("/api/v1/{plural}"),
            g => format!("/apis/{g}/v1/{plural}"),
        })
        .collect();
    for (method, path, verb) in &cluster.lock().unwrap().requests {
        assert_eq!(method, "GET");
        assert!(allowed.contains(path), "{path} is not a watched collection");
        assert!(na_agent::source::kube::VERBS.contains(verb), "{verb} on {path}");
    }
    let (w, d) = (watched.compile_all(), direct.compile_all());
    assert_eq!(w.keys().map(ToString::to_string).collect::<Vec<_>>(), ["x/a", "x/c"]);
    assert_eq!(w, d);
}
