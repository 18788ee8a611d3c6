//! The cluster as the API server shows it: watchers on Pods, Namespaces,
//! NetworkPolicies, Services and EndpointSlices in all namespaces. kube-rs relists after a 410 and backs
//! off after errors; meanwhile the last state stays enforced. Objects that
//! vanished while a watch was down are found when the relist completes.
use std::collections::BTreeSet;

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::Sender;

use super::{Event, Kind, Object, ObjectKey};

/// What the watchers report.
#[derive(Debug)]
pub enum Update {
    Event(Event),
    /// A full list of this kind has been seen (first start or relist).
    Synced(Kind),
    /// A watch failed; it is retried with backoff.
    WatchError(Kind, String),
}

/// The verbs the watchers use on each collection: one list, then watches.
/// The DaemonSet's ClusterRole grants exactly these (checked by a test).
pub const VERBS: [&str; 2] = ["list", "watch"];

/// (API group, resource) of each collection the watchers below read, all
/// namespaces; the ClusterRole grants exactly these.
pub fn watched_resources() -> [(String, String); 5] {
    fn of<K: Resource<DynamicType = ()>>() -> (String, String) {
        (K::group(&()).into_owned(), K::plural(&()).into_owned())
    }
    [of::<Namespace>(), of::<Pod>(), of::<NetworkPolicy>(), of::<Service>(), of::<EndpointSlice>()]
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
    tokio::spawn(watch(
        Api::<Namespace>::all(client.clone()),
        Kind::Namespace,
        |o| Object::Namespace(Box::new(o)),
        tx.clone(),
    ));
    tokio::spawn(watch(Api::<Pod>::all(client.clone()), Kind::Pod, |o| Object::Pod(Box::new(o)), tx.clone()));
    tokio::spawn(watch(
        Api::<NetworkPolicy>::all(client.clone()),
        Kind::NetworkPolicy,
        |o| Object::NetworkPolicy(Box::new(o)),
        tx.clone(),
    ));
    tokio::spawn(watch(
        Api::<Service>::all(client.clone()),
        Kind::Service,
        |o| Object::Service(Box::new(o)),
        tx.clone(),
    ));
    tokio::spawn(watch(
        Api::<EndpointSlice>::all(client),
        Kind::EndpointSlice,
        |o| Object::EndpointSlice(Box::new(o)),
        tx,
    ));
}

async fn watch<K>(api: Api<K>, kind: Kind, wrap: fn(K) -> Object, tx: Sender<Update>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut known: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut listed: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    while let Some(event) = stream.next().await {
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
