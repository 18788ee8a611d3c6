//! A fake API server answering get, list and watch as kube-apiserver does: lists
//! paginated from one snapshot, with continue tokens that expire when their
//! snapshot is compacted away; watches streamed over chunked HTTP/1.1, held
//! open until their `timeoutSeconds` with changes pushed into them as they are
//! made, and bookmarks; 410 Gone only below the compaction point; API restarts
//! that cut every connection and answer 503 until they end; streamed initial
//! lists (`sendInitialEvents`, WatchList) when its version and feature gate
//! say so, refused as invalid otherwise. Whatever it does not implement it
//! refuses with a 400, so it never answers a new question wrongly in silence.
use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        mpsc::{self, RecvTimeoutError, Sender},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const PODS: &str = "/api/v1/pods";
pub const POLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";
pub const SERVICES: &str = "/api/v1/services";
pub const ENDPOINT_SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
/// The upstream ClusterNetworkPolicy CRD's collection, served once installed.
pub const CLUSTER_POLICIES: &str = "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies";
/// The AWS ClusterNetworkPolicy CRD's collection, served once installed.
pub const AWS_CLUSTER_POLICIES: &str = "/apis/networking.k8s.aws/v1alpha1/clusternetworkpolicies";
/// The server's version (any authenticated client may read it).
pub const VERSION: &str = "/version";

/// kube-apiserver's `--min-request-timeout`: how long a watch that names no
/// `timeoutSeconds` lasts.
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often kube-apiserver sends an idle watch a bookmark (and once more
/// when the watch times out).
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);
/// The annotation of the bookmark that ends a watch's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// The fake cluster behind the server.
pub struct Cluster {
    rv: u64,
    collections: BTreeMap<&'static str, Collection>,
    /// Lists and watches at resourceVersions below this get 410 Gone.
    compacted_before: u64,
    /// The most items a list page holds, whatever `limit` the client asks.
    pub page_size: usize,
    /// The Kubernetes (major, minor) `/version` reports.
    pub version: (u32, u32),
    /// The WatchList feature gate: watches may stream a collection's
    /// initial state (on by default from 1.32).
    pub watch_list: bool,
    /// Watches end after this even if they asked for longer, as behind a
    /// proxy with a shorter timeout; tests see watches end and resume without
    /// waiting for the 290 s kube-rs asks for.
    pub max_watch: Option<Duration>,
    /// Requests of a collection wait this long before they are answered.
    delays: BTreeMap<&'static str, Duration>,
    /// Restarting: every request is answered 503.
    down: bool,
    /// The server is gone for good: its listener closes.
    stopped: bool,
    /// Open watches (by request index): where each collection's changes are pushed.
    watches: Vec<(usize, &'static str, Sender<String>)>,
    /// Collections whose changes reach their watches only when released: a
    /// watch lagging behind the store, as behind a busy watch cache.
    held: BTreeMap<&'static str, Vec<String>>,
    /// Open connections, cut when the server restarts.
    connections: BTreeMap<u64, TcpStream>,
    next_connection: u64,
    /// Every request, in order of arrival.
    pub requests: Vec<Request>,
}

/// One request as the server received it.
pub struct Request {
    pub method: String,
    pub path: String,
    /// "get", "list" or "watch": what the agent's RBAC must grant.
    pub verb: &'static str,
    pub params: BTreeMap<String, String>,
    /// The status answered (a watch's 410 comes in its ERROR event), set
    /// before the answer is written: unset, the client cannot have it.
    pub code: Option<u16>,
    /// Bytes of the answer's body (a watch's events) written so far.
    pub bytes: u64,
}

struct Collection {
    list_kind: &'static str,
    api_version: &'static str,
    objects: BTreeMap<String, Value>,
    /// Changes after the compaction point, oldest first.
    history: Vec<Change>,
}

struct Change {
    rv: u64,
    /// The object's key and its state before the change (None: it was created),
    /// to read the collection as it was at an older resourceVersion.
    key: String,
    before: Option<Value>,
    /// The watch event's line.
    line: String,
}

impl Cluster {
    /// An empty cluster with the collections the agent watches.
    pub fn new() -> Self {
        let collection = |list_kind, api_version| Collection {
            list_kind,
            api_version,
            objects: BTreeMap::new(),
            history: Vec::new(),
        };
        Self {
            // etcd's first revision: no list is ever at 0, which to a watch
            // means "from anywhere".
            rv: 1,
            collections: BTreeMap::from([
                (NAMESPACES, collection("NamespaceList", "v1")),
                (PODS, collection("PodList", "v1")),
                (POLICIES, collection("NetworkPolicyList", "networking.k8s.io/v1")),
                (SERVICES, collection("ServiceList", "v1")),
                (ENDPOINT_SLICES, collection("EndpointSliceList", "discovery.k8s.io/v1")),
            ]),
            compacted_before: 0,
            page_size: usize::MAX,
            // Lists in pages, as every server before 1.32.
            version: (1, 31),
            watch_list: false,
            max_watch: None,
            delays: BTreeMap::new(),
            down: false,
            stopped: false,
            watches: Vec::new(),
            held: BTreeMap::new(),
            connections: BTreeMap::new(),
            next_connection: 0,
            requests: Vec::new(),
        }
    }

