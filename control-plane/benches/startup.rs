//! Start-up benchmark, as a process: the control plane (this process, run
//! as the binary runs it, from flags) loads a folder of manifests (10,000
//! pods in 100 namespaces, 1,000 services, 1,000 NetworkPolicies, written
//! as a user's manifests are: full pod specs), serves its first
//! configuration, and settles. Prints the time to the first configuration
//! (the `ferry_cp_revision` metric reaching 1) and the resident memory.
//!
//! Run (loopback only, inside a network namespace of its own):
//! `cargo bench -p ferry-control-plane --bench startup --no-run`, then
//! `unshare -n sh -c 'ip link set lo up && target/x86_64-unknown-linux-gnu/release/deps/startup-<hash>'`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_control_plane::app::App;
use ferry_control_plane::config::{Args, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The control plane binary's allocator, so that its memory is measured as
/// it runs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 100;
const SERVICES_PER_NAMESPACE: usize = 10;
const POLICIES_PER_NAMESPACE: usize = 10;
const ROLES: [&str; 3] = ["frontend", "api", "db"];
const LIMIT: Duration = Duration::from_secs(120);

/// One namespace's manifests: its pods as a Deployment's, with what a pod
/// manifest carries (image, resources, probes, env, volumes), its services
/// and its policies.
fn namespace(n: usize) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{n}\n  labels: {{team: t{}}}\n",
        n % 5
    );
    for p in 0..PODS_PER_NAMESPACE {
        let index = n * PODS_PER_NAMESPACE + p;
        let app = p % SERVICES_PER_NAMESPACE;
        let _ = write!(
            out,
            "---
apiVersion: v1
kind: Pod
metadata:
  name: app-{app}-7d4b9c8f6d-{p:05}
  namespace: ns-{n}
  uid: 0f0e0d0c-{index:04x}-4000-8000-00000000{index:04x}
  labels: {{app: app-{app}, role: {role}, pod-template-hash: 7d4b9c8f6d}}
  annotations: {{kubectl.kubernetes.io/restartedAt: \"2026-11-01T00:00:00Z\", prometheus.io/scrape: \"true\"}}
  ownerReferences:
  - {{apiVersion: apps/v1, kind: ReplicaSet, name: app-{app}-7d4b9c8f6d, uid: 1f0e0d0c-0000-4000-8000-000000000000, controller: true, blockOwnerDeletion: true}}
spec:
  nodeName: node-{node}
  serviceAccountName: app-{app}
  containers:
  - name: app
    image: registry.example.com/shop/app-{app}:1.2.3
    ports: [{{name: http, containerPort: 8080}}, {{name: metrics, containerPort: 9090}}]
    env: [{{name: LOG_LEVEL, value: info}}, {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
    resources: {{requests: {{cpu: 100m, memory: 128Mi}}, limits: {{memory: 256Mi}}}}
    readinessProbe: {{httpGet: {{path: /ready, port: http}}, periodSeconds: 5}}
    volumeMounts: [{{name: config, mountPath: /etc/app}}]
  volumes: [{{name: config, configMap: {{name: app-{app}}}}}]
status:
  phase: Running
  podIP: 10.{a}.{b}.{c}
  podIPs: [{{ip: 10.{a}.{b}.{c}}}]
  conditions: [{{type: Ready, status: \"True\"}}, {{type: ContainersReady, status: \"True\"}}]
",
            role = ROLES[p % 3],
            node = index % 100,
            a = 64 + index / 65_536,
            b = (index / 256) % 256,
            c = index % 256,
        );
    }
    for s in 0..SERVICES_PER_NAMESPACE {
        let service = n * SERVICES_PER_NAMESPACE + s;
        let _ = write!(
            out,
            "---
apiVersion: v1
kind: Service
metadata: {{name: app-{s}, namespace: ns-{n}}}
spec:
  clusterIP: 10.96.{}.{}
  selector: {{app: app-{s}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
",
            service / 256,
            service % 256
        );
    }
    for j in 0..POLICIES_PER_NAMESPACE {
        let egress = if j % 2 == 0 {
            "  - Egress\n  egress:\n  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {role: db}}}]\n    ports: [{port: 5432}]\n"
        } else {
            ""
        };
        let _ = write!(
            out,
            "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: policy-{j}, namespace: ns-{n}}}
spec:
  podSelector: {{matchLabels: {{app: app-{j}}}}}
  ingress:
  - from:
    - podSelector: {{matchLabels: {{role: frontend}}}}
    - namespaceSelector: {{matchLabels: {{team: t{team}}}}}
      podSelector: {{matchLabels: {{role: api}}}}
    ports: [{{port: 80}}, {{port: http}}]
  policyTypes:
  - Ingress
{egress}",
            team = (n + 1) % 5,
        );
    }
    out
}

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The control plane's revision, from its metrics endpoint.
async fn revision(metrics: std::net::SocketAddr) -> Option<f64> {
    let mut stream = tokio::net::TcpStream::connect(metrics).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find(|l| l.starts_with("ferry_cp_revision "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for n in 0..NAMESPACES {
        std::fs::write(dir.path().join(format!("ns-{n:03}.yaml")), namespace(n))?;
    }
    let bytes: u64 = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let baseline = rss();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let args = Args::try_parse_from([
        "ferry-control-plane",
        "--manifests",
        &dir.path().display().to_string(),
        "--listen",
        &listen,
        "--metrics-listen",
        &metrics.to_string(),
        "--log-format",
        "json",
    ])?;
    let config = Config::from_args(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (first, settled) = runtime.block_on(async {
        let started = Instant::now();
        let app = tokio::spawn(async move { App::build(config).await?.run().await });
        let deadline = started + LIMIT;
        let first = loop {
            if app.is_finished() {
                anyhow::bail!("the control plane stopped: {:?}", app.await);
            }
            if revision(metrics).await.is_some_and(|r| r >= 1.0) {
                break started.elapsed();
            }
            if Instant::now() > deadline {
                anyhow::bail!("no configuration within {LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        let settled = rss();
        app.abort();
        Ok((first, settled))
    })?;
    let objects =
        NAMESPACES * (1 + PODS_PER_NAMESPACE + SERVICES_PER_NAMESPACE + POLICIES_PER_NAMESPACE);
    println!(
        "\nFerry control plane start-up: {} pods, {} services, {} NetworkPolicies in {NAMESPACES} namespaces ({objects} objects, {:.1} MiB of YAML)",
        NAMESPACES * PODS_PER_NAMESPACE,
        NAMESPACES * SERVICES_PER_NAMESPACE,
        NAMESPACES * POLICIES_PER_NAMESPACE,
        bytes as f64 / 1048576.0
    );
    println!("start to first configuration      | {first:.2?}");
    println!(
        "resident memory, settled (3 s on)  | {:.1} MiB ({:.1} MiB before start)",
        settled as f64 / 1048576.0,
        baseline as f64 / 1048576.0
    );
    println!(
        "per object                         | {:.1} KiB",
        settled.saturating_sub(baseline) as f64 / 1024.0 / objects as f64
    );
    Ok(())
}
