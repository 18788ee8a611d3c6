//! A fake API server speaking real list and watch HTTP: resourceVersions,
//! bookmarks, 410 Gone for compacted history, watches that end and are resumed.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};

impl Cluster {
    /// An empty cluster with the three collections the agent watches.
    pub fn new() -> Self {
        let collection = |list_kind, api_version| Collection {
            list_kind,
            api_version,
            objects: BTreeMap::new(),
            events: Vec::new(),
        };
        Self {
            rv: 0,
            collections: BTreeMap::from([
                (NAMESPACES, collection("NamespaceList", "v1")),
                (PODS, collection("PodList", "v1")),
                (POLICIES, collection("NetworkPolicyList", "networking.k8s.io/v1")),
            ]),
            compacted_before: 0,
            watches: Vec::new(),
            requests: Vec::new(),
        }
    }
}

pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const PODS: &str = "/api/v1/pods";
pub const POLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";

/// One resource collection of the fake cluster.
pub struct Collection {
    list_kind: &'static str,
    api_version: &'static str,
    pub objects: BTreeMap<String, Value>,
    /// (resourceVersion, type, object) in order.
    events: Vec<(u64, &'static str, Value)>,
}

/// The fake cluster behind the server.
pub struct Cluster {
    pub rv: u64,
    pub collections: BTreeMap<&'static str, Collection>,
    /// Watches from before this resourceVersion get 410 Gone.
    pub compacted_before: u64,
    /// Every watch request received: (collection, resourceVersion asked from).
    pub watches: Vec<(&'static str, u64)>,
    /// Every request as (method, path, verb): what the agent's RBAC must allow.
    pub requests: Vec<(String, String, &'static str)>,
}

impl Cluster {
    /// Records a watch event and applies it to the objects.
    pub fn change(&mut self, path: &'static str, kind: &'static str, obj: Value) {
        self.rv += 1;
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let key = format!(
            "{}/{}",
            obj["metadata"]["namespace"].as_str().unwrap_or(""),
            obj["metadata"]["name"].as_str().unwrap()
        );
        let c = self.collections.get_mut(path).unwrap();
        match kind {
            "DELETED" => {
                c.objects.remove(&key);
            }
            _ => {
                c.objects.insert(key, obj.clone());
            }
        }
        c.events.push((self.rv, kind, obj));
    }
}

/// Serves `cluster` on `listener` (made wherever the caller needs it, a
/// network namespace for instance) from a background thread.
pub fn serve(listener: TcpListener, cluster: Arc<Mutex<Cluster>>) -> u16 {
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let cluster = cluster.clone();
            std::thread::spawn(move || handle(conn, &cluster));
        }
    });
    port
}

fn handle(mut conn: TcpStream, cluster: &Mutex<Cluster>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
            break;
        }
    }
    let target = first.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: BTreeMap<&str, &str> = query.split('&').filter_map(|kv| kv.split_once('=')).collect();
    let watch = matches!(params.get("watch"), Some(&"true") | Some(&"1"));
    let method = first.split_whitespace().next().unwrap_or_default().to_owned();
    let body = {
        let mut c = cluster.lock().unwrap();
        c.requests.push((method, path.to_owned(), if watch { "watch" } else { "list" }));
        let Some((&path, col)) = c.collections.get_key_value(path) else {
            let _ = write!(conn, "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            return;
        };
        if watch {
            let from: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            let body = if from < c.compacted_before {
                let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "code": 410, "reason": "Expired", "message": "too old resource version"}});
                format!("{gone}\n")
            } else {
                let mut lines: String = col
                    .events
                    .iter()
                    .filter(|(rv, ..)| *rv > from)
                    .map(|(_, t, o)| format!("{}\n", json!({"type": t, "object": o})))
                    .collect();
                // As the real server does now and then: "you are current up to
                // here", even when this collection saw nothing new.
                if params.get("allowWatchBookmarks") == Some(&"true") {
                    let kind = col.list_kind.trim_end_matches("List");
                    let mark = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": col.api_version,
                        "metadata": {"resourceVersion": c.rv.to_string()}}});
                    lines.push_str(&format!("{mark}\n"));
                }
                lines
            };
            c.watches.push((path, from));
            body
        } else {
            let items: Vec<&Value> = col.objects.values().collect();
            json!({"kind": col.list_kind, "apiVersion": col.api_version, "metadata": {"resourceVersion": c.rv.to_string()}, "items": items}).to_string()
        }
    };
    let _ = write!(conn, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{body}");
    if watch {
        // Hold the watch open a little, as a server with nothing new would.
        std::thread::sleep(Duration::from_millis(100));
    }
}
