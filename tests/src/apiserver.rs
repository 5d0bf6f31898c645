//! A Kubernetes API server for tests, on loopback: enough of the real
//! protocol for list/watch clients and the TokenReview exchange.
//!
//! - Collections of the kinds Ferry watches, cluster-wide
//!   (`/api/v1/pods`...): `GET` lists with the collection's
//!   resourceVersion; `GET ?watch=1&resourceVersion=N` streams JSON watch
//!   events (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` when asked with
//!   `allowWatchBookmarks`) newer than N, then new ones as they happen,
//!   until `timeoutSeconds`. A resourceVersion older than the compaction
//!   point gets an `ERROR` event with a `410 Expired` Status, as etcd
//!   compaction causes on a real server.
//! - Test controls: [`ApiServer::close_watches`] drops every open watch,
//!   [`ApiServer::pause_watches`] holds new watch requests (so changes can
//!   happen while clients are disconnected), [`ApiServer::compact`],
//!   [`ApiServer::fail_watches`] answers the next watches with 500.
//! - Named objects (`/api/v1/namespaces/<ns>/<resource>/<name>`): get,
//!   create (POST to the collection), update (PUT).
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`: answers from the
//!   tokens registered with [`ApiServer::add_token`].
//! - `GET /api/v1/namespaces/<ns>/pods/<pod>/portforward?ports=P`: the
//!   WebSocket port-forward protocol (`v4.channel.k8s.io`, as kube-rs and
//!   kubectl speak it) to where [`ApiServer::forward`] says that pod's
//!   port is; `.../log`: the file [`ApiServer::pod_log`] names.
//! - `GET /version`: the server's version ([`ApiServer::set_version`],
//!   1.33 by default).
//! - `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`: allowed
//!   when a grant registered with [`ApiServer::grant`] matches the user
//!   (or one of its groups) and the resource attributes exactly.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::net::TaskGuard;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A collection of one kind, cluster-wide.
fn collection(api_version: &str, kind: &str) -> Option<&'static str> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => "/api/v1/namespaces",
        ("v1", "Node") => "/api/v1/nodes",
        ("v1", "Pod") => "/api/v1/pods",
        ("v1", "Service") => "/api/v1/services",
        ("v1", "Secret") => "/api/v1/secrets",
        ("v1", "ConfigMap") => "/api/v1/configmaps",
        ("discovery.k8s.io/v1", "EndpointSlice") => "/apis/discovery.k8s.io/v1/endpointslices",
        ("networking.k8s.io/v1", "NetworkPolicy") => "/apis/networking.k8s.io/v1/networkpolicies",
        _ => return None,
    })
}

/// `(apiVersion, kind)` of a collection path.
fn kind_of(path: &str) -> Option<(&'static str, &'static str)> {
    Some(match path {
        "/api/v1/namespaces" => ("v1", "Namespace"),
        "/api/v1/nodes" => ("v1", "Node"),
        "/api/v1/pods" => ("v1", "Pod"),
        "/api/v1/services" => ("v1", "Service"),
        "/api/v1/secrets" => ("v1", "Secret"),
        "/api/v1/configmaps" => ("v1", "ConfigMap"),
        "/apis/discovery.k8s.io/v1/endpointslices" => ("discovery.k8s.io/v1", "EndpointSlice"),
        "/apis/networking.k8s.io/v1/networkpolicies" => ("networking.k8s.io/v1", "NetworkPolicy"),
        _ => return None,
    })
}

#[derive(Debug, Clone)]
struct Logged {
    version: u64,
    collection: &'static str,
    kind: &'static str,
    object: Value,
}

/// How a TokenReview of a token is answered.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    pub username: String,
    pub audiences: Vec<String>,
    /// `authentication.kubernetes.io/pod-name` and `node-name` extras.
    pub pod: Option<(String, String)>,
    pub node: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    version: u64,
    compacted: u64,
    objects: BTreeMap<(&'static str, String, String), Value>,
    log: Vec<Logged>,
    failing_watches: u32,
    watch_requests: Vec<String>,
    lists: u32,
    tokens: BTreeMap<String, TokenIdentity>,
    reviews: u32,
    /// RBAC: who may do what.
    grants: Vec<Grant>,
    access_reviews: u32,
    /// `/version`: major and minor.
    server_version: Option<(u32, u32)>,
    /// Port-forwards: (namespace, pod, port) to a local address.
    forwards: BTreeMap<(String, String, u16), SocketAddr>,
    /// Pod logs: (namespace, pod) to a file.
    logs: BTreeMap<(String, String), std::path::PathBuf>,
}

impl TokenIdentity {
    /// A person's token, for the API server's own audience (no pod).
    pub fn user(username: &str) -> Self {
        Self {
            username: username.into(),
            audiences: vec![],
            pod: None,
            node: None,
        }
    }
}

/// One RBAC permission: `subject` (a user or a group) may `verb` the
/// `resource` of API `group` in `namespace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub subject: String,
    pub group: String,
    pub resource: String,
    pub verb: String,
    pub namespace: String,
}

