//! The Kubernetes source against an in-test API server that speaks the
//! list/watch protocol (JSON watch events, resourceVersions, bookmarks,
//! 410 Gone after compaction): the initial list, watch updates, a relist
//! in the middle of changes with nothing lost or repeated, reconnects
//! after failures; and the control plane binary with `--source
//! kubernetes` feeding a proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_control_plane::source::kube::KubeSource;
use ferry_control_plane::source::manifests::ManifestSource;
use ferry_control_plane::source::SourceEvent;
use ferry_control_plane::translate::{TranslateOptions, Translator};
use ferry_tests::apiserver::ApiServer;
use ferry_tests::{binary, http_get, wait_for, Process};
use tokio::sync::mpsc;

fn examples_dir() -> std::path::PathBuf {
    ferry_tests::repo_root().join("deploy/examples")
}

fn load_examples(server: &ApiServer) -> anyhow::Result<usize> {
    let mut count = 0;
    let mut files: Vec<_> = std::fs::read_dir(examples_dir())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for doc in text.split("\n---") {
            if doc.lines().any(|l| l.starts_with("kind:")) {
                server.apply(doc)?;
                count += 1;
            }
        }
    }
    Ok(count)
}

fn describe(events: &[SourceEvent]) -> Vec<String> {
    let mut out: Vec<String> = events
        .iter()
        .map(|e| match e {
            SourceEvent::Apply(o) => format!("apply {}", o.object_ref()),
            SourceEvent::Delete(r) => format!("delete {r}"),
        })
        .collect();
    out.sort();
    out
}

fn translated(events: Vec<SourceEvent>) -> Vec<String> {
    let mut t = Translator::new(TranslateOptions::default());
    let mut out: Vec<String> = t
        .apply(events)
        .into_iter()
        .map(|c| format!("{c:?}"))
        .collect();
    out.sort();
    out
}