    /// Installs a CRD: its collection at `path` is served from now on (404
    /// before, as for a resource the server does not know).
    pub fn install_crd(&mut self, path: &'static str, api_version: &'static str) {
        self.collections.entry(path).or_insert_with(|| Collection {
            list_kind: "ClusterNetworkPolicyList",
            api_version,
            objects: BTreeMap::new(),
            history: Vec::new(),
        });
    }

    /// Removes a CRD and its objects: its collection is no longer served and
    /// its watches end (as kube-apiserver ends them when the CRD goes).
    pub fn uninstall_crd(&mut self, path: &'static str) {
        self.collections.remove(path);
        self.watches.retain(|(_, p, _)| *p != path);
    }

    /// The newest resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Creates or replaces `obj` in the collection at `path`.
    pub fn apply(&mut self, path: &'static str, obj: Value) {
        let key = key(&obj);
        let kind = if self.collections[path].objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        self.record(path, kind, key, obj);
    }

    /// Deletes `key` ("namespace/name", or "name" for a namespace).
    pub fn delete(&mut self, path: &'static str, key: &str) {
        let obj = self.collections[path].objects.get(key).unwrap_or_else(|| panic!("no {key} in {path}")).clone();
        self.record(path, "DELETED", key.to_owned(), obj);
    }

    fn record(&mut self, path: &'static str, kind: &'static str, key: String, mut obj: Value) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let line = event(kind, &obj);
        let c = self.collections.get_mut(path).unwrap();
        let before = match kind {
            "DELETED" => c.objects.remove(&key),
            _ => c.objects.insert(key.clone(), obj),
        };
        c.history.push(Change { rv: self.rv, key, before, line: line.clone() });
        match self.held.get_mut(path) {
            Some(queue) => queue.push(line),
            None => self.watches.retain(|(_, p, tx)| *p != path || tx.send(line.clone()).is_ok()),
        }
    }

    /// Holds the changes of the collection at `path` back from its watches
    /// (`true`), or sends them what was held and stops holding (`false`).
    pub fn hold_watches(&mut self, path: &'static str, hold: bool) {
        if hold {
            self.held.entry(path).or_default();
            return;
        }
        for line in self.held.remove(path).unwrap_or_default() {
            self.watches.retain(|(_, p, tx)| *p != path || tx.send(line.clone()).is_ok());
        }
    }

    /// Bytes written in answers to `verb` requests of the collection at `path`.
    pub fn bytes_sent(&self, path: &str, verb: &str) -> u64 {
        self.requests_to(path, verb).map(|r| r.bytes).sum()
    }

    /// The objects of the collection at `path` now.
    pub fn objects(&self, path: &str) -> impl Iterator<Item = &Value> {
        self.collections[path].objects.values()
    }