impl Grant {
    /// What the status API requires (`ferry-mesh-viewer`'s first rule):
    /// `get meshstatus.ferry.dev` in `namespace`.
    pub fn mesh_status(subject: &str, namespace: &str) -> Self {
        Self {
            subject: subject.into(),
            group: "ferry.dev".into(),
            resource: "meshstatus".into(),
            verb: "get".into(),
            namespace: namespace.into(),
        }
    }
}

/// The running server; stops when dropped.
#[derive(Debug)]
pub struct ApiServer {
    pub address: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Bumped on every change (wakes watches).
    changed: watch::Sender<u64>,
    /// Bumped to close every open watch.
    generation: watch::Sender<u64>,
    paused: watch::Sender<bool>,
    _task: TaskGuard,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn respond(code: u16, body: &Value) -> http::Response<Body> {
    let mut response = http::Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl ApiServer {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
    }

    /// Serves on a listener made elsewhere (inside a lab namespace:
    /// `Netns::listen_tcp`); needs a Tokio runtime.
    pub fn start_on_std(listener: std::net::TcpListener) -> anyhow::Result<Self> {
        listener.set_nonblocking(true)?;
        Self::start_on(tokio::net::TcpListener::from_std(listener)?)
    }

    fn start_on(listener: tokio::net::TcpListener) -> anyhow::Result<Self> {
        let address = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            version: 100,
            ..State::default()
        }));
        let (changed, _) = watch::channel(0u64);
        let (generation, _) = watch::channel(0u64);
        let (paused, _) = watch::channel(false);
        let shared = Shared {
            state: state.clone(),
            changed: changed.clone(),
            generation: generation.clone(),
            paused: paused.clone(),
        };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        // Port-forwards upgrade to WebSocket.
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(Self {
            address,
            state,
            changed,
            generation,
            paused,
            _task: TaskGuard::new(task),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kubeconfig pointing at this server (no credentials).
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_for(&format!("http://{}", self.address))
    }

    /// A kubeconfig pointing at this server whose user presents `token`.
    pub fn kubeconfig_with_token(&self, token: &str) -> String {
        self.kubeconfig()
            .replace("  user: {}\n", &format!("  user: {{token: \"{token}\"}}\n"))
    }

    /// A kubeconfig for this server as `server` (a URL) reaches it.
    pub fn kubeconfig_for(&self, server: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"{server}\"}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n"
        )
    }

    /// Creates or replaces an object (from YAML or JSON); returns its new
    /// resourceVersion.
    pub fn apply(&self, manifest: &str) -> anyhow::Result<u64> {
        let mut object: Value = serde_yaml::from_str(manifest)?;
        let api_version = object["apiVersion"].as_str().unwrap_or("").to_string();
        let kind = object["kind"].as_str().unwrap_or("").to_string();
        let path = collection(&api_version, &kind)
            .with_context(|| format!("unsupported kind {api_version} {kind}"))?;
        let version = {
            let mut state = self.lock();
            state.version += 1;
            let version = state.version;
            let meta = object["metadata"].as_object_mut().context("no metadata")?;
            meta.insert("resourceVersion".into(), json!(version.to_string()));
            let namespace = meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let name = meta
                .get("name")
                .and_then(Value::as_str)
                .context("no name")?
                .to_string();
            let existed = state
                .objects
                .insert((path, namespace, name), object.clone())
                .is_some();
            state.log.push(Logged {
                version,
                collection: path,
                kind: if existed { "MODIFIED" } else { "ADDED" },
                object,
            });
            version
        };
        self.changed.send_replace(version);
        Ok(version)
    }

    /// Applies every document of a multi-document YAML text.
    pub fn apply_all(&self, manifests: &str) -> anyhow::Result<()> {
        for doc in manifests.split("\n---") {
            if doc.trim().lines().any(|l| l.starts_with("kind:")) {
                self.apply(doc)?;
            }
        }
        Ok(())
    }

    /// Deletes an object.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        let path = collection(api_version, kind).context("unsupported kind")?;
        let version = {
            let mut state = self.lock();
            let mut object = state
                .objects
                .remove(&(path, namespace.to_string(), name.to_string()))
                .with_context(|| format!("no {kind} {namespace}/{name}"))?;
            state.version += 1;
            let version = state.version;
            object["metadata"]["resourceVersion"] = json!(version.to_string());
            state.log.push(Logged {
                version,
                collection: path,
                kind: "DELETED",
                object,
            });
            version
        };
        self.changed.send_replace(version);
        Ok(())
    }

    /// Forgets history: watches from before now get `410 Gone`.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.compacted = state.version;
        state.log.clear();
    }

    /// Ends every open watch (clients reconnect).
    pub fn close_watches(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Holds new watch requests until [`ApiServer::resume_watches`].
    pub fn pause_watches(&self) {
        self.paused.send_replace(true);
        self.close_watches();
    }

    pub fn resume_watches(&self) {
        self.paused.send_replace(false);
    }

    /// The next `n` watch requests fail with 500.
    pub fn fail_watches(&self, n: u32) {
        self.lock().failing_watches = n;
    }

    /// The query strings of the watch requests so far.
    pub fn watch_requests(&self) -> Vec<String> {
        self.lock().watch_requests.clone()
    }

    /// How many list requests were served.
    pub fn lists(&self) -> u32 {
        self.lock().lists
    }

    /// The current resourceVersion.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Registers a token for TokenReview.
    pub fn add_token(&self, token: &str, identity: TokenIdentity) {
        self.lock().tokens.insert(token.to_string(), identity);
    }

    /// How many TokenReviews were made.
    pub fn reviews(&self) -> u32 {
        self.lock().reviews
    }

    /// Port-forwards to `port` of pod `namespace/pod` reach `target`.
    pub fn forward(&self, namespace: &str, pod: &str, port: u16, target: SocketAddr) {
        self.lock()
            .forwards
            .insert((namespace.into(), pod.into(), port), target);
    }

    /// The log of pod `namespace/pod` is the file `path`.
    pub fn pod_log(&self, namespace: &str, pod: &str, path: &std::path::Path) {
        self.lock()
            .logs
            .insert((namespace.into(), pod.into()), path.to_path_buf());
    }

    /// What `/version` answers (1.33 by default).
    pub fn set_version(&self, major: u32, minor: u32) {
        self.lock().server_version = Some((major, minor));
    }

    /// Adds an RBAC permission for SubjectAccessReview.
    pub fn grant(&self, grant: Grant) {
        self.lock().grants.push(grant);
    }

    /// How many SubjectAccessReviews were made.
    pub fn access_reviews(&self) -> u32 {
        self.lock().access_reviews
    }

    /// An object as stored, if any.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let path = collection(api_version, kind)?;
        self.lock()
            .objects
            .get(&(path, namespace.to_string(), name.to_string()))
            .cloned()
    }
}

