//! Local mode: the cluster as a directory of YAML/JSON manifests (several
//! documents per file allowed), reloaded when the directory changes.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sha1::{Digest, Sha1};
use thiserror::Error;

use super::{Event, Object, ObjectKey};

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{file}: document {document}: {reason}")]
pub struct ManifestError {
    pub file: String,
    /// 1-based position of the document in the file.
    pub document: usize,
    pub reason: String,
}

/// Everything a directory holds, by key (a later file wins on duplicates).
pub type Snapshot = BTreeMap<ObjectKey, Object>;

/// One read of the directory.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Snapshot,
    /// Bad documents, reported and skipped.
    pub errors: Vec<ManifestError>,
    /// Digest of the exact files read (names and bytes): whoever writes the
    /// directory can compute it too and so tell when the agent has applied
    /// what it wrote.
    pub revision: String,
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file in `dir` (not recursing).
pub fn load_dir(dir: &Path) -> Loaded {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_manifest(p)).collect(),
        Err(e) => {
            let error = ManifestError { file: dir.display().to_string(), document: 0, reason: e.to_string() };
            return Loaded { errors: vec![error], ..Default::default() };
        }
    };
    files.sort();
    let mut loaded = Loaded::default();
    let mut digest = Sha1::new();
    for file in files {
        let name = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let base = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                digest.update((base.len() as u64).to_le_bytes());
                digest.update(base.as_bytes());
                digest.update((text.len() as u64).to_le_bytes());
                digest.update(text.as_bytes());
                parse_into(&name, &text, &mut loaded.objects, &mut loaded.errors);
            }
            Err(e) => loaded.errors.push(ManifestError { file: name, document: 0, reason: e.to_string() }),
        }
    }
    loaded.revision = hex::encode(digest.finalize());
    loaded
}

fn is_manifest(p: &Path) -> bool {
    p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

/// Parses the documents of one file (JSON is YAML too).
pub fn parse_into(file: &str, text: &str, snapshot: &mut Snapshot, errors: &mut Vec<ManifestError>) {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let err = |reason: String| ManifestError { file: file.to_owned(), document: i + 1, reason };
        let value = match serde_json::Value::deserialize(doc) {
            Ok(serde_json::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(err(format!("invalid YAML: {e}")));
                // A syntax error ends the stream: later documents cannot be trusted.
                break;
            }
        };
        match object(value) {
            Ok(Some(obj)) => match obj.key() {
                Some(key) => {
                    snapshot.insert(key, obj);
                }
                None => errors.push(err("metadata.name missing".into())),
            },
            Ok(None) => {}
            Err(reason) => errors.push(err(reason)),
        }
    }
}

/// The object a document describes; `None` for kinds the agent ignores.
fn object(value: serde_json::Value) -> Result<Option<Object>, String> {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_owned();
    let api_version = value.get("apiVersion").and_then(|k| k.as_str()).unwrap_or_default().to_owned();
    let what = format!("{api_version} {kind}");
    let object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Pod") => Object::Pod(Box::new(strict(&what, value)?)),
        ("v1", "Namespace") => Object::Namespace(Box::new(strict(&what, value)?)),
        ("networking.k8s.io/v1", "NetworkPolicy") => Object::NetworkPolicy(Box::new(strict(&what, value)?)),
        ("v1", "List") => return Err("List documents are not supported; write one object per document".into()),
        (_, "") => return Err("no kind".into()),
        _ => return Ok(None),
    };
    Ok(Some(object))
}

/// Deserializes like the API server's strict field validation: a misspelt
/// field (`ingres:`) would otherwise vanish silently and change the policy's
/// meaning, so the whole object is refused.
pub fn strict<T: serde::de::DeserializeOwned + serde::Serialize>(
    what: &str,
    value: serde_json::Value,
) -> Result<T, String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| format!("{what}: {e}"))?;
    let known = serde_json::to_value(&typed).map_err(|e| format!("{what}: {e}"))?;
    match unknown_fields(&value, &known).as_slice() {
        [] => Ok(typed),
        fields => Err(format!("{what}: unknown field {}", fields.join(", "))),
    }
}