    /// Compacts history up to now, as etcd does: lists and watches at older
    /// resourceVersions get 410 Gone; open watches, and those starting from
    /// now, are untouched.
    pub fn compact(&mut self) {
        self.compacted_before = self.rv;
        for c in self.collections.values_mut() {
            c.history.clear();
        }
    }

    /// Makes every request to `path` wait `delay` before it is answered.
    pub fn delay(&mut self, path: &'static str, delay: Duration) {
        self.delays.insert(path, delay);
    }

    /// Starts (`true`) or ends an API server restart: at its start every
    /// connection is cut, open watches with it; until it ends every request
    /// is answered 503.
    pub fn set_down(&mut self, down: bool) {
        self.down = down;
        if down {
            self.watches.clear();
            for conn in self.connections.values() {
                let _ = conn.shutdown(Shutdown::Both);
            }
        }
    }

    /// Whether a watch of `path` is open: it will deliver whatever changes now.
    pub fn watching(&self, path: &str) -> bool {
        self.watches.iter().any(|(_, p, _)| *p == path)
    }

    /// The requests to `path` of `verb`.
    pub fn requests_to<'a>(&'a self, path: &'a str, verb: &'a str) -> impl Iterator<Item = &'a Request> {
        self.requests.iter().filter(move |r| r.path == path && r.verb == verb)
    }

    /// The collection at `path` as it was at `rv`: now, with later changes undone.
    fn objects_at(&self, path: &str, rv: u64) -> BTreeMap<String, Value> {
        let c = &self.collections[path];
        let mut objects = c.objects.clone();
        for change in c.history.iter().rev().take_while(|ch| ch.rv > rv) {
            match &change.before {
                Some(obj) => objects.insert(change.key.clone(), obj.clone()),
                None => objects.remove(&change.key),
            };
        }
        objects
    }

    /// One page of a list: the first, read now, or the one a continue token
    /// points to, read at the first page's resourceVersion.
    fn page(&self, path: &str, limit: Option<usize>, token: Option<&str>) -> (u16, Value) {
        let (rv, offset) = match token {
            None => (self.rv, 0),
            Some(t) => match t.split_once('.').and_then(|(rv, off)| Some((rv.parse().ok()?, off.parse().ok()?))) {
                Some(at) => at,
                None => return (400, status(400, "BadRequest", "continue key is not valid")),
            },
        };
        if rv < self.compacted_before {
            return (
                410,
                status(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter.",
                ),
            );
        }
        // The collection as it is, unless it changed since `rv`: a copy
        // for every page of a big list would cost the list's size each.
        let c = &self.collections[path];
        let then;
        let objects = if c.history.last().is_none_or(|ch| ch.rv <= rv) {
            &c.objects
        } else {
            then = self.objects_at(path, rv);
            &then
        };
        // `limit` 0 or absent: everything.
        let size = limit.filter(|&l| l > 0).unwrap_or(usize::MAX).min(self.page_size);
        let items: Vec<&Value> = objects.values().skip(offset).take(size).collect();
        let next = offset + items.len();
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if next < objects.len() {
            metadata["continue"] = json!(format!("{rv}.{next}"));
            metadata["remainingItemCount"] = json!(objects.len() - next);
        }
        (200, json!({"kind": c.list_kind, "apiVersion": c.api_version, "metadata": metadata, "items": items}))
    }

    /// "You are current up to here", for a watch of `path`; `initial_end`:
    /// and that was the collection's initial state.
    fn bookmark(&self, path: &str, initial_end: bool) -> String {
        let c = &self.collections[path];
        let mut obj = json!({"kind": c.list_kind.trim_end_matches("List"), "apiVersion": c.api_version,
                             "metadata": {"resourceVersion": self.rv.to_string()}});
        if initial_end {
            obj["metadata"]["annotations"] = json!({INITIAL_EVENTS_END: "true"});
        }
        event("BOOKMARK", &obj)
    }

    /// A watch's initial events: every object of `path` now, then the
    /// bookmark that ends them.
    fn initial_events(&self, path: &str) -> Vec<String> {
        let objects = self.collections[path].objects.values().map(|obj| event("ADDED", obj));
        objects.chain([self.bookmark(path, true)]).collect()
    }
}

