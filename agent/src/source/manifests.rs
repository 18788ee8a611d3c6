//! Local mode: the cluster as a directory of YAML/JSON manifests (several
//! documents per file allowed, `kind: List` too), reloaded when the
//! directory changes.
//!
//! Bad input never loosens enforcement: a document that fails to parse or
//! validate keeps its object's last good version (found by the kind and name
//! it still names), a file that cannot be read or whose YAML breaks keeps
//! every object of it that cannot be read any more, and a directory that
//! cannot be read keeps everything. Only removing a document deletes its
//! object.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;
use sha1::{Digest, Sha1};
use thiserror::Error;

use super::{Event, Kind, Object, ObjectKey};

#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{file}: document {document}: {reason}")]
pub struct ManifestError {
    pub file: String,
    /// 1-based position of the document in the file.
    pub document: usize,
    pub reason: String,
}

/// Everything a directory holds, by key (a later file wins on duplicates).
pub type Snapshot = BTreeMap<ObjectKey, Entry>;

/// One object of a read.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The file it came from.
    pub file: Arc<str>,
    /// Of the document as parsed (its JSON form, keys sorted): equal
    /// digests, same object.
    pub digest: [u8; 20],
    /// The object, when this read parsed it; between reads the agent keeps
    /// only the file and digest (the compiler holds what policy needs; whole
    /// API objects were some 4.6 KB each).
    pub object: Option<Object>,
}

/// One read of the directory.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Snapshot,
    /// Bad documents, reported and skipped.
    pub errors: Vec<ManifestError>,
    /// What this read could not vouch for: see [`keep_last_good`].
    pub unreadable: Unreadable,
    /// Digest of the exact files read (names and bytes): whoever writes the
    /// directory can compute it too and so tell when the agent has applied
    /// what it wrote.
    pub revision: String,
    /// Files this read parsed: the others were unchanged since the read it
    /// followed.
    pub parsed: usize,
    /// What each file gave this read, for the next one.
    memo: BTreeMap<String, FileMemo>,
}

/// What one file gave a read: the next read takes an unchanged file's
/// objects from that read's result instead of parsing it again (parsing
/// is most of a read: 20 ms for a thousand pods).
#[derive(Clone, Debug)]
struct FileMemo {
    digest: [u8; 20],
    keys: Vec<ObjectKey>,
    errors: Vec<ManifestError>,
    broken: bool,
    invalid: BTreeSet<ObjectKey>,
}

/// Objects a read could not see, though they may still be there.
#[derive(Debug, Default)]
pub struct Unreadable {
    /// The directory itself.
    pub all: bool,
    /// Files not read at all, or whose YAML broke part-way (what followed
    /// the break is unknown).
    pub files: BTreeSet<String>,
    /// Objects named by documents that failed to validate.
    pub objects: BTreeSet<ObjectKey>,
}

/// `loaded`, with the last good version (from `previous`) of every object it
/// could not read.
pub fn keep_last_good(previous: &Loaded, mut loaded: Loaded) -> Loaded {
    for (key, entry) in &previous.objects {
        let unseen = loaded.unreadable.all
            || loaded.unreadable.objects.contains(key)
            || loaded.unreadable.files.contains(&*entry.file);
        if unseen && !loaded.objects.contains_key(key) {
            loaded.objects.insert(key.clone(), entry.clone());
        }
    }
    loaded
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file in `dir` (not recursing).
pub fn load_dir(dir: &Path) -> Loaded {
    load_dir_after(dir, &Loaded::default())
}

/// [`load_dir`], parsing only the files that changed since `previous` (a
/// read of the same directory, after [`keep_last_good`]).
pub fn load_dir_after(dir: &Path, previous: &Loaded) -> Loaded {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_manifest(p)).collect(),
        Err(e) => {
            let error = ManifestError { file: dir.display().to_string(), document: 0, reason: e.to_string() };
            let unreadable = Unreadable { all: true, ..Default::default() };
            return Loaded { errors: vec![error], unreadable, ..Default::default() };
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
                // The revision covers each file's name and its digest, so
                // the text is hashed once.
                let file_digest: [u8; 20] = Sha1::digest(text.as_bytes()).into();
                digest.update((base.len() as u64).to_le_bytes());
                digest.update(base.as_bytes());
                digest.update(file_digest);
                let memo = previous.memo.get(&name).filter(|m| m.digest == file_digest);
                match memo.and_then(|m| replay(&name, m, previous, &mut loaded)) {
                    Some(()) => {}
                    None => parse_file(&name, &text, file_digest, &mut loaded),
                }
            }
            Err(e) => {
                loaded.unreadable.files.insert(name.clone());
                loaded.errors.push(ManifestError { file: name, document: 0, reason: e.to_string() });
            }
        }
    }
    loaded.revision = hex::encode(digest.finalize());
    loaded
}