/// Paths (`spec.ingres`, `spec.ingress[0].form`) present in `given` but not in
/// `known`, the same document after a round trip through its typed form.
/// Explicit nulls are not unknown: they deserialize to an absent field.
pub fn unknown_fields(given: &serde_json::Value, known: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    fn walk(path: &str, given: &Value, known: &Value, out: &mut Vec<String>) {
        match (given, known) {
            (Value::Object(g), Value::Object(k)) => {
                for (name, value) in g {
                    let sub = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                    match k.get(name) {
                        Some(kv) => walk(&sub, value, kv, out),
                        None if value.is_null() => {}
                        None => out.push(sub),
                    }
                }
            }
            (Value::Array(g), Value::Array(k)) => {
                for (i, (gv, kv)) in g.iter().zip(k).enumerate() {
                    walk(&format!("{path}[{i}]"), gv, kv, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", given, known, &mut out);
    out
}

/// The events that turn `old` into `new`.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Vec<Event> {
    let mut events: Vec<Event> =
        old.keys().filter(|k| !new.contains_key(k)).map(|k| Event::Deleted(k.clone())).collect();
    events.extend(new.iter().filter(|(k, v)| old.get(k) != Some(v)).map(|(_, v)| Event::Applied(v.clone())));
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Kind;

    const POD: &str =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {containers: []}\n";

    fn parse(text: &str) -> (Snapshot, Vec<ManifestError>) {
        let (mut s, mut e) = (Snapshot::new(), Vec::new());
        parse_into("f.yaml", text, &mut s, &mut e);
        (s, e)
    }

    #[test]
    fn multi_document_yaml_and_json() {
        let text = format!(
            "{POD}---\n{}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ignored}}\n",
            r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {}}}"#
        );
        let (s, e) = parse(&text);
        assert!(e.is_empty(), "{e:?}");
        let kinds: Vec<Kind> = s.keys().map(|k| k.kind).collect();
        assert_eq!(kinds, [Kind::Pod, Kind::NetworkPolicy]);
    }

    #[test]
    fn bad_documents_are_reported_one_line_each_and_the_rest_kept() {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{namespace: x}}\n---\n{POD}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: b}}\nspec: {{containers: 7}}\n"
        );
        let (s, e) = parse(&text);
        assert_eq!(s.len(), 1);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!((e[0].document, e[0].reason.as_str()), (1, "metadata.name missing"));
        assert_eq!(e[1].document, 3);
        assert!(e[1].to_string().starts_with("f.yaml: document 3: v1 Pod:"), "{}", e[1]);
        let (_, e) = parse("kind: Pod\nmetadata: [unclosed\n");
        assert!(e[0].reason.starts_with("invalid YAML"), "{e:?}");
    }

    #[test]
    fn unknown_fields_refuse_the_object_and_name_the_path() {
        let policy =
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x, labels: null}\n";
        let (s, e) =
            parse(&format!("{policy}spec: {{podSelector: {{}}, ingress: [{{form: []}}], policyType: [Ingress]}}\n"));
        assert!(s.is_empty());
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[0].reason,
            "networking.k8s.io/v1 NetworkPolicy: unknown field spec.ingress[0].form, spec.policyType"
        );
        let (s, e) = parse(&format!("{policy}spec: {{podSelector: {{matchLabels: {{}}}}, ingress: [{{}}]}}\n"));
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.len(), 1);
        let (_, e) = parse(&POD.replace("spec:", "spce:"));
        assert_eq!(e[0].reason, "v1 Pod: unknown field spce");
    }

    #[test]
    fn revision_follows_the_bytes_read() {
        let dir = std::env::temp_dir().join(format!("na-manifests-rev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let revision = || load_dir(&dir).revision;
        let empty = revision();
        std::fs::write(dir.join("a.yaml"), POD).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
        let one = revision();
        assert_ne!(one, empty);
        assert_eq!(revision(), one, "same files, same revision");
        std::fs::write(dir.join("a.yaml"), POD.replace("app: a", "app: b")).unwrap();
        assert_ne!(revision(), one);
        std::fs::rename(dir.join("a.yaml"), dir.join("b.yaml")).unwrap();
        let renamed = revision();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_ne!(renamed, one);
        assert_eq!(load_dir(&dir).errors.len(), 1, "a missing directory is an error");
    }

    #[test]
    fn diff_yields_deletions_and_changes_only() {
        let (old, _) = parse(POD);
        let (new, _) = parse(&POD.replace("app: a", "app: b"));
        let events = diff(&old, &new);
        assert!(matches!(events.as_slice(), [Event::Applied(Object::Pod(_))]));
        assert!(diff(&new, &new).is_empty());
        let gone = diff(&new, &Snapshot::new());
        assert!(matches!(gone.as_slice(), [Event::Deleted(ObjectKey { kind: Kind::Pod, .. })]));
    }
}