/// The key objects are stored and listed by.
fn key(obj: &Value) -> String {
    let name = obj["metadata"]["name"].as_str().expect("a name");
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// One watch event: a line of JSON.
fn event(kind: &str, obj: &Value) -> String {
    format!("{}\n", json!({"type": kind, "object": obj}))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// A kubeconfig pointing at the server on `port` of 127.0.0.1.
pub fn kubeconfig(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n\
         users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\ncurrent-context: c\n"
    )
}

/// A running server; dropped, it closes its listener and every connection,
/// so nothing of it keeps a test's network namespace alive.
pub struct Server {
    pub port: u16,
    cluster: Arc<Mutex<Cluster>>,
}

impl Server {
    pub fn cluster(&self) -> MutexGuard<'_, Cluster> {
        lock(&self.cluster)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut c = lock(&self.cluster);
        c.stopped = true;
        c.set_down(true);
    }
}

/// How often the listener looks whether the server was stopped.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// Serves `cluster` on `listener` (made wherever the caller needs it, a
/// network namespace for instance) from background threads, one per
/// connection.
pub fn serve(listener: TcpListener, cluster: Cluster) -> Server {
    let cluster = Arc::new(Mutex::new(cluster));
    let port = listener.local_addr().unwrap().port();
    // Non-blocking, so that the thread notices the server is stopped.
    listener.set_nonblocking(true).unwrap();
    let accepting = cluster.clone();
    std::thread::spawn(move || {
        while !lock(&accepting).stopped {
            match listener.accept() {
                Ok((conn, _)) if conn.set_nonblocking(false).is_ok() => {
                    let cluster = accepting.clone();
                    std::thread::spawn(move || connection(conn, &cluster));
                }
                _ => std::thread::sleep(ACCEPT_POLL),
            }
        }
    });
    Server { port, cluster }
}

/// The cluster, also after a test failed holding it: its threads still
/// have to wind down.
fn lock(cluster: &Mutex<Cluster>) -> MutexGuard<'_, Cluster> {
    cluster.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Answers the requests of one keep-alive connection until it closes.
