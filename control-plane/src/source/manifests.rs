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
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::validate::validate;
use super::{K8sObject, ObjectKind, ObjectRef, SourceEvent, StoredObject};

/// The stamp standing for a file that has vanished (in `pending`).
const GONE: Stamp = Stamp {
    modified: None,
    len: u64::MAX,
};

/// Notifications this close together are handled by one scan.
const COALESCE: Duration = Duration::from_millis(20);

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

impl ManifestProblem {
    /// A problem with a whole file (or folder), not one of its documents.
    fn of_file(file: &Path, message: String) -> Self {
        Self {
            file: file.to_path_buf(),
            line: 1,
            document: 1,
            object: None,
            field: None,
            message,
        }
    }
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
    /// Objects of kinds Ferry does not read (`Deployment web`...).
    pub ignored: Vec<String>,
}

impl ParsedFile {
    /// A document is broken: its object's last good version is kept, or,
    /// when the document does not say which object it is, every object
    /// the file held.
    fn mark_broken(&mut self, object: Option<ObjectRef>) {
        match object {
            Some(r) => self.broken.push(r),
            None => self.unidentified_broken = true,
        }
    }
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
        read_document(file, line, index, value, &mut out);
    }
    out
}

/// The object a document names (`metadata.name`, and `metadata.namespace`
/// or `default` for namespaced kinds); `None` without a name.
fn object_ref_of(value: &serde_yaml::Value, kind: ObjectKind) -> Option<ObjectRef> {
    let name = str_at(value, &["metadata", "name"]).unwrap_or_default();
    if name.is_empty() {
        return None;
    }
    let namespace = if kind.is_namespaced() {
        str_at(value, &["metadata", "namespace"]).unwrap_or("default")
    } else {
        ""
    };
    Some(ObjectRef::new(
        kind,
        namespace.to_string(),
        name.to_string(),
    ))
}

/// One document of a manifest file (or one item of a `kind: List`):
/// typed, defaulted and validated into `out`.
fn read_document(
    file: &Path,
    line: usize,
    index: usize,
    value: serde_yaml::Value,
    out: &mut ParsedFile,
) {
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
    if value.is_null() {
        return;
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
        return;
    };
    // What `kubectl get -o yaml` writes: a list of objects. Each item is
    // read as a document of its own (at the list's line).
    if api_version == "v1" && kind == "List" {
        let items = match value.get("items") {
            None | Some(serde_yaml::Value::Null) => Vec::new(),
            Some(serde_yaml::Value::Sequence(items)) => items.clone(),
            Some(_) => {
                out.problems.push(problem(
                    line,
                    None,
                    Some("items".into()),
                    "a List's items must be a sequence".into(),
                ));
                out.unidentified_broken = true;
                return;
            }
        };
        for item in items {
            read_document(file, line, index, item, out);
        }
        return;
    }
    // A kind Ferry reads, under an apiVersion it does not (or the kind
    // misspelt in case only): the document is broken, not someone else's
    // business. Ignoring it would delete the object's last good version,
    // a NetworkPolicy's among them.
    let meant = ObjectKind::from_kind(kind, true)
        .map(|k| (k, "apiVersion"))
        .or_else(|| ObjectKind::from_kind(kind, false).map(|k| (k, "kind")));
    let object_kind = match (ObjectKind::from_type(api_version, kind), meant) {
        (Some(object_kind), _) => object_kind,
        (None, Some((object_kind, field))) => {
            let object_ref = object_ref_of(&value, object_kind);
            let message = if field == "kind" {
                format!("{kind:?} is not a kind; {} is meant?", object_kind.as_str())
            } else {
                format!("{api_version:?} is not supported for kind {kind}")
            };
            out.problems.push(problem(
                line,
                object_ref.clone(),
                Some(field.into()),
                message,
            ));
            out.mark_broken(object_ref);
            return;
        }
        (None, None) => {
            // Other kinds (Deployments, ConfigMaps...) are not Ferry's
            // business; they are counted, so nothing is skipped silently.
            let name = str_at(&value, &["metadata", "name"]).unwrap_or("?");
            out.ignored.push(format!("{kind} {name}"));
            return;
        }
    };
    let object_ref = object_ref_of(&value, object_kind);
    let parsed = match object_kind {
        ObjectKind::Namespace => typed(value).map(|o| K8sObject::Namespace(Box::new(o))),
        ObjectKind::Node => typed(value).map(|o| K8sObject::Node(Box::new(o))),
        ObjectKind::Pod => typed(value).map(|o| K8sObject::Pod(Box::new(o))),
        ObjectKind::Service => typed(value).map(|o| K8sObject::Service(Box::new(o))),
        ObjectKind::EndpointSlice => typed(value).map(|o| K8sObject::EndpointSlice(Box::new(o))),
        ObjectKind::NetworkPolicy => typed(value).map(|o| K8sObject::NetworkPolicy(Box::new(o))),
    };
    let mut object = match parsed {
        Ok(o) => o,
        Err((field, message)) => {
            out.problems
                .push(problem(line, object_ref.clone(), field, message));
            out.mark_broken(object_ref);
            return;
        }
    };
    default_namespace(&mut object);
    super::defaults::apply(&mut object);
    let field_problems = validate(&object);
    if field_problems.is_empty() {
        out.objects.push(object);
        return;
    }
    for fp in field_problems {
        out.problems.push(problem(
            line,
            object_ref.clone(),
            Some(fp.field),
            fp.message,
        ));
    }
    out.mark_broken(object_ref);
}