/// Adds to `loaded` what `file`, unchanged, gave the read `previous`; None
/// (nothing added) when that read has not all of it (another file's object
/// took one of its keys).
fn replay(file: &str, memo: &FileMemo, previous: &Loaded, loaded: &mut Loaded) -> Option<()> {
    let entries: Vec<(&ObjectKey, &Entry)> = memo
        .keys
        .iter()
        .map(|key| previous.objects.get(key).filter(|e| &*e.file == file).map(|e| (key, e)))
        .collect::<Option<_>>()?;
    for (key, entry) in entries {
        loaded.objects.insert(key.clone(), entry.clone());
    }
    loaded.errors.extend(memo.errors.iter().cloned());
    if memo.broken {
        loaded.unreadable.files.insert(file.to_owned());
    }
    loaded.unreadable.objects.extend(memo.invalid.iter().cloned());
    loaded.memo.insert(file.to_owned(), memo.clone());
    Some(())
}

/// Parses `file` into `loaded` and remembers what it gave.
fn parse_file(file: &str, text: &str, digest: [u8; 20], loaded: &mut Loaded) {
    let mut one = Loaded::default();
    parse_into(file, text, &mut one);
    let memo = FileMemo {
        digest,
        keys: one.objects.keys().cloned().collect(),
        errors: one.errors.clone(),
        broken: one.unreadable.files.contains(file),
        invalid: one.unreadable.objects.clone(),
    };
    loaded.objects.append(&mut one.objects);
    loaded.errors.append(&mut one.errors);
    loaded.unreadable.files.append(&mut one.unreadable.files);
    loaded.unreadable.objects.append(&mut one.unreadable.objects);
    loaded.memo.insert(file.to_owned(), memo);
    loaded.parsed += 1;
}

fn is_manifest(p: &Path) -> bool {
    p.is_file() && is_manifest_name(p)
}

/// Whether a path's name is one the agent reads: `.yaml`, `.yml` or `.json`,
/// and not a dotfile (editors' swap and lock files, hidden drafts). Changes
/// to any other file in the directory (a log written there) are ignored.
pub fn is_manifest_name(p: &Path) -> bool {
    let hidden = p.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
    !hidden && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

/// Parses the documents of one file (JSON is YAML too) into `loaded`.
pub fn parse_into(file: &str, text: &str, loaded: &mut Loaded) {
    let origin: Arc<str> = file.into();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let err = |reason: String| ManifestError { file: file.to_owned(), document: i + 1, reason };
        let value = match serde_json::Value::deserialize(doc) {
            Ok(serde_json::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                loaded.errors.push(err(format!("invalid YAML: {e}")));
                // A syntax error ends the stream: later documents cannot be
                // trusted, so whatever they held is kept as it was.
                loaded.unreadable.files.insert(file.to_owned());
                break;
            }
        };
        let items = match list_items(&value) {
            Some(items) => items.iter().enumerate().map(|(j, v)| (format!("items[{j}]: "), v.clone())).collect(),
            None => vec![(String::new(), value)],
        };
        for (at, value) in items {
            let named = raw_key(&value);
            let digest = Sha1::digest(value.to_string().as_bytes()).into();
            match object(value) {
                Ok(Some(obj)) => match obj.key() {
                    Some(key) => {
                        loaded.objects.insert(key, Entry { file: origin.clone(), digest, object: Some(obj) });
                    }
                    None => loaded.errors.push(err(format!("{at}metadata.name missing"))),
                },
                Ok(None) => {}
                Err(reason) => {
                    loaded.errors.push(err(format!("{at}{reason}")));
                    loaded.unreadable.objects.extend(named);
                }
            }
        }
    }
}

/// The items of a `kind: List` document, which `kubectl get -o yaml` writes.
fn list_items(value: &serde_json::Value) -> Option<&Vec<serde_json::Value>> {
    let is_list = value.get("apiVersion").and_then(|v| v.as_str()) == Some("v1")
        && value.get("kind").and_then(|k| k.as_str()) == Some("List");
    is_list.then(|| value.get("items").and_then(|i| i.as_array())).flatten()
}