fn connection(mut conn: TcpStream, cluster: &Mutex<Cluster>) {
    let Ok(mut reader) = conn.try_clone().map(BufReader::new) else { return };
    let id = {
        let mut c = lock(cluster);
        c.next_connection += 1;
        let id = c.next_connection;
        match conn.try_clone() {
            Ok(clone) => c.connections.insert(id, clone),
            Err(_) => return,
        };
        id
    };
    while let Some(target) = read_request(&mut reader) {
        if !answer(&mut conn, cluster, target).unwrap_or(false) {
            break;
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
    lock(cluster).connections.remove(&id);
}

/// The next request's method and target; its headers and body are skipped.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, String)> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|&n| n > 0)?;
    let mut words = line.split_whitespace();
    let (method, target) = (words.next()?.to_owned(), words.next()?.to_owned());
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok().filter(|&n| n > 0)?;
        if header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    io::copy(&mut reader.by_ref().take(length), &mut io::sink()).ok()?;
    Some((method, target))
}

/// What a request asks, as far as the server implements it.
enum Ask {
    List {
        limit: Option<usize>,
        token: Option<String>,
    },
    /// `initial`: the collection's state first (`sendInitialEvents`).
    Watch {
        from: u64,
        timeout: Duration,
        bookmarks: bool,
        initial: bool,
    },
}

fn parse(params: &BTreeMap<String, String>) -> Result<Ask, String> {
    let get = |k: &str| params.get(k).map(String::as_str);
    let implemented: &[&str] = if is_watch(params) {
        &[
            "watch",
            "resourceVersion",
            "timeoutSeconds",
            "allowWatchBookmarks",
            "sendInitialEvents",
            "resourceVersionMatch",
        ]
    } else {
        &["limit", "continue"]
    };
    if let Some(k) = params.keys().find(|k| !implemented.contains(&k.as_str())) {
        return Err(format!("the fake API server does not implement `{k}` here"));
    }
    if !is_watch(params) {
        let limit = get("limit").map(|l| l.parse().map_err(|_| format!("limit {l}"))).transpose()?;
        return Ok(Ask::List { limit, token: get("continue").map(str::to_owned) });
    }
    let initial = get("sendInitialEvents") == Some("true");
    let bookmarks = get("allowWatchBookmarks") == Some("true");
    if initial && !(get("resourceVersionMatch") == Some("NotOlderThan") && bookmarks) {
        return Err("sendInitialEvents needs resourceVersionMatch=NotOlderThan and allowWatchBookmarks".into());
    }
    if !initial && get("resourceVersionMatch").is_some() {
        return Err("resourceVersionMatch is forbidden for watch".into());
    }
    let from = match get("resourceVersion").map(str::parse) {
        Some(Ok(rv)) if rv > 0 => rv,
        // Any state at least as new as "0": the one now.
        Some(Ok(0)) if initial => 0,
        // From "0" or nothing without sendInitialEvents the server sends
        // every object first: a list in disguise, which kube-rs never asks for.
        _ => return Err("a watch from no resourceVersion is not implemented".into()),
    };
    let timeout = match get("timeoutSeconds").map(str::parse) {
        None | Some(Ok(0)) => MIN_REQUEST_TIMEOUT,
        Some(Ok(s)) => Duration::from_secs(s),
        Some(Err(_)) => return Err("timeoutSeconds is not a number".into()),
    };
    Ok(Ask::Watch { from, timeout, bookmarks, initial })
}

fn is_watch(params: &BTreeMap<String, String>) -> bool {
    matches!(params.get("watch").map(String::as_str), Some("true" | "1"))
}

/// Answers one request; whether the connection may carry another.
fn answer(conn: &mut TcpStream, cluster: &Mutex<Cluster>, (method, target): (String, String)) -> io::Result<bool> {
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // One object: /api/v1/namespaces/NS/PLURAL/NAME, read from collection
    // /api/v1/PLURAL.
    let one = match path.strip_prefix("/api/v1/namespaces/").map(|r| r.split('/').collect::<Vec<_>>()).as_deref() {
        Some([ns, plural, name]) => Some((format!("/api/v1/{plural}"), format!("{ns}/{name}"))),
        _ => None,
    };
    let ask = parse(&params);
    let verb = match (&one, is_watch(&params)) {
        (Some(_), _) => "get",
        _ if path == VERSION => "get",
        (None, true) => "watch",
        (None, false) => "list",
    };
    let (index, delay) = {
        let mut c = lock(cluster);
        c.requests.push(Request { method, path: path.to_owned(), verb, params, code: None, bytes: 0 });
        (c.requests.len() - 1, c.delays.get(path).copied().unwrap_or_default())
    };
    // Slow to answer, as a server under load.
    std::thread::sleep(delay);
    let mut c = lock(cluster);
    let (code, body) = if c.down {
        (503, status(503, "ServiceUnavailable", "the API server is restarting"))
    } else if let Some((collection, key)) = one {
        match c.collections.get(collection.as_str()).map(|col| col.objects.get(&key)) {
            _ if !c.requests[index].params.is_empty() => {
                (400, status(400, "BadRequest", "the fake API server implements no parameters of a get"))
            }
            Some(Some(obj)) => (200, obj.clone()),
            _ => (404, status(404, "NotFound", &format!("{key} not found"))),
        }
    } else if path == VERSION {
        let (major, minor) = c.version;
        (
            200,
            json!({"major": major.to_string(), "minor": minor.to_string(), "gitVersion": format!("v{major}.{minor}.0")}),
        )
    } else if !c.collections.contains_key(path) {
        (404, status(404, "NotFound", "the server could not find the requested resource"))
    } else {
        match ask {
            Err(e) => (400, status(400, "BadRequest", &e)),
            Ok(Ask::List { limit, token }) => c.page(path, limit, token.as_deref()),
            // As kube-apiserver validates a watch's options with the gate off.
            Ok(Ask::Watch { initial: true, .. }) if !c.watch_list => (
                422,
                status(
                    422,
                    "Invalid",
                    "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is \
                     forbidden for watch unless the WatchList feature gate is enabled",
                ),
            ),
            Ok(Ask::Watch { from, timeout, bookmarks, initial }) => {
                let path = *c.collections.get_key_value(path).unwrap().0;
                return watch(conn, cluster, c, Watch { index, path, from, timeout, bookmarks, initial });
            }
        }
    };
    c.requests[index].code = Some(code);
    drop(c);
    let body = body.to_string();
    write!(
        conn,
        "HTTP/1.1 {code} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        reason(code),
        body.len()
    )?;
    lock(cluster).requests[index].bytes = body.len() as u64;
    Ok(true)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        410 => "Gone",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => unreachable!("the server answers no {code}"),
    }
}

