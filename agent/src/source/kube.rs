//! The cluster as the API server shows it: watchers on Pods, Namespaces,
//! NetworkPolicies, Services and EndpointSlices in all namespaces, and on
//! both ClusterNetworkPolicy CRDs (upstream's and AWS's). kube-rs relists
//! after a 410 and backs off after errors; meanwhile the last state stays
//! enforced. Objects that vanished while a watch was down are found when
//! the relist completes. A CRD that is not installed is reported once and
//! counts as an empty collection; its watcher keeps looking for it.
//!
//! Each collection's initial state comes streamed in its watch where the
//! server can (Kubernetes 1.32 and later, WatchList on), so the server never
//! builds a list of it; in pages of [`LIST_PAGE`] otherwise, or once the
//! server refuses the stream. Bookmarks keep a resumed watch from relisting.
use std::collections::BTreeSet;

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{WatchStreamExt, watcher},
};
use na_policy::cluster_policy::{AWS_API_VERSION, KIND as CLUSTER_POLICY_KIND, UPSTREAM_API_VERSION};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::Sender;
use tracing::{info, warn};

use super::{Event, Kind, Object, ObjectKey};

/// What the watchers report.
#[derive(Debug)]
pub enum Update {
    Event(Event),
    /// A full list of this kind has been seen (first start or relist).
    Synced(Kind),
    /// A watch failed; it is retried with backoff.
    WatchError(Kind, String),
    /// The collection's CRD is not installed, or may not be read: nothing
    /// of it to enforce until it can (the watcher keeps looking).
    NotInstalled(Kind),
}

/// The verbs the watchers use on each collection: one list, then watches.
/// The DaemonSet's ClusterRole grants exactly these (checked by a test).
pub const VERBS: [&str; 2] = ["list", "watch"];

/// A collection the watchers read, in all namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collection {
    pub group: String,
    pub version: String,
    pub plural: String,
}

impl Collection {
    /// The collection's path on the API server.
    pub fn path(&self) -> String {
        match self.group.as_str() {
            "" => format!("/api/{}/{}", self.version, self.plural),
            group => format!("/apis/{group}/{}/{}", self.version, self.plural),
        }
    }
}

/// Each collection the watchers below read; the ClusterRole grants exactly
/// these (by group and resource).
pub fn watched_resources() -> Vec<Collection> {
    fn of<K: Resource<DynamicType = ()>>() -> ApiResource {
        ApiResource::erase::<K>(&())
    }
    let builtin = [of::<Namespace>(), of::<Pod>(), of::<NetworkPolicy>(), of::<Service>(), of::<EndpointSlice>()];
    let crds = cluster_policy_resources().map(|(_, r)| r);
    builtin
        .into_iter()
        .chain(crds)
        .map(|r| Collection { group: r.group, version: r.version, plural: r.plural })
        .collect()
}

/// The two ClusterNetworkPolicy CRDs, with the kind each one's objects are.
fn cluster_policy_resources() -> [(Kind, ApiResource); 2] {
    let resource = |api_version: &str| {
        let (group, version) = api_version.split_once('/').expect("a group's version");
        ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, CLUSTER_POLICY_KIND))
    };
    [
        (Kind::ClusterNetworkPolicy, resource(UPSTREAM_API_VERSION)),
        (Kind::AwsClusterNetworkPolicy, resource(AWS_API_VERSION)),
    ]
}

/// Objects per page of an initial list.
pub const LIST_PAGE: u32 = 500;
/// The first minor version of Kubernetes 1 whose API server streams a
/// watch's initial state unless told not to (WatchList: beta, on by default).
const STREAMS_SINCE: u32 = 32;

/// How the watchers get a collection's initial state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialList {
    /// Streamed in the watch (`sendInitialEvents`).
    Stream,
    /// Listed in pages, then watched.
    Pages,
}

/// [`InitialList::Stream`] where the server's version has it on by
/// default; pages where it does not, or where the version cannot be read.
pub async fn initial_list(client: &Client) -> InitialList {
    match client.apiserver_version().await {
        Ok(v) if streams(&v.major, &v.minor) => InitialList::Stream,
        Ok(v) => {
            info!(version = %v.git_version, "the API server predates streamed lists: listing in pages");
            InitialList::Pages
        }
        Err(e) => {
            warn!("reading the API server's version ({e}): listing in pages");
            InitialList::Pages
        }
    }
}

/// Whether Kubernetes `major`.`minor` (a minor may read `32+`) streams lists.
fn streams(major: &str, minor: &str) -> bool {
    let number = |s: &str| s.trim_end_matches(|c: char| !c.is_ascii_digit()).parse::<u32>().ok();
    match (number(major), number(minor)) {
        (Some(1), Some(minor)) => minor >= STREAMS_SINCE,
        (Some(major), _) => major > 1,
        _ => false,
    }
}

/// A client for the watchers, without kube-rs's default retry of 503s inside
/// the client (15 tries, sleeps doubling from 5 ms plus up to twice as much
/// jitter: 3 to 8 minutes in all). The watchers back off and retry themselves
/// (0.8 s doubling to 30 s); behind that retry an API outage would reach them,
/// and `na_watch_errors_total`, only minutes later, and a sleep begun during
/// it could keep the agent blind for minutes after the server is back.
pub fn client(mut config: kube::Config) -> kube::Result<Client> {
    config.default_retry = false;
    Client::try_from(config)
}

