//! `deploy/`, read as Kubernetes would read it: every object strictly
//! parsed, and a container's environment resolved.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use na_agent::source::manifests;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
    #[serde(default)]
    images: Vec<Value>,
}

#[derive(Default)]
pub struct Objects {
    pub namespaces: Vec<Namespace>,
    pub service_accounts: Vec<ServiceAccount>,
    pub cluster_roles: Vec<ClusterRole>,
    pub bindings: Vec<ClusterRoleBinding>,
    pub config_maps: Vec<ConfigMap>,
    pub daemon_sets: Vec<DaemonSet>,
}

/// `value` as a `T`, refusing fields `T` does not have, as local mode does.
pub fn strict<T: DeserializeOwned + serde::Serialize>(what: &str, value: Value) -> T {
    manifests::strict(what, value).unwrap_or_else(|e| panic!("{e}"))
}

pub fn load() -> Objects {
    let dir = deploy_dir();
    let k: Kustomization =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap()).unwrap();
    let mut objects = Objects::default();
    for file in &k.resources {
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file} document {}: {e}", i + 1));
            let what = format!("{file} document {}", i + 1);
            match value["kind"].as_str().unwrap_or_default() {
                "Namespace" => objects.namespaces.push(strict(&what, value)),
                "ServiceAccount" => objects.service_accounts.push(strict(&what, value)),
                "ClusterRole" => objects.cluster_roles.push(strict(&what, value)),
                "ClusterRoleBinding" => objects.bindings.push(strict(&what, value)),
                "ConfigMap" => objects.config_maps.push(strict(&what, value)),
                "DaemonSet" => objects.daemon_sets.push(strict(&what, value)),
                other => panic!("{what}: unexpected kind {other:?}"),
            }
        }
    }
    objects
}

/// The container's environment, with what the downward API would give on
/// node `node-1` with addresses `host_ips` (comma-separated).
pub fn environment(c: &Container, config: &ConfigMap, host_ips: &str) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    if c.env_from.is_some() {
        env.extend(config.data.clone().unwrap_or_default());
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, e.value_from.as_ref().and_then(|v| v.field_ref.as_ref())) {
            (Some(v), _) => v.clone(),
            (None, Some(f)) => match f.field_path.as_str() {
                "spec.nodeName" => super::agent::NODE.into(),
                "status.hostIPs" => host_ips.into(),
                other => panic!("{}: downward API field {other} not understood by this test", e.name),
            },
            (None, None) => panic!("{}: no value", e.name),
        };
        env.insert(e.name.clone(), value);
    }
    env
}
