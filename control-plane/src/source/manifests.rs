//! The manifest source: a folder of multi-document YAML (or JSON) manifests,
//! watched for edits, new files and deletions.
//!
//! Each document is parsed on its own, so one broken document never hides the
//! others. A document that fails to parse or validate is reported with its
//! file, line, object and field, and the last good version of that object
//! stays in force: nothing is lost because of a bad edit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::{K8sObject, ObjectKind, ObjectRef, SourceEvent};
use crate::validate::validate;

/// Quiet time after a notification before rescanning (editors write in steps).
const SETTLE: Duration = Duration::from_millis(50);

/// A problem with one document of a manifest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestProblem {
    pub file: PathBuf,
    /// 1-based line where the document starts (or where the error is).
    pub line: usize,
    /// 1-based position of the document in its file.
    pub document: usize,
    pub object: Option<ObjectRef>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: document {}",
            self.file.display(),
            self.line,
            self.document
        )?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// Errors that stop the source itself (not problems in a manifest).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("manifest folder {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// The documents of one file: good objects, and problems (with the object
/// they concern when it could be identified).
#[derive(Debug, Default)]
pub struct ParsedFile {
    pub objects: Vec<K8sObject>,
    pub problems: Vec<ManifestProblem>,
    /// Objects whose document is broken: their last good version is kept.
    pub broken: Vec<ObjectRef>,
    /// A broken document whose object could not be identified.
    pub unidentified_broken: bool,
}

/// Splits a YAML stream into documents, with the 1-based line each starts on.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_separator = line.starts_with("---")
            && line[3..]
                .trim_start()
                .chars()
                .next()
                .is_none_or(|c| c == '#');
        if is_separator || line.trim_end() == "..." {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs
}

fn typed<T: DeserializeOwned>(value: serde_yaml::Value) -> Result<T, (Option<String>, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        (field, e.into_inner().to_string())
    })
}

fn str_at<'a>(value: &'a serde_yaml::Value, path: &[&str]) -> Option<&'a str> {
    let mut v = value;
    for key in path {
        v = v.get(key)?;
    }
    v.as_str()
}