/// The object a document names by its kind and metadata, valid or not.
fn raw_key(value: &serde_json::Value) -> Option<ObjectKey> {
    if is_cluster_policy(value) {
        return super::cluster_policy_key(value);
    }
    let field = |v: &serde_json::Value, name: &str| v.get(name).and_then(|f| f.as_str()).map(str::to_owned);
    let kind = match (field(value, "apiVersion")?.as_str(), field(value, "kind")?.as_str()) {
        ("v1", "Pod") => Kind::Pod,
        ("v1", "Namespace") => Kind::Namespace,
        ("networking.k8s.io/v1", "NetworkPolicy") => Kind::NetworkPolicy,
        ("v1", "Service") => Kind::Service,
        ("discovery.k8s.io/v1", "EndpointSlice") => Kind::EndpointSlice,
        _ => return None,
    };
    let meta = value.get("metadata")?;
    let name = field(meta, "name")?;
    let namespace = match kind {
        Kind::Namespace => String::new(),
        _ => field(meta, "namespace").unwrap_or_else(|| "default".into()),
    };
    Some(ObjectKey { kind, id: na_policy::ObjectRef::new(namespace, name) })
}

/// The object a document describes; `None` for kinds the agent ignores.
fn object(value: serde_json::Value) -> Result<Option<Object>, String> {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_owned();
    let api_version = value.get("apiVersion").and_then(|k| k.as_str()).unwrap_or_default().to_owned();
    let what = format!("{api_version} {kind}");
    if is_cluster_policy(&value) {
        // Checked field by field by the compiler, which names the field at
        // fault; an unknown peer there must fail closed, not be refused.
        return Ok(Some(Object::ClusterNetworkPolicy(Box::new(value))));
    }
    let object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Pod") => Object::Pod(Box::new(strict(&what, value)?)),
        ("v1", "Namespace") => Object::Namespace(Box::new(strict(&what, value)?)),
        ("networking.k8s.io/v1", "NetworkPolicy") => Object::NetworkPolicy(Box::new(strict(&what, value)?)),
        ("v1", "Service") => Object::Service(Box::new(strict(&what, value)?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => Object::EndpointSlice(Box::new(strict(&what, value)?)),
        ("v1", "List") => return Err("a List needs an items array".into()),
        (_, "") => return Err("no kind".into()),
        _ => return Ok(None),
    };
    Ok(Some(object))
}

fn is_cluster_policy(value: &serde_json::Value) -> bool {
    let field = |name: &str| value.get(name).and_then(|f| f.as_str()).unwrap_or_default();
    na_policy::ClusterPolicy::is_cluster_policy(field("apiVersion"), field("kind"))
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

/// The events that turn `old` into `new`, which gives its objects to them:
/// what `new` no longer holds is deleted, what it parsed differently from
/// `old` is applied. `new` keeps what the next read needs, files and
/// digests; the compiler holds the objects from then on.
pub fn diff(old: &Snapshot, new: &mut Snapshot) -> Vec<Event> {
    let mut events: Vec<Event> =
        old.keys().filter(|k| !new.contains_key(k)).map(|k| Event::Deleted(k.clone())).collect();
    for (key, entry) in new.iter_mut() {
        if let Some(object) = entry.object.take()
            && old.get(key).map(|o| o.digest) != Some(entry.digest)
        {
            events.push(Event::Applied(object));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Kind;

    const POD: &str =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {containers: []}\n";

    fn parse(text: &str) -> (Snapshot, Vec<ManifestError>) {
        let loaded = load("f.yaml", text);
        (loaded.objects, loaded.errors)
    }

    fn load(file: &str, text: &str) -> Loaded {
        let mut loaded = Loaded::default();
        parse_into(file, text, &mut loaded);
        loaded
    }

    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n";

    /// What the agent holds after reading `text` as f.yaml, having held
    /// `before` from it.
    fn reread(before: &str, text: &str) -> Snapshot {
        keep_last_good(&load("f.yaml", before), load("f.yaml", text)).objects
    }

    #[test]
    fn an_invalid_document_keeps_its_objects_last_good_version() {
        let good = format!("{POD}---\n{POLICY}");
        let both = load("f.yaml", &good).objects;
        assert_eq!(both.len(), 2);
        // The policy gains a misspelt field: refused, its last good version stays.
        let held = reread(&good, &format!("{POD}---\n{}", POLICY.replace("podSelector", "podSelecter")));
        assert_eq!(held, both);
        // Invalid YAML in the middle: what came before it is read anew, what
        // came after it is kept.
        let relabelled = POD.replace("app: a", "app: b");
        let held = reread(&good, &format!("{relabelled}---\nkind: [unclosed\n---\n{POLICY}"));
        assert_eq!(held.len(), 2);
        assert_eq!(held.values().next(), load("f.yaml", &relabelled).objects.values().next(), "the pod as now written");
        // Removing a document is what deletes its object.
        assert_eq!(reread(&good, POD).len(), 1);
        // A file that cannot be read, or a directory, keeps everything of it.
        let mut unreadable = Loaded::default();
        unreadable.unreadable.files.insert("f.yaml".into());
        assert_eq!(keep_last_good(&load("f.yaml", &good), unreadable).objects, both);
        let gone = Loaded { unreadable: Unreadable { all: true, ..Default::default() }, ..Default::default() };
        assert_eq!(keep_last_good(&load("f.yaml", &good), gone).objects, both);
        // Another file's errors keep nothing of this one's.
        let mut elsewhere = Loaded::default();
        elsewhere.unreadable.files.insert("g.yaml".into());
        assert!(keep_last_good(&load("f.yaml", &good), elsewhere).objects.is_empty());
    }

    #[test]
    fn list_documents_hold_their_items() {
        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}\n- {{apiVersion: v1, kind: Pod, metadata: {{name: b}}, spec: {{containers: 7}}}}\n",
            r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {}}}"#
        );
        let loaded = load("f.yaml", &list);
        assert_eq!(loaded.objects.keys().map(|k| k.kind).collect::<Vec<_>>(), [Kind::NetworkPolicy]);
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        assert!(loaded.errors[0].reason.starts_with("items[1]: v1 Pod:"), "{}", loaded.errors[0]);
        assert_eq!(loaded.unreadable.objects.len(), 1, "the bad item still names its object");
    }

    #[test]
    fn only_visible_yaml_and_json_files_are_manifests() {
        for name in ["a.yaml", "a.yml", "a.json", "dir/b.yaml"] {
            assert!(is_manifest_name(Path::new(name)), "{name}");
        }
        for name in ["agent.log", ".a.yaml", ".#a.yaml", "a.yaml~", "a.yaml.swp", "4913", ".a.yaml.swp"] {
            assert!(!is_manifest_name(Path::new(name)), "{name}");
        }
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
    fn a_read_after_another_parses_only_changed_files_and_sees_what_a_fresh_read_sees() {
        let dir = std::env::temp_dir().join(format!("na-manifests-memo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let other = POD.replace("name: a,", "name: b,");
        let invalid = POD.replace("spec:", "spce:").replace("name: a,", "name: c,");
        let two = format!("{POD}---\n{other}");
        let taken = format!("{POLICY}---\n{}", POD.replace("app: a", "app: z"));
        let broken = format!("{POD}---\n{invalid}---\nkind: [");
        // Each step's files; every read follows the previous step's.
        let steps: [&[(&str, &str)]; 7] = [
            &[("1.yaml", POD), ("2.yaml", POLICY)],
            // One file changes.
            &[("1.yaml", &two), ("2.yaml", POLICY)],
            // A later file takes a key of an unchanged earlier one, then lets it go.
            &[("1.yaml", &two), ("2.yaml", &taken)],
            &[("1.yaml", &two), ("2.yaml", POLICY)],
            // Broken YAML and an invalid document in a file that then stays as it is.
            &[("1.yaml", &broken), ("2.yaml", POLICY)],
            &[("1.yaml", &broken), ("2.yaml", POLICY), ("3.yaml", &other)],
            &[("2.yaml", POLICY)],
        ];
        let mut held = Loaded::default();
        let (mut parsed, mut events) = (Vec::new(), Vec::new());
        for files in steps {
            for entry in std::fs::read_dir(&dir).unwrap() {
                std::fs::remove_file(entry.unwrap().path()).unwrap();
            }
            for (name, text) in files {
                std::fs::write(dir.join(name), text).unwrap();
            }
            let mut fresh = keep_last_good(&held, load_dir(&dir));
            let mut after = keep_last_good(&held, load_dir_after(&dir, &held));
            let changes = diff(&held.objects, &mut fresh.objects);
            assert_eq!(diff(&held.objects, &mut after.objects), changes, "{files:?}");
            assert_eq!(after.objects, fresh.objects, "{files:?}");
            assert_eq!(after.errors, fresh.errors, "{files:?}");
            parsed.push(after.parsed);
            events.push(changes.len());
            held = after;
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(parsed, [2, 1, 1, 2, 1, 1, 0]);
        assert_eq!(events, [2, 1, 1, 1, 0, 0, 2], "events of each step");
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
        let (mut new, _) = parse(&POD.replace("app: a", "app: b"));
        let held = new.clone();
        let events = diff(&old, &mut new);
        assert!(matches!(events.as_slice(), [Event::Applied(Object::Pod(_))]));
        assert!(new.values().all(|e| e.object.is_none()), "the objects went into the events");
        // Parsed again, the same object is no change; the same text in
        // another layout neither.
        assert!(diff(&new, &mut held.clone()).is_empty());
        let (mut reflowed, _) = parse(&POD.replace("app: a", "app: b").replace("{name: a, ", "{ name: a,  "));
        assert!(diff(&held, &mut reflowed).is_empty());
        let gone = diff(&new, &mut Snapshot::new());
        assert!(matches!(gone.as_slice(), [Event::Deleted(ObjectKey { kind: Kind::Pod, .. })]));
    }
}