/// Parses files (`path`, text) as [`parse_manifest`] does, each object
/// then trimmed to what translation reads (it was validated whole), on
/// every core; the results in the order of `files`.
/// A parsed file, with each object's kept form ([`StoredObject`], index
/// for index), made on the parsing threads too.
type Scanned = (ParsedFile, Vec<Result<StoredObject, serde_json::Error>>);

fn parse_files(files: &[(PathBuf, Stamp, String)]) -> Vec<Scanned> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let parse = |(path, _, text): &(PathBuf, Stamp, String)| -> Scanned {
        let mut parsed = parse_manifest(path, text);
        for object in &mut parsed.objects {
            super::kube::trim(object);
        }
        let stored = parsed.objects.iter().map(StoredObject::new).collect();
        (parsed, stored)
    };
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len());
    if workers <= 1 {
        return files.iter().map(parse).collect();
    }
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<Scanned>> = Vec::new();
    slots.resize_with(files.len(), || None);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(file) = files.get(i) else {
                            break;
                        };
                        done.push((i, parse(file)));
                    }
                    done
                })
            })
            .collect();
        for handle in handles {
            match handle.join() {
                Ok(done) => {
                    for (i, parsed) in done {
                        slots[i] = Some(parsed);
                    }
                }
                // As if parsed here: a panic is the caller's.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    slots.into_iter().flatten().collect()
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
    /// Trimmed to what translation reads, as the Kubernetes source trims
    /// (`kube::trim`), and kept compact ([`StoredObject`]); shared with
    /// `ManifestSource::published`.
    objects: BTreeMap<ObjectRef, Arc<StoredObject>>,
    problems: Vec<ManifestProblem>,
    /// Objects of kinds Ferry does not read.
    ignored: Vec<String>,
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
    published: HashMap<ObjectRef, Arc<StoredObject>>,
    /// Changed files not read yet because they may still be being written:
    /// the stamp last seen and since when it has not changed.
    pending: HashMap<PathBuf, (Stamp, Instant)>,
    /// Whether the folder is currently taken as unavailable (no manifest
    /// file at all while objects are in force); reported once.
    unavailable: bool,
}

/// When the watcher reads a changed file ([`ManifestSource::rescan_settled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settle {
    /// A changed file is read once its size and modification time have not
    /// changed for this long (editors and `kubectl` write in steps).
    pub quiet: Duration,
    /// A file that held objects and is now empty (zero bytes) is taken as
    /// emptied only once it has stayed empty this long: an in-place edit
    /// truncates first and writes after.
    pub emptied: Duration,
}