/// Parses the text of one manifest file.
pub fn parse_manifest(file: &Path, text: &str) -> ParsedFile {
    let mut out = ParsedFile::default();
    let documents = split_documents(text);
    for (index, (line, doc)) in documents.into_iter().enumerate() {
        let problem =
            |line: usize, object: Option<ObjectRef>, field: Option<String>, message: String| {
                ManifestProblem {
                    file: file.to_path_buf(),
                    line,
                    document: index + 1,
                    object,
                    field,
                    message,
                }
            };
        let value: serde_yaml::Value = match serde_yaml::from_str(&doc) {
            Ok(v) => v,
            Err(e) => {
                let at = e.location().map_or(line, |l| line + l.line() - 1);
                out.problems
                    .push(problem(at, None, None, format!("invalid YAML: {e}")));
                out.unidentified_broken = true;
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        let (Some(api_version), Some(kind)) =
            (str_at(&value, &["apiVersion"]), str_at(&value, &["kind"]))
        else {
            out.problems.push(problem(
                line,
                None,
                Some("apiVersion/kind".into()),
                "missing".into(),
            ));
            out.unidentified_broken = true;
            continue;
        };
        let Some(object_kind) = ObjectKind::from_type(api_version, kind) else {
            let known = [
                "Namespace",
                "Node",
                "Pod",
                "Service",
                "EndpointSlice",
                "NetworkPolicy",
            ];
            if known.contains(&kind) {
                out.problems.push(problem(
                    line,
                    None,
                    Some("apiVersion".into()),
                    format!("{api_version:?} is not supported for kind {kind}"),
                ));
            }
            // Other kinds (Deployments, ConfigMaps...) are not Ferry's business.
            continue;
        };
        let name = str_at(&value, &["metadata", "name"])
            .unwrap_or_default()
            .to_string();
        let namespace = if object_kind.is_namespaced() {
            str_at(&value, &["metadata", "namespace"])
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let object_ref = (!name.is_empty()).then(|| ObjectRef::new(object_kind, namespace, name));
        let parsed = match object_kind {
            ObjectKind::Namespace => typed(value).map(|o| K8sObject::Namespace(Box::new(o))),
            ObjectKind::Node => typed(value).map(|o| K8sObject::Node(Box::new(o))),
            ObjectKind::Pod => typed(value).map(|o| K8sObject::Pod(Box::new(o))),
            ObjectKind::Service => typed(value).map(|o| K8sObject::Service(Box::new(o))),
            ObjectKind::EndpointSlice => {
                typed(value).map(|o| K8sObject::EndpointSlice(Box::new(o)))
            }
            ObjectKind::NetworkPolicy => {
                typed(value).map(|o| K8sObject::NetworkPolicy(Box::new(o)))
            }
        };
        let mut object = match parsed {
            Ok(o) => o,
            Err((field, message)) => {
                out.problems
                    .push(problem(line, object_ref.clone(), field, message));
                match object_ref {
                    Some(r) => out.broken.push(r),
                    None => out.unidentified_broken = true,
                }
                continue;
            }
        };
        default_namespace(&mut object);
        let field_problems = validate(&object);
        if field_problems.is_empty() {
            out.objects.push(object);
            continue;
        }
        for fp in field_problems {
            out.problems.push(problem(
                line,
                object_ref.clone(),
                Some(fp.field),
                fp.message,
            ));
        }
        match object_ref {
            Some(r) => out.broken.push(r),
            None => out.unidentified_broken = true,
        }
    }
    out
}

/// Namespaced objects written without a namespace live in `default`.
fn default_namespace(object: &mut K8sObject) {
    let meta = match object {
        K8sObject::Pod(o) => &mut o.metadata,
        K8sObject::Service(o) => &mut o.metadata,
        K8sObject::EndpointSlice(o) => &mut o.metadata,
        K8sObject::NetworkPolicy(o) => &mut o.metadata,
        K8sObject::Namespace(_) | K8sObject::Node(_) => return,
    };
    meta.namespace.get_or_insert_with(|| "default".into());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    objects: BTreeMap<ObjectRef, K8sObject>,
    problems: Vec<ManifestProblem>,
}

/// Incremental view of a manifest folder. [`ManifestSource::rescan`] re-reads
/// only files whose size or modification time changed and reports the object
/// changes as events.
#[derive(Debug)]
pub struct ManifestSource {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Which files define each object (the first by path wins).
    owners: HashMap<ObjectRef, BTreeSet<PathBuf>>,
    /// What has been reported downstream.
    published: HashMap<ObjectRef, K8sObject>,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn list_files(root: &Path, out: &mut Vec<(PathBuf, Stamp)>) -> Result<(), SourceError> {
    let io = |source| SourceError::Io {
        path: root.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(root).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        // Skip editor swap files and hidden files (`.foo.yaml.swp`, `.#foo`).
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // vanished while listing
        };
        if meta.is_dir() {
            list_files(&path, out)?;
        } else if is_manifest(&path) {
            out.push((
                path,
                Stamp {
                    modified: meta.modified().ok(),
                    len: meta.len(),
                },
            ));
        }
    }
    Ok(())
}

impl ManifestSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            files: BTreeMap::new(),
            owners: HashMap::new(),
            published: HashMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every problem currently known, in file order, including objects
    /// defined in more than one file.
    pub fn problems(&self) -> Vec<ManifestProblem> {
        let mut all: Vec<ManifestProblem> = self
            .files
            .values()
            .flat_map(|f| f.problems.iter().cloned())
            .collect();
        let mut duplicates: Vec<_> = self
            .owners
            .iter()
            .filter(|(_, files)| files.len() > 1)
            .collect();
        duplicates.sort();
        for (object, files) in duplicates {
            let mut files = files.iter();
            let Some(first) = files.next() else { continue };
            for other in files {
                all.push(ManifestProblem {
                    file: other.clone(),
                    line: 1,
                    document: 1,
                    object: Some(object.clone()),
                    field: None,
                    message: format!(
                        "also defined in {}; that definition is used",
                        first.display()
                    ),
                });
            }
        }
        all
    }

    /// The objects currently in force.
    pub fn objects(&self) -> impl Iterator<Item = &K8sObject> {
        self.published.values()
    }

    /// Re-reads changed files; returns the object changes and the problems
    /// found in the files that were re-read.
    pub fn rescan(&mut self) -> Result<(Vec<SourceEvent>, Vec<ManifestProblem>), SourceError> {
        let mut listed = Vec::new();
        list_files(&self.root, &mut listed)?;
        let listed: BTreeMap<PathBuf, Stamp> = listed.into_iter().collect();
        let mut affected: BTreeSet<ObjectRef> = BTreeSet::new();
        let mut new_problems = Vec::new();

        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !listed.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(state) = self.files.remove(&path) {
                for object in state.objects.into_keys() {
                    self.disown(&object, &path);
                    affected.insert(object);
                }
            }
        }

        for (path, stamp) in listed {
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    // Unreadable for now (permissions, half-written): keep what we had.
                    new_problems.push(ManifestProblem {
                        file: path.clone(),
                        line: 1,
                        document: 1,
                        object: None,
                        field: None,
                        message: format!("cannot read: {e}"),
                    });
                    continue;
                }
            };
            let parsed = parse_manifest(&path, &text);
            let previous = self.files.remove(&path);
            let mut objects: BTreeMap<ObjectRef, K8sObject> = parsed
                .objects
                .into_iter()
                .map(|o| (o.object_ref(), o))
                .collect();
            if let Some(prev) = &previous {
                // Keep the last good version of objects whose document broke;
                // if a broken document cannot be identified, keep them all.
                for (r, o) in &prev.objects {
                    let keep = parsed.unidentified_broken || parsed.broken.contains(r);
                    if keep && !objects.contains_key(r) {
                        objects.insert(r.clone(), o.clone());
                    }
                }
                for r in prev.objects.keys() {
                    if !objects.contains_key(r) {
                        self.disown(r, &path);
                        affected.insert(r.clone());
                    }
                }
            }
            for r in objects.keys() {
                self.owners
                    .entry(r.clone())
                    .or_default()
                    .insert(path.clone());
                affected.insert(r.clone());
            }
            new_problems.extend(parsed.problems.iter().cloned());
            self.files.insert(
                path,
                FileState {
                    stamp,
                    objects,
                    problems: parsed.problems,
                },
            );
        }

        let mut events = Vec::new();
        for r in affected {
            let winner = self
                .owners
                .get(&r)
                .and_then(|files| files.first())
                .and_then(|file| self.files.get(file))
                .and_then(|f| f.objects.get(&r));
            match winner {
                Some(object) => {
                    if self.published.get(&r) != Some(object) {
                        self.published.insert(r, object.clone());
                        events.push(SourceEvent::Apply(object.clone()));
                    }
                }
                None => {
                    if self.published.remove(&r).is_some() {
                        events.push(SourceEvent::Delete(r));
                    }
                }
            }
        }
        Ok((events, new_problems))
    }

    fn disown(&mut self, object: &ObjectRef, file: &Path) {
        if let Some(files) = self.owners.get_mut(object) {
            files.remove(file);
            if files.is_empty() {
                self.owners.remove(object);
            }
        }
    }

    /// Watches the folder until `events` is closed: an initial scan (always
    /// sent, even when empty, so the receiver knows the initial load is
    /// complete), then a rescan on every file-system notification and every
    /// `rescan` (some file systems send no notifications).
    pub async fn watch(
        mut self,
        events: mpsc::Sender<Vec<SourceEvent>>,
        rescan: Duration,
    ) -> Result<(), SourceError> {
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let notifier = wake.clone();
        let mut watcher =
            notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
                notifier.notify_one();
            })
            .map_err(|source| SourceError::Watch {
                path: self.root.clone(),
                source,
            })?;
        use notify::Watcher;
        watcher
            .watch(&self.root, notify::RecursiveMode::Recursive)
            .map_err(|source| SourceError::Watch {
                path: self.root.clone(),
                source,
            })?;
        let mut first = true;
        loop {
            match self.rescan() {
                Ok((batch, problems)) => {
                    for p in &problems {
                        tracing::warn!(problem = %p, "manifest rejected; the last good version is kept");
                    }
                    // The first batch is sent even when empty: it marks the
                    // initial load as complete.
                    if !batch.is_empty() || first {
                        first = false;
                        tracing::info!(changes = batch.len(), "manifests changed");
                        if events.send(batch).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "manifest scan failed; keeping the current objects")
                }
            }
            tokio::select! {
                _ = wake.notified() => tokio::time::sleep(SETTLE).await,
                _ = tokio::time::sleep(rescan) => {}
                _ = events.closed() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
"#;

    fn names(events: &[SourceEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                SourceEvent::Apply(o) => format!("+{}", o.object_ref()),
                SourceEvent::Delete(r) => format!("-{r}"),
            })
            .collect()
    }

    #[test]
    fn parses_every_document_and_defaults_the_namespace() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n# comment only\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        let parsed = parse_manifest(Path::new("x.yaml"), text);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(parsed.objects.len(), 1);
        assert_eq!(parsed.objects[0].object_ref().to_string(), "Pod default/a");
    }

    #[test]
    fn type_error_names_file_line_object_and_field() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports: [{port: eighty}]\n";
        let parsed = parse_manifest(Path::new("dir/a.yaml"), text);
        assert_eq!(parsed.objects.len(), 1, "the good document still applies");
        assert_eq!(parsed.problems.len(), 1);
        let msg = parsed.problems[0].to_string();
        assert!(
            msg.starts_with("dir/a.yaml:5: document 2 (Service shop/web): spec.ports[0].port: invalid type: string \"eighty\""),
            "{msg}"
        );
        assert_eq!(parsed.broken.len(), 1);
    }

    #[test]
    fn validation_problem_names_the_field() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 70000, targetPort: 8080}]\n";
        let parsed = parse_manifest(Path::new("s.yaml"), text);
        assert_eq!(
            parsed.problems[0].to_string(),
            "s.yaml:1: document 1 (Service default/web): spec.ports[0].port: 70000 is outside 1-65535"
        );
    }

    #[test]
    fn syntax_error_and_missing_kind_are_reported() {
        let parsed = parse_manifest(
            Path::new("b.yaml"),
            "a: [unclosed\n---\nmetadata: {name: x}\n",
        );
        assert_eq!(parsed.problems.len(), 2);
        assert!(
            parsed.problems[0].message.starts_with("invalid YAML"),
            "{}",
            parsed.problems[0]
        );
        assert_eq!(
            parsed.problems[1].to_string(),
            "b.yaml:3: document 2: apiVersion/kind: missing"
        );
        assert!(parsed.unidentified_broken);
    }

    #[test]
    fn unsupported_api_version_is_reported() {
        let parsed = parse_manifest(
            Path::new("c.yaml"),
            "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: x}\n",
        );
        assert_eq!(
            parsed.problems[0].to_string(),
            "c.yaml:1: document 1: apiVersion: \"discovery.k8s.io/v1beta1\" is not supported for kind EndpointSlice"
        );
    }

    #[test]
    fn rescan_reports_edits_additions_and_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, GOOD).unwrap();
        let mut source = ManifestSource::new(dir.path());
        let (events, problems) = source.rescan().unwrap();
        assert!(problems.is_empty());
        assert_eq!(names(&events), ["+Namespace shop", "+Service shop/web"]);

        // Nothing changed: nothing reported.
        assert!(source.rescan().unwrap().0.is_empty());

        // New file.
        let b = dir.path().join("sub").join("b.yml");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(&b, "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n").unwrap();
        assert_eq!(names(&source.rescan().unwrap().0), ["+Node n1"]);

        // Edit: the service's port changes, the namespace disappears.
        std::fs::write(
            &a,
            GOOD.replace("port: 80,", "port: 81,")
                .split("---")
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            names(&source.rescan().unwrap().0),
            ["-Namespace shop", "+Service shop/web"]
        );

        // Deletion.
        std::fs::remove_file(&b).unwrap();
        assert_eq!(names(&source.rescan().unwrap().0), ["-Node n1"]);
    }

    #[test]
    fn broken_edit_keeps_the_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, GOOD).unwrap();
        let mut source = ManifestSource::new(dir.path());
        source.rescan().unwrap();
        // The service document breaks; the namespace document is fine.
        std::fs::write(&a, GOOD.replace("port: 80,", "port: -1,")).unwrap();
        let (events, problems) = source.rescan().unwrap();
        assert!(events.is_empty(), "{:?}", names(&events));
        assert_eq!(problems.len(), 1);
        assert!(problems[0]
            .to_string()
            .contains("(Service shop/web): spec.ports[0].port: -1 is outside 1-65535"));
        assert_eq!(source.objects().count(), 2);
        assert_eq!(source.problems().len(), 1);

        // A syntax error hides which object the document was: keep everything.
        std::fs::write(&a, "apiVersion: v1\nkind: [\n").unwrap();
        let (events, problems) = source.rescan().unwrap();
        assert!(events.is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!(source.objects().count(), 2);

        // Fixed again: the service is updated, nothing was lost meanwhile.
        std::fs::write(&a, GOOD.replace("port: 80,", "port: 82,")).unwrap();
        let (events, problems) = source.rescan().unwrap();
        assert!(problems.is_empty());
        assert_eq!(names(&events), ["+Service shop/web"]);
        assert!(source.problems().is_empty());
    }

    #[test]
    fn duplicate_definitions_are_reported_and_the_first_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {v: a}}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {v: b}}\n",
        )
        .unwrap();
        let mut source = ManifestSource::new(dir.path());
        let (events, _) = source.rescan().unwrap();
        assert_eq!(events.len(), 1);
        let SourceEvent::Apply(K8sObject::Node(n)) = &events[0] else {
            panic!()
        };
        assert_eq!(n.metadata.labels.as_ref().unwrap()["v"], "a");
        let problems = source.problems();
        assert_eq!(problems.len(), 1);
        assert!(problems[0]
            .to_string()
            .contains("b.yaml:1: document 1 (Node n1): also defined in"));
        // Removing the winner promotes the other definition.
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        let (events, _) = source.rescan().unwrap();
        let SourceEvent::Apply(K8sObject::Node(n)) = &events[0] else {
            panic!()
        };
        assert_eq!(n.metadata.labels.as_ref().unwrap()["v"], "b");
    }
}