/// Starts the watchers, one per [`watched_resources`]; they run until `tx`
/// is closed. `tx` is bounded: a watcher whose updates are not taken waits,
/// and asks the API server for nothing meanwhile (the objects of a big list
/// wait in the server, not in the agent's memory).
pub fn spawn(client: Client, tx: Sender<Update>) {
    tokio::spawn(async move {
        let initial = initial_list(&client).await;
        let start = (&client, initial, &tx);
        start_watch::<Namespace>(start, Kind::Namespace, |o| Object::Namespace(Box::new(o)));
        start_watch::<Pod>(start, Kind::Pod, |o| Object::Pod(Box::new(o)));
        start_watch::<NetworkPolicy>(start, Kind::NetworkPolicy, |o| Object::NetworkPolicy(Box::new(o)));
        start_watch::<Service>(start, Kind::Service, |o| Object::Service(Box::new(o)));
        start_watch::<EndpointSlice>(start, Kind::EndpointSlice, |o| Object::EndpointSlice(Box::new(o)));
        for (kind, resource) in cluster_policy_resources() {
            let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
            tokio::spawn(watch(api, kind, cluster_policy, initial, tx.clone()));
        }
    });
}

/// A ClusterNetworkPolicy as the JSON its parser reads. The watch names
/// its type on every object, as the parser needs.
fn cluster_policy(o: DynamicObject) -> Object {
    Object::ClusterNetworkPolicy(Box::new(serde_json::to_value(o).unwrap_or_default()))
}

/// Whether `e` says the collection cannot be read at all: its CRD is not
/// installed (404), or the agent may not read it (403: a ClusterRole from
/// before the CRD was watched). Either is reported, not waited for: the
/// rest of the cluster is enforced meanwhile.
fn not_installed(e: &watcher::Error) -> bool {
    let api = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s,
        _ => return false,
    };
    matches!(api.code, 403 | 404)
}

/// Spawns the watcher of every `K` in the cluster.
fn start_watch<K>((client, initial, tx): (&Client, InitialList, &Sender<Update>), kind: Kind, wrap: fn(K) -> Object)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    tokio::spawn(watch(Api::<K>::all(client.clone()), kind, wrap, initial, tx.clone()));
}

/// Whether `e` is the server refusing a streamed initial list (WatchList
/// off: the request is invalid to it), not a failure to retry.
fn refuses_streaming(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if matches!(s.code, 400 | 422))
}

async fn watch<K>(api: Api<K>, kind: Kind, wrap: fn(K) -> Object, initial: InitialList, tx: Sender<Update>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut known: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut listed: BTreeSet<ObjectKey> = BTreeSet::new();
    let config = |initial| match initial {
        InitialList::Stream => watcher::Config::default().streaming_lists(),
        InitialList::Pages => watcher::Config::default().page_size(LIST_PAGE),
    };
    let mut initial = initial;
    let mut stream = watcher(api.clone(), config(initial)).default_backoff().boxed();
    let mut missing = false;
    while let Some(event) = stream.next().await {
        // Listed: it is installed (a relist starts with `Init`, which comes
        // before the list that fails).
        if matches!(event, Ok(watcher::Event::InitDone)) {
            missing = false;
        }
        if event.as_ref().is_err_and(not_installed) {
            // Reported once; the backoff keeps asking, quietly. A CRD
            // removed takes its objects with it.
            if !std::mem::replace(&mut missing, true) {
                let gone = std::mem::take(&mut known).into_iter().map(|k| Update::Event(Event::Deleted(k)));
                for u in gone.chain([Update::NotInstalled(kind)]) {
                    if tx.send(u).await.is_err() {
                        return;
                    }
                }
            }
            continue;
        }
        if initial == InitialList::Stream && event.as_ref().is_err_and(refuses_streaming) {
            info!(?kind, "the API server refuses streamed lists (WatchList off?): listing in pages");
            initial = InitialList::Pages;
            stream = watcher(api.clone(), config(initial)).default_backoff().boxed();
            continue;
        }
        let updates = match event {
            Ok(watcher::Event::Init) => {
                listed.clear();
                Vec::new()
            }
            Ok(watcher::Event::InitApply(o)) => {
                let obj = wrap(o);
                // Known at once: if this list fails part-way and the next one
                // no longer has it, it must be reported deleted then.
                known.extend(obj.key());
                listed.extend(obj.key());
                vec![Update::Event(Event::Applied(obj))]
            }
            Ok(watcher::Event::InitDone) => {
                let mut u: Vec<Update> =
                    known.difference(&listed).map(|k| Update::Event(Event::Deleted(k.clone()))).collect();
                known = std::mem::take(&mut listed);
                u.push(Update::Synced(kind));
                u
            }
            Ok(watcher::Event::Apply(o)) => {
                let obj = wrap(o);
                known.extend(obj.key());
                vec![Update::Event(Event::Applied(obj))]
            }
            Ok(watcher::Event::Delete(o)) => match wrap(o).key() {
                Some(key) => {
                    known.remove(&key);
                    vec![Update::Event(Event::Deleted(key))]
                }
                None => Vec::new(),
            },
            Err(e) => vec![Update::WatchError(kind, e.to_string())],
        };
        for u in updates {
            if tx.send(u).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_streamed_from_kubernetes_1_32_on() {
        for (major, minor, want) in [
            ("1", "32", true),
            ("1", "33+", true),
            ("1", "31", false),
            ("1", "27", false),
            ("2", "0", true),
            ("", "", false),
        ] {
            assert_eq!(streams(major, minor), want, "{major}.{minor}");
        }
    }
}