impl Default for Settle {
    fn default() -> Self {
        Self {
            quiet: Duration::from_millis(100),
            emptied: Duration::from_secs(2),
        }
    }
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    pub events: Vec<SourceEvent>,
    /// Problems found in the files read by this scan.
    pub problems: Vec<ManifestProblem>,
    /// Some changed files were left for a later scan (still settling).
    pub deferred: bool,
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

/// Reads a manifest file as UTF-8 text, with the file's stamp as it was
/// when the read finished (a writer may have changed it meanwhile).
fn read_text(path: &Path) -> std::io::Result<(String, Stamp)> {
    let bytes = std::fs::read(path)?;
    let meta = std::fs::metadata(path)?;
    let stamp = Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (line {line}, byte {at})"),
        )
    })?;
    Ok((text, stamp))
}

impl ManifestSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            files: BTreeMap::new(),
            owners: HashMap::new(),
            published: HashMap::new(),
            pending: HashMap::new(),
            unavailable: false,
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

    /// Objects in the folder of kinds Ferry does not read, by kind, with
    /// how many of each (`Deployment` → 2).
    pub fn ignored(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for entry in self.files.values().flat_map(|f| &f.ignored) {
            let kind = entry.split_once(' ').map_or(entry.as_str(), |(k, _)| k);
            *kinds.entry(kind.to_string()).or_insert(0) += 1;
        }
        kinds
    }

    /// How many objects are in force.
    pub fn object_count(&self) -> usize {
        self.published.len()
    }

    /// Bytes the source keeps of the objects in force.
    pub fn kept_bytes(&self) -> usize {
        self.published.values().map(|o| o.size()).sum()
    }

    /// Re-reads every changed file now; returns the object changes and the
    /// problems found in the files that were re-read. For a one-shot read
    /// of a folder nobody is writing (`ferryctl check`, tests).
    pub fn rescan(&mut self) -> Result<(Vec<SourceEvent>, Vec<ManifestProblem>), SourceError> {
        let scan = self.scan(None, Instant::now())?;
        Ok((scan.events, scan.problems))
    }

    /// Re-reads the changed files that have settled (see [`Settle`]); the
    /// others are left for a later scan ([`Scan::deferred`]). A folder with
    /// no manifest file at all while objects are in force is taken as
    /// unavailable (an unmounted volume, a checkout in progress), not as an
    /// empty cluster: nothing is deleted, and it is reported once. To empty
    /// the mesh, leave an empty manifest file.
    pub fn rescan_settled(&mut self, settle: Settle, now: Instant) -> Result<Scan, SourceError> {
        self.scan(Some(settle), now)
    }

    fn scan(&mut self, settle: Option<Settle>, now: Instant) -> Result<Scan, SourceError> {
        let mut listed = Vec::new();
        list_files(&self.root, &mut listed)?;
        let listed: BTreeMap<PathBuf, Stamp> = listed.into_iter().collect();
        let mut affected: BTreeSet<ObjectRef> = BTreeSet::new();
        let mut new_problems = Vec::new();
        let mut deferred = false;
        // A folder with no manifest file at all, before anything was read:
        // an unmounted volume as likely as an empty cluster. Nothing is
        // published (proxies stay without configuration, refusing
        // connections) until a file appears; an empty file says "no
        // objects".
        if settle.is_some() && listed.is_empty() && self.files.is_empty() {
            if !self.unavailable {
                self.unavailable = true;
                new_problems.push(ManifestProblem::of_file(
                    &self.root,
                    "no manifest file in the folder: waiting for one (an empty file says the cluster has no objects)".into(),
                ));
            }
            return Ok(Scan {
                events: Vec::new(),
                problems: new_problems,
                deferred: true,
            });
        }
        if settle.is_some() && listed.is_empty() && !self.published.is_empty() {
            if !self.unavailable {
                self.unavailable = true;
                new_problems.push(ManifestProblem::of_file(&self.root, format!(
                        "no manifest file left in the folder while {} objects are in force: taken as unavailable, the objects are kept (leave an empty file to remove them all)",
                        self.published.len()
                    )));
            }
            return Ok(Scan {
                events: Vec::new(),
                problems: new_problems,
                deferred: false,
            });
        }
        self.unavailable = false;
        let files = &self.files;
        self.pending
            .retain(|path, _| listed.contains_key(path) || files.contains_key(path));

        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !listed.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            // A file that vanished may come back at once (a save by
            // rename, a checkout): its objects go only once it has been
            // gone for the emptied grace.
            if let Some(settle) = settle {
                let since = match self.pending.get(&path) {
                    Some((seen, since)) if *seen == GONE => *since,
                    _ => {
                        self.pending.insert(path.clone(), (GONE, now));
                        now
                    }
                };
                if now.saturating_duration_since(since) < settle.emptied {
                    deferred = true;
                    continue;
                }
            }
            self.pending.remove(&path);
            if let Some(state) = self.files.remove(&path) {
                for object in state.objects.into_keys() {
                    self.disown(&object, &path);
                    affected.insert(object);
                }
            }
        }

        let mut read: Vec<(PathBuf, Stamp, String)> = Vec::new();
        for (path, stamp) in listed {
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                self.pending.remove(&path);
                continue;
            }
            if let Some(settle) = settle {
                let held_objects = self.files.get(&path).is_some_and(|f| !f.objects.is_empty());
                let needed = if stamp.len == 0 && held_objects {
                    settle.emptied
                } else {
                    settle.quiet
                };
                let since = match self.pending.get(&path) {
                    Some((seen, since)) if *seen == stamp => *since,
                    _ => {
                        self.pending.insert(path.clone(), (stamp, now));
                        now
                    }
                };
                if now.saturating_duration_since(since) < needed {
                    deferred = true;
                    continue;
                }
            }
            let text = match read_text(&path) {
                // Changed while being read: read it again once it settles.
                Ok((_, read_at)) if settle.is_some() && read_at != stamp => {
                    self.pending.insert(path.clone(), (read_at, now));
                    deferred = true;
                    continue;
                }
                Ok((text, _)) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    // Unreadable (permissions, not UTF-8): the last good
                    // objects stay; reported once, read again only when
                    // the file changes.
                    self.pending.remove(&path);
                    let problem = ManifestProblem::of_file(&path, format!("cannot read: {e}"));
                    new_problems.push(problem.clone());
                    let objects = self
                        .files
                        .remove(&path)
                        .map(|f| f.objects)
                        .unwrap_or_default();
                    self.files.insert(
                        path,
                        FileState {
                            stamp,
                            objects,
                            problems: vec![problem],
                            ignored: Vec::new(),
                        },
                    );
                    continue;
                }
            };
            self.pending.remove(&path);
            read.push((path, stamp, text));
        }
        // Parsing (YAML, typing, defaults, validation, trimming) is most of
        // reading a folder: the files are parsed on every core, then merged
        // one at a time, in order.
        let parsed_files = parse_files(&read);
        // This scan's objects, typed, by file: published as they are
        // (a kept object is typed again only when it is published later).
        let mut fresh: HashMap<(PathBuf, ObjectRef), K8sObject> = HashMap::new();
        for ((path, stamp, _), (parsed, stored)) in read.into_iter().zip(parsed_files) {
            let previous = self.files.remove(&path);
            let mut objects: BTreeMap<ObjectRef, Arc<StoredObject>> = BTreeMap::new();
            for (object, stored) in parsed.objects.into_iter().zip(stored) {
                let r = object.object_ref();
                match stored {
                    Ok(stored) => {
                        objects.insert(r.clone(), Arc::new(stored));
                        fresh.insert((path.clone(), r), object);
                    }
                    Err(e) => {
                        tracing::error!(object = %r, error = %e, "cannot keep an object: left out")
                    }
                }
            }
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
                    ignored: parsed.ignored,
                },
            );
        }

        let mut events = Vec::new();
        for r in affected {
            let winner = self
                .owners
                .get(&r)
                .and_then(|files| files.first())
                .and_then(|file| Some((file, self.files.get(file)?.objects.get(&r)?)));
            match winner {
                Some((file, object)) => {
                    let same = self
                        .published
                        .get(&r)
                        .is_some_and(|p| Arc::ptr_eq(p, object) || p == object);
                    if !same {
                        let typed = match fresh.remove(&(file.clone(), r.clone())) {
                            Some(typed) => typed,
                            None => match object.object() {
                                Ok(typed) => typed,
                                Err(e) => {
                                    tracing::error!(object = %r, error = %e, "a kept object does not read back: not published");
                                    continue;
                                }
                            },
                        };
                        self.published.insert(r, object.clone());
                        events.push(SourceEvent::Apply(typed));
                    }
                }
                None => {
                    if self.published.remove(&r).is_some() {
                        events.push(SourceEvent::Delete(r));
                    }
                }
            }
        }
        Ok(Scan {
            events,
            problems: new_problems,
            deferred,
        })
    }

    fn disown(&mut self, object: &ObjectRef, file: &Path) {
        if let Some(files) = self.owners.get_mut(object) {
            files.remove(file);
            if files.is_empty() {
                self.owners.remove(object);
            }
        }
    }

    /// Watches the folder until `events` is closed: an initial load (always
    /// sent, even when empty, so the receiver knows it is complete; sent
    /// once every file has settled), then a rescan on every file-system
    /// change and every `rescan` (some file systems send no
    /// notifications). Files are read once settled ([`Settle`]); reading a
    /// file is not itself a change (access events are ignored), so a file
    /// that cannot be read is reported once per change, not in a loop.
    pub async fn watch(
        mut self,
        events: mpsc::Sender<Vec<SourceEvent>>,
        rescan: Duration,
        settle: Settle,
    ) -> Result<(), SourceError> {
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let notifier = wake.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = &res {
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    return;
                }
            }
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
        let mut initial: Option<Vec<SourceEvent>> = Some(Vec::new());
        loop {
            let mut deferred = false;
            match self.rescan_settled(settle, Instant::now()) {
                Ok(scan) => {
                    for p in &scan.problems {
                        tracing::warn!(problem = %p, "manifest rejected; the last good version is kept");
                    }
                    deferred = scan.deferred;
                    let batch = match initial.as_mut() {
                        // The initial load goes out whole, once settled.
                        Some(load) => {
                            load.extend(scan.events);
                            if deferred {
                                None
                            } else {
                                initial.take()
                            }
                        }
                        None => (!scan.events.is_empty()).then_some(scan.events),
                    };
                    if let Some(batch) = batch {
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
            let next = if deferred { settle.quiet } else { rescan };
            tokio::select! {
                _ = wake.notified() => tokio::time::sleep(COALESCE).await,
                _ = tokio::time::sleep(next) => {}
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
    fn a_list_is_read_item_by_item_and_other_kinds_are_named() {
        // What `kubectl get svc,pods -o yaml` writes.
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: web, namespace: shop}\n  spec:\n    ports: [{port: 80}]\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: a, namespace: shop}\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: web, namespace: shop}\nmetadata: {resourceVersion: \"\"}\n";
        let parsed = parse_manifest(Path::new("list.yaml"), text);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let objects: Vec<String> = parsed
            .objects
            .iter()
            .map(|o| o.object_ref().to_string())
            .collect();
        assert_eq!(objects, ["Service shop/web", "Pod shop/a"]);
        assert_eq!(parsed.ignored, ["Deployment web"]);
        // Items are defaulted like any document.
        let K8sObject::Service(web) = &parsed.objects[0] else {
            panic!()
        };
        let port = &web.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
        // A list whose items are not a sequence is a problem, by name.
        let bad = parse_manifest(
            Path::new("bad.yaml"),
            "apiVersion: v1\nkind: List\nitems: 3\n",
        );
        assert_eq!(bad.problems.len(), 1);
        assert!(
            bad.problems[0]
                .to_string()
                .contains("items: a List's items must be a sequence"),
            "{}",
            bad.problems[0]
        );
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
            "c.yaml:1: document 1 (EndpointSlice default/x): apiVersion: \"discovery.k8s.io/v1beta1\" is not supported for kind EndpointSlice"
        );
    }

    #[test]
    fn a_known_kind_under_another_api_version_keeps_its_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("policy.yaml");
        let good = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                    metadata: {name: deny, namespace: shop}\nspec: {podSelector: {}}\n";
        std::fs::write(&a, good).unwrap();
        let mut source = ManifestSource::new(dir.path());
        assert_eq!(
            names(&source.rescan().unwrap().0),
            ["+NetworkPolicy shop/deny"]
        );

        // An apiVersion Ferry does not read: the policy stays, named.
        std::fs::write(
            &a,
            good.replace("networking.k8s.io/v1", "networking.k8s.io/v1beta1"),
        )
        .unwrap();
        let (events, problems) = source.rescan().unwrap();
        assert!(events.is_empty(), "{:?}", names(&events));
        assert!(
            problems[0].to_string().ends_with(
                "policy.yaml:1: document 1 (NetworkPolicy shop/deny): apiVersion: \
                 \"networking.k8s.io/v1beta1\" is not supported for kind NetworkPolicy"
            ),
            "{}",
            problems[0]
        );
        assert_eq!(source.object_count(), 1);

        // The kind misspelt in case: the same.
        std::fs::write(
            &a,
            good.replace("kind: NetworkPolicy", "kind: Networkpolicy"),
        )
        .unwrap();
        let (events, problems) = source.rescan().unwrap();
        assert!(events.is_empty(), "{:?}", names(&events));
        assert!(
            problems[0].to_string().ends_with(
                "policy.yaml:1: document 1 (NetworkPolicy shop/deny): kind: \
                 \"Networkpolicy\" is not a kind; NetworkPolicy is meant?"
            ),
            "{}",
            problems[0]
        );
        assert_eq!(source.object_count(), 1);

        // Another kind altogether is someone else's: the policy is gone.
        std::fs::write(&a, good.replace("kind: NetworkPolicy", "kind: ConfigMap")).unwrap();
        let (events, problems) = source.rescan().unwrap();
        assert!(problems.is_empty());
        assert_eq!(names(&events), ["-NetworkPolicy shop/deny"]);
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
        assert_eq!(source.object_count(), 2);
        assert_eq!(source.problems().len(), 1);

        // A syntax error hides which object the document was: keep everything.
        std::fs::write(&a, "apiVersion: v1\nkind: [\n").unwrap();
        let (events, problems) = source.rescan().unwrap();
        assert!(events.is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!(source.object_count(), 2);

        // Fixed again: the service is updated, nothing was lost meanwhile.
        std::fs::write(&a, GOOD.replace("port: 80,", "port: 82,")).unwrap();
        let (events, problems) = source.rescan().unwrap();
        assert!(problems.is_empty());
        assert_eq!(names(&events), ["+Service shop/web"]);
        assert!(source.problems().is_empty());
    }

    /// A scan `after` the given instant, for the settling tests.
    fn settled(source: &mut ManifestSource, at: Instant) -> Scan {
        source.rescan_settled(Settle::default(), at).unwrap()
    }

    #[test]
    fn files_are_read_once_settled_and_an_in_place_edit_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, GOOD).unwrap();
        let mut source = ManifestSource::new(dir.path());
        let t0 = Instant::now();
        // Just seen: not read yet.
        let scan = settled(&mut source, t0);
        assert!(scan.deferred && scan.events.is_empty());
        // Unchanged for longer than the quiet time: read.
        let scan = settled(&mut source, t0 + Duration::from_millis(150));
        assert!(!scan.deferred);
        assert_eq!(
            names(&scan.events),
            ["+Namespace shop", "+Service shop/web"]
        );

        // An in-place edit, caught between the truncation and the write:
        // the empty file is not taken as a deletion while it may still be
        // written, not even once it has been quiet for the usual time.
        std::fs::write(&a, "").unwrap();
        let t1 = t0 + Duration::from_secs(1);
        for after in [0, 150, 1_000] {
            let scan = settled(&mut source, t1 + Duration::from_millis(after));
            assert!(scan.events.is_empty(), "{:?}", names(&scan.events));
            assert!(scan.deferred);
        }
        assert_eq!(source.object_count(), 2);
        // The write lands: only the real change is reported.
        std::fs::write(&a, GOOD.replace("port: 80,", "port: 81,")).unwrap();
        let t2 = t1 + Duration::from_secs(2);
        assert!(settled(&mut source, t2).events.is_empty());
        let scan = settled(&mut source, t2 + Duration::from_millis(150));
        assert_eq!(names(&scan.events), ["+Service shop/web"]);

        // A file that really is emptied (and stays so) is, in the end.
        std::fs::write(&a, "").unwrap();
        let t3 = t2 + Duration::from_secs(1);
        settled(&mut source, t3);
        let scan = settled(&mut source, t3 + Duration::from_millis(2_100));
        assert_eq!(
            names(&scan.events),
            ["-Namespace shop", "-Service shop/web"]
        );
    }

    #[test]
    fn a_folder_with_no_manifest_left_is_unavailable_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, GOOD).unwrap();
        let mut source = ManifestSource::new(dir.path());
        let t0 = Instant::now();
        settled(&mut source, t0);
        settled(&mut source, t0 + Duration::from_millis(150));
        std::fs::remove_file(&a).unwrap();
        let scan = settled(&mut source, t0 + Duration::from_secs(1));
        assert!(scan.events.is_empty(), "{:?}", names(&scan.events));
        assert_eq!(scan.problems.len(), 1);
        assert!(
            scan.problems[0].message.contains("taken as unavailable"),
            "{}",
            scan.problems[0]
        );
        // Reported once, not on every scan.
        assert!(settled(&mut source, t0 + Duration::from_secs(3))
            .problems
            .is_empty());
        assert_eq!(source.object_count(), 2);
        // An empty file is how a folder says "no objects".
        std::fs::write(dir.path().join("empty.yaml"), "").unwrap();
        // a.yaml is gone for good once past the grace.
        assert!(settled(&mut source, t0 + Duration::from_secs(4))
            .events
            .is_empty());
        let scan = settled(&mut source, t0 + Duration::from_millis(6_500));
        assert_eq!(
            names(&scan.events),
            ["-Namespace shop", "-Service shop/web"]
        );
    }

    #[test]
    fn a_file_renamed_over_or_checked_out_again_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        std::fs::write(&a, GOOD).unwrap();
        std::fs::write(&b, "").unwrap();
        let mut source = ManifestSource::new(dir.path());
        let t0 = Instant::now();
        settled(&mut source, t0);
        settled(&mut source, t0 + Duration::from_millis(150));
        assert_eq!(source.object_count(), 2);
        // Gone for a moment (a save by rename, a checkout), then back.
        std::fs::remove_file(&a).unwrap();
        let scan = settled(&mut source, t0 + Duration::from_secs(1));
        assert!(scan.events.is_empty() && scan.deferred);
        std::fs::write(&a, GOOD).unwrap();
        settled(&mut source, t0 + Duration::from_millis(1_200));
        let scan = settled(&mut source, t0 + Duration::from_secs(2));
        assert!(scan.events.is_empty(), "{:?}", names(&scan.events));
        assert_eq!(source.object_count(), 2);
    }

    #[test]
    fn an_empty_folder_at_start_publishes_nothing_until_a_file_appears() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = ManifestSource::new(dir.path());
        let t0 = Instant::now();
        let scan = settled(&mut source, t0);
        assert!(scan.deferred, "the initial load must wait");
        assert_eq!(scan.problems.len(), 1);
        assert!(scan.problems[0].message.contains("waiting for one"));
        // Reported once.
        assert!(settled(&mut source, t0 + Duration::from_secs(1))
            .problems
            .is_empty());
        // An empty file: the cluster has no objects, said on purpose.
        std::fs::write(dir.path().join("empty.yaml"), "").unwrap();
        settled(&mut source, t0 + Duration::from_secs(2));
        let scan = settled(&mut source, t0 + Duration::from_millis(2_200));
        assert!(!scan.deferred && scan.events.is_empty());
    }

    #[test]
    fn an_unreadable_file_is_reported_once_and_keeps_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, GOOD).unwrap();
        let mut source = ManifestSource::new(dir.path());
        source.rescan().unwrap();
        let mut bytes = b"apiVersion: v1\nkind: Node\nmetadata: {name: \xff}\n".to_vec();
        bytes.extend_from_slice(GOOD.as_bytes());
        std::fs::write(&a, &bytes).unwrap();
        let (events, problems) = source.rescan().unwrap();
        assert!(events.is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].message,
            "cannot read: not UTF-8 text (line 3, byte 43)"
        );
        // Not read again until it changes; still a problem of the folder
        // (`ferryctl check` fails on it); the objects stay.
        let (events, problems) = source.rescan().unwrap();
        assert!(events.is_empty() && problems.is_empty());
        assert_eq!(source.problems().len(), 1);
        assert_eq!(source.object_count(), 2);
        std::fs::write(&a, GOOD).unwrap();
        let (_, problems) = source.rescan().unwrap();
        assert!(problems.is_empty());
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