/// Collects batches until `want` events arrived, then for `quiet` more to
/// catch anything extra.
async fn collect(
    rx: &mut mpsc::Receiver<Vec<SourceEvent>>,
    want: usize,
    quiet: Duration,
) -> anyhow::Result<Vec<SourceEvent>> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while events.len() < want {
        let batch = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("timed out with {:?}", describe(&events)))?
            .ok_or_else(|| anyhow::anyhow!("the source stopped"))?;
        events.extend(batch);
    }
    while let Ok(Some(batch)) = tokio::time::timeout(quiet, rx.recv()).await {
        events.extend(batch);
    }
    Ok(events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_watches_and_relists_without_losing_or_repeating() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let objects = load_examples(&server)?;
    let config = kube::Config::new(format!("http://{}", server.address).parse()?);
    let client = kube::Client::try_from(config)?;
    let (tx, mut rx) = mpsc::channel(16);
    let source = tokio::spawn(KubeSource::new(client).watch(tx));

    // The first batch is the whole cluster, and translates exactly as the
    // same manifests read from the folder.
    let initial = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await?
        .expect("initial batch");
    assert_eq!(initial.len(), objects, "{:?}", describe(&initial));
    let (from_folder, problems) = ManifestSource::new(examples_dir()).rescan()?;
    assert!(problems.is_empty());
    assert_eq!(translated(initial), translated(from_folder));

    // Watch: a change and a delete, each announced once.
    server.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: backend-3, namespace: shop, labels: {app: backend, version: v2}}\nspec: {nodeName: node-b, serviceAccountName: backend, containers: [{name: api, image: x, ports: [{name: api, containerPort: 9091}]}]}\nstatus: {phase: Running, podIP: 10.244.2.12, conditions: [{type: Ready, status: \"False\"}]}\n",
    )?;
    server.delete("v1", "Service", "shop", "search")?;
    let events = collect(&mut rx, 2, Duration::from_millis(500)).await?;
    assert_eq!(
        describe(&events),
        ["apply Pod shop/backend-3", "delete Service shop/search"]
    );
    // Bookmarks were asked for, and keep the watches' resourceVersion
    // current: after an idle spell a reconnect resumes from a recent one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let current = server.version();
    server.close_watches();
    wait_for("watches to come back", Duration::from_secs(10), || {
        let requests = server.watch_requests();
        let resumed = requests
            .iter()
            .rev()
            .take(6)
            .filter(|r| r.contains(&format!("resourceVersion={current}")))
            .count();
        Ok((resumed == 6).then_some(()))
    })?;
    assert!(server
        .watch_requests()
        .iter()
        .all(|r| r.contains("allowWatchBookmarks=true")));

    // A relist in the middle of changes: while the watches are down, an
    // object changes, one is deleted, one is added, and history is
    // compacted, so every watch comes back to 410 Gone and relists.
    let lists_before = server.lists();
    server.pause_watches();
    server.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: frontend, namespace: shop, labels: {app: frontend, tier: web}}\nspec: {nodeName: node-a, serviceAccountName: frontend, containers: [{name: web, image: x, ports: [{name: http, containerPort: 8080}]}]}\nstatus: {phase: Running, podIP: 10.244.1.10, conditions: [{type: Ready, status: \"True\"}]}\n",
    )?;
    server.delete("v1", "Pod", "shop", "db-0")?;
    server.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: extra, namespace: shop, labels: {app: backend}}\nspec: {nodeName: node-a, serviceAccountName: backend, containers: [{name: api, image: x, ports: [{name: api, containerPort: 9090}]}]}\nstatus: {phase: Running, podIP: 10.244.1.12, conditions: [{type: Ready, status: \"True\"}]}\n",
    )?;
    server.compact();
    server.resume_watches();
    let events = collect(&mut rx, 3, Duration::from_secs(1)).await?;
    assert_eq!(
        describe(&events),
        [
            "apply Pod shop/extra",
            "apply Pod shop/frontend",
            "delete Pod shop/db-0"
        ],
        "only what changed while disconnected, once"
    );
    assert!(server.lists() >= lists_before + 6, "every kind relisted");

    // Failing watches: the source retries with backoff and catches up.
    server.fail_watches(4);
    server.close_watches();
    server.delete("v1", "Pod", "shop", "extra")?;
    let events = collect(&mut rx, 1, Duration::from_millis(500)).await?;
    assert_eq!(describe(&events), ["delete Pod shop/extra"]);

    source.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_serves_a_cluster_from_the_api() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    load_examples(&server)?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig())?;
    // Addresses of its own (block 127.89): no other test's ephemeral
    // ports can take them.
    let listen = "127.89.0.1:15010".to_string();
    let metrics = "127.89.0.1:15014".to_string();
    let admin: std::net::SocketAddr = "127.89.1.1:15000".parse()?;
    let socks = "127.89.1.1:1080".to_string();
    let hbone = "127.89.1.1:15008".to_string();
    let _cp = Process::start_with_env(
        "control-plane",
        &binary("ferry-control-plane")?,
        &[
            "--source",
            "kubernetes",
            "--listen",
            &listen,
            "--metrics-listen",
            &metrics,
        ],
        &[("KUBECONFIG".into(), kubeconfig.display().to_string())],
        dir.path().join("control-plane.log"),
    )?;
    let _proxy = Process::start(
        "node-a",
        &binary("ferry-proxy")?,
        &[
            "--node",
            "node-a",
            "--control-plane",
            &format!("http://{listen}"),
            "--admin",
            &admin.to_string(),
            "--socks5",
            &socks,
            "--hbone",
            &hbone,
        ],
        dir.path().join("proxy.log"),
    )?;
    let logs = || {
        ["control-plane.log", "proxy.log"]
            .iter()
            .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let services = |dump: &serde_json::Value| -> BTreeSet<String> {
        dump["resources"]["service"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["key"].as_str().map(str::to_string))
            .collect()
    };
    let dump = tokio::task::block_in_place(|| {
        wait_for("the proxy's config", Duration::from_secs(30), || {
            let Ok((200, text)) = http_get(admin, "/config_dump") else {
                return Ok(None);
            };
            let dump: serde_json::Value = serde_json::from_str(&text)?;
            Ok((dump["ready"] == true).then_some(dump))
        })
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", logs()))?;
    assert!(services(&dump).contains("shop/backend"), "{dump}");
    assert!(services(&dump).contains("shop/api"), "{dump}");

    // A change in the API reaches the proxy.
    server.delete("v1", "Service", "shop", "api")?;
    tokio::task::block_in_place(|| {
        wait_for(
            "the delete to reach the proxy",
            Duration::from_secs(20),
            || {
                let (_, text) = http_get(admin, "/config_dump")?;
                let dump: serde_json::Value = serde_json::from_str(&text)?;
                Ok((!services(&dump).contains("shop/api")).then_some(()))
            },
        )
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", logs()))?;
    Ok(())
}