struct Watch {
    index: usize,
    path: &'static str,
    from: u64,
    timeout: Duration,
    bookmarks: bool,
    /// The collection's state first, then the bookmark that ends it.
    initial: bool,
}

/// Streams a watch, one event per chunk, until its timeout (then it ends
/// cleanly, the connection kept) or a restart cuts it.
fn watch(conn: &mut TcpStream, cluster: &Mutex<Cluster>, mut c: MutexGuard<Cluster>, w: Watch) -> io::Result<bool> {
    conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")?;
    if w.from < c.compacted_before && !w.initial {
        c.requests[w.index].code = Some(410);
        let message = format!("too old resource version: {} ({})", w.from, c.compacted_before);
        drop(c);
        chunk(conn, &event("ERROR", &status(410, "Expired", &message)))?;
        conn.write_all(b"0\r\n\r\n")?;
        return Ok(true);
    }
    c.requests[w.index].code = Some(200);
    // What happened since `from`, then whatever happens while it is open:
    // both under one lock, so nothing is missed or sent twice.
    let backlog: Vec<String> = if w.initial {
        c.initial_events(w.path)
    } else {
        c.collections[w.path].history.iter().filter(|ch| ch.rv > w.from).map(|ch| ch.line.clone()).collect()
    };
    let (tx, rx) = mpsc::channel();
    c.watches.push((w.index, w.path, tx));
    let deadline = Instant::now() + c.max_watch.map_or(w.timeout, |max| max.min(w.timeout));
    drop(c);
    let sent = |line: &str| lock(cluster).requests[w.index].bytes += line.len() as u64;
    for line in backlog {
        chunk(conn, &line)?;
        sent(&line);
    }
    let mut next_mark = Instant::now() + BOOKMARK_EVERY;
    loop {
        let now = Instant::now();
        match rx.recv_timeout(deadline.min(next_mark).saturating_duration_since(now)) {
            Ok(line) => {
                chunk(conn, &line)?;
                sent(&line);
            }
            // Cut by a restart: no closing chunk, as a dying server sends none.
            Err(RecvTimeoutError::Disconnected) => return Ok(false),
            Err(RecvTimeoutError::Timeout) => {
                let ended = Instant::now() >= deadline;
                // Changes already pushed go first, so the mark covers them;
                // an ending watch takes no more from then on.
                let lines: Vec<String> = {
                    let mut c = lock(cluster);
                    if ended {
                        c.watches.retain(|(index, ..)| *index != w.index);
                    }
                    rx.try_iter().chain(w.bookmarks.then(|| c.bookmark(w.path, false))).collect()
                };
                for line in lines {
                    chunk(conn, &line)?;
                    sent(&line);
                }
                if ended {
                    conn.write_all(b"0\r\n\r\n")?;
                    return Ok(true);
                }
                next_mark = Instant::now() + BOOKMARK_EVERY;
            }
        }
    }
}

fn chunk(conn: &mut TcpStream, data: &str) -> io::Result<()> {
    write!(conn, "{:x}\r\n{data}\r\n", data.len())?;
    conn.flush()
}