#[derive(Debug, Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    changed: watch::Sender<u64>,
    generation: watch::Sender<u64>,
    paused: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn handle(&self, req: http::Request<Incoming>) -> http::Response<Body> {
        let path = req.uri().path().to_string();
        let params = query(req.uri());
        let method = req.method().clone();
        if path == "/apis/authentication.k8s.io/v1/tokenreviews" && method == http::Method::POST {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return respond(400, &status(400, "BadRequest", "unreadable body")),
            };
            return self.token_review(&body);
        }
        if path == "/version" && method == http::Method::GET {
            let (major, minor) = self.lock().server_version.unwrap_or((1, 33));
            return respond(
                200,
                &json!({
                    "major": major.to_string(),
                    "minor": minor.to_string(),
                    "gitVersion": format!("v{major}.{minor}.0"),
                    "gitCommit": "test",
                    "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.24",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                }),
            );
        }
        if path == "/apis/authorization.k8s.io/v1/subjectaccessreviews"
            && method == http::Method::POST
        {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return respond(400, &status(400, "BadRequest", "unreadable body")),
            };
            return self.access_review(&body);
        }
        if let Some((api_version, kind)) = kind_of(&path) {
            if method == http::Method::GET {
                let watching =
                    matches!(params.get("watch").map(String::as_str), Some("1" | "true"));
                return if watching {
                    self.watch(path_static(&path), api_version, kind, &params)
                        .await
                } else {
                    self.list(path_static(&path), api_version, kind)
                };
            }
        }
        // /api/v1/namespaces/<ns>/<resource>[/<name>]
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if let ["api", "v1", "namespaces", namespace, "pods", pod, sub] = parts.as_slice() {
            let (namespace, pod) = (namespace.to_string(), pod.to_string());
            match *sub {
                "portforward" => return self.portforward(req, &namespace, &pod, &params),
                "log" => return self.log(&namespace, &pod, &params),
                _ => {}
            }
        }
        if let ["api", "v1", "namespaces", namespace, resource, rest @ ..] = parts.as_slice() {
            let collection = format!("/api/v1/{resource}");
            let Some((api_version, kind)) = kind_of(&collection) else {
                return respond(404, &status(404, "NotFound", "no such resource"));
            };
            let collection = path_static(&collection);
            if rest.is_empty() && method == http::Method::GET {
                return self.list_namespaced(collection, api_version, kind, namespace, &params);
            }
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return respond(400, &status(400, "BadRequest", "unreadable body")),
            };
            return self.named(&method, collection, namespace, rest.first().copied(), &body);
        }
        respond(
            404,
            &status(404, "NotFound", &format!("{path} is not served")),
        )
    }

    fn list(&self, path: &'static str, api_version: &str, kind: &str) -> http::Response<Body> {
        let mut state = self.lock();
        state.lists += 1;
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((p, _, _), _)| *p == path)
            .map(|(_, o)| o.clone())
            .collect();
        respond(
            200,
            &json!({
                "kind": format!("{kind}List"),
                "apiVersion": api_version,
                "metadata": {"resourceVersion": state.version.to_string()},
                "items": items,
            }),
        )
    }

    async fn watch(
        &self,
        path: &'static str,
        api_version: &'static str,
        kind: &'static str,
        params: &BTreeMap<String, String>,
    ) -> http::Response<Body> {
        // Held while paused.
        let mut paused = self.paused.subscribe();
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                break;
            }
        }
        let from: u64 = params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = params.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        let timeout = params
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(60u64)
            .min(60);
        {
            let mut state = self.lock();
            state.watch_requests.push(format!(
                "{path}?{}",
                params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&")
            ));
            if state.failing_watches > 0 {
                state.failing_watches -= 1;
                return respond(500, &status(500, "InternalError", "injected failure"));
            }
            if from < state.compacted {
                let event = json!({"type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {from} ({})", state.compacted))});
                return respond(200, &event);
            }
        }
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        let shared = self.clone();
        tokio::spawn(async move {
            let mut changed = shared.changed.subscribe();
            let mut generation = shared.generation.subscribe();
            generation.borrow_and_update();
            let mut sent = from;
            let deadline = tokio::time::sleep(Duration::from_secs(timeout));
            tokio::pin!(deadline);
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                let events: Vec<(u64, Value)> = {
                    let state = shared.lock();
                    state
                        .log
                        .iter()
                        .filter(|l| l.collection == path && l.version > sent)
                        .map(|l| (l.version, json!({"type": l.kind, "object": l.object})))
                        .collect()
                };
                for (version, event) in events {
                    sent = version;
                    let line = Bytes::from(format!("{event}\n"));
                    if tx.send(Ok(Frame::data(line))).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = generation.changed() => return,
                    _ = &mut deadline => return,
                    _ = tick.tick(), if bookmarks => {
                        let version = shared.lock().version;
                        if version > sent {
                            // Nothing of ours happened up to `version`.
                            let has_pending = shared.lock().log.iter().any(|l| l.collection == path && l.version > sent);
                            if !has_pending {
                                sent = version;
                                let event = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": version.to_string()}}});
                                if tx.send(Ok(Frame::data(Bytes::from(format!("{event}\n"))))).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        });
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut response = http::Response::new(BodyExt::boxed(body));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }

    fn named(
        &self,
        method: &http::Method,
        collection: &'static str,
        namespace: &str,
        name: Option<&str>,
        body: &[u8],
    ) -> http::Response<Body> {
        let mut state = self.lock();
        match (method.as_str(), name) {
            ("GET", Some(name)) => {
                match state
                    .objects
                    .get(&(collection, namespace.to_string(), name.to_string()))
                {
                    Some(o) => respond(200, o),
                    None => respond(404, &status(404, "NotFound", &format!("{name} not found"))),
                }
            }
            ("POST", None) | ("PUT", Some(_)) => {
                let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
                    return respond(400, &status(400, "BadRequest", "not JSON"));
                };
                let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
                    return respond(422, &status(422, "Invalid", "metadata.name is required"));
                };
                let key = (collection, namespace.to_string(), name.clone());
                let exists = state.objects.contains_key(&key);
                if method == http::Method::POST && exists {
                    return respond(
                        409,
                        &status(409, "AlreadyExists", &format!("{name} already exists")),
                    );
                }
                if method == http::Method::PUT && !exists {
                    return respond(404, &status(404, "NotFound", &format!("{name} not found")));
                }
                state.version += 1;
                object["metadata"]["namespace"] = json!(namespace);
                object["metadata"]["resourceVersion"] = json!(state.version.to_string());
                state.objects.insert(key, object.clone());
                respond(if exists { 200 } else { 201 }, &object)
            }
            _ => respond(405, &status(405, "MethodNotAllowed", "not supported here")),
        }
    }

    /// The objects of one namespace, those matching an equality
    /// `labelSelector` (`k=v,k2=v2`) when one is given.
    fn list_namespaced(
        &self,
        collection: &'static str,
        api_version: &str,
        kind: &str,
        namespace: &str,
        params: &BTreeMap<String, String>,
    ) -> http::Response<Body> {
        let selector: Vec<(String, String)> = params
            .get("labelSelector")
            .map(|s| {
                s.replace("%3D", "=")
                    .replace("%2C", ",")
                    .replace("%2F", "/")
            })
            .unwrap_or_default()
            .split(',')
            .filter_map(|term| term.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let state = self.lock();
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((c, ns, _), _)| *c == collection && ns == namespace)
            .map(|(_, o)| o)
            .filter(|o| {
                selector
                    .iter()
                    .all(|(k, v)| o["metadata"]["labels"][k.as_str()] == v.as_str())
            })
            .cloned()
            .collect();
        respond(
            200,
            &json!({
                "apiVersion": api_version,
                "kind": format!("{kind}List"),
                "metadata": {"resourceVersion": state.version.to_string()},
                "items": items,
            }),
        )
    }

    /// A pod's log: the file registered for it, the last `tailLines`.
    fn log(
        &self,
        namespace: &str,
        pod: &str,
        params: &BTreeMap<String, String>,
    ) -> http::Response<Body> {
        let path = self
            .lock()
            .logs
            .get(&(namespace.to_string(), pod.to_string()))
            .cloned();
        let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
            return respond(
                404,
                &status(404, "NotFound", &format!("no log of {namespace}/{pod}")),
            );
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = params
            .get("tailLines")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(lines.len());
        let body = lines[lines.len().saturating_sub(tail)..].join("\n") + "\n";
        let mut response = http::Response::new(Full::new(Bytes::from(body)).boxed());
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        response
    }

    /// The WebSocket port-forward protocol: channel 0 carries the port's
    /// bytes, channel 1 its errors; each starts with the port number.
    fn portforward(
        &self,
        req: http::Request<Incoming>,
        namespace: &str,
        pod: &str,
        params: &BTreeMap<String, String>,
    ) -> http::Response<Body> {
        use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
        let port = params
            .get("ports")
            .map(|p| p.replace("%2C", ","))
            .and_then(|p| p.split(',').next().and_then(|p| p.parse::<u16>().ok()));
        let Some(port) = port else {
            return respond(
                400,
                &status(400, "BadRequest", "ports: one port is required"),
            );
        };
        let target = self
            .lock()
            .forwards
            .get(&(namespace.to_string(), pod.to_string(), port))
            .copied();
        let Some(target) = target else {
            return respond(
                404,
                &status(
                    404,
                    "NotFound",
                    &format!("pod {namespace}/{pod} has no port {port} here"),
                ),
            );
        };
        let Some(key) = req.headers().get(http::header::SEC_WEBSOCKET_KEY).cloned() else {
            return respond(400, &status(400, "BadRequest", "not a WebSocket upgrade"));
        };
        tokio::spawn(async move {
            let Ok(upgraded) = hyper::upgrade::on(req).await else {
                return;
            };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            pump(ws, port, target).await;
        });
        let mut response = http::Response::new(Full::new(Bytes::new()).boxed());
        *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("websocket"),
        );
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("Upgrade"),
        );
        if let Ok(accept) = http::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        headers.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("v4.channel.k8s.io"),
        );
        response
    }

    fn access_review(&self, body: &[u8]) -> http::Response<Body> {
        let Ok(review) = serde_json::from_slice::<Value>(body) else {
            return respond(400, &status(400, "BadRequest", "not JSON"));
        };
        let spec = &review["spec"];
        let text = |v: &Value| v.as_str().unwrap_or("").to_string();
        let mut subjects = vec![text(&spec["user"])];
        subjects.extend(spec["groups"].as_array().into_iter().flatten().map(&text));
        let attributes = &spec["resourceAttributes"];
        let mut state = self.lock();
        state.access_reviews += 1;
        let allowed = state.grants.iter().any(|g| {
            subjects.contains(&g.subject)
                && g.group == text(&attributes["group"])
                && g.resource == text(&attributes["resource"])
                && g.verb == text(&attributes["verb"])
                && g.namespace == text(&attributes["namespace"])
        });
        let mut out = review;
        out["status"] = if allowed {
            json!({"allowed": true, "reason": "granted by the test"})
        } else {
            json!({"allowed": false, "reason": "no RBAC rule allows it"})
        };
        respond(201, &out)
    }

    fn token_review(&self, body: &[u8]) -> http::Response<Body> {
        let Ok(review) = serde_json::from_slice::<Value>(body) else {
            return respond(400, &status(400, "BadRequest", "not JSON"));
        };
        let token = review["spec"]["token"].as_str().unwrap_or("");
        let asked: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        let mut state = self.lock();
        state.reviews += 1;
        let status = match state.tokens.get(token) {
            // No audiences registered: an authenticator that ignores them
            // (a webhook, static tokens) answers without any.
            Some(id) if id.audiences.is_empty() => json!({
                "authenticated": true,
                "user": {"username": id.username, "groups": ["system:serviceaccounts"]},
            }),
            Some(id) if asked.is_empty() || asked.iter().any(|a| id.audiences.contains(a)) => {
                let mut extra = serde_json::Map::new();
                if let Some((pod, uid)) = &id.pod {
                    extra.insert("authentication.kubernetes.io/pod-name".into(), json!([pod]));
                    extra.insert("authentication.kubernetes.io/pod-uid".into(), json!([uid]));
                }
                if let Some(node) = &id.node {
                    extra.insert(
                        "authentication.kubernetes.io/node-name".into(),
                        json!([node]),
                    );
                }
                json!({
                    "authenticated": true,
                    "user": {"username": id.username, "groups": ["system:serviceaccounts"], "extra": extra},
                    "audiences": asked,
                })
            }
            Some(_) => json!({"authenticated": false, "error": "token audiences do not match"}),
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        let mut out = review;
        out["status"] = status;
        respond(201, &out)
    }
}

/// The `'static` form of a collection path.
fn path_static(path: &str) -> &'static str {
    kind_of(path)
        .and_then(|(v, k)| collection(v, k))
        .unwrap_or("/")
}

/// Carries one port-forward: WebSocket frames (channel byte first) to and
/// from a TCP connection to the target.
async fn pump<S>(ws: tokio_tungstenite::WebSocketStream<S>, port: u16, target: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut sink, mut frames) = ws.split();
    let [lo, hi] = port.to_le_bytes();
    for channel in [0u8, 1] {
        if sink
            .send(Message::binary(vec![channel, lo, hi]))
            .await
            .is_err()
        {
            return;
        }
    }
    let tcp = match tokio::net::TcpStream::connect(target).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let mut error = vec![1u8];
            error.extend(format!("connecting to {target}: {e}").into_bytes());
            let _ = sink.send(Message::binary(error)).await;
            let _ = sink.close().await;
            return;
        }
    };
    let (mut from_target, mut to_target) = tcp.into_split();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            frame = frames.next() => match frame {
                Some(Ok(Message::Binary(bytes))) if bytes.len() > 1 && bytes[0] == 0 => {
                    if to_target.write_all(&bytes[1..]).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            read = from_target.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut frame = Vec::with_capacity(n + 1);
                    frame.push(0u8);
                    frame.extend_from_slice(&buffer[..n]);
                    if sink.send(Message::binary(frame)).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    let _ = sink.close().await;
}
