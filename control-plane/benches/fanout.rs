//! Fan-out benchmark: N simulated proxies, each a real delta stream (its
//! own gRPC connection over mutual TLS with its own node credential, on
//! loopback), against one control plane (the translator, the cache and
//! the config service with node-credential authentication, as the binary
//! wires them). Endpoint changes are applied one after the other; for each,
//! the time from the change reaching the translator to the last proxy's
//! ACK, and the bytes sent to all proxies.
//!
//! The control plane runs in this process; the proxies in a child process
//! (this binary again), so the control plane's CPU and RSS are this
//! process's own. Both share the machine's cores.
//!
//! Run (loopback only; inside a network namespace of its own):
//! `cargo bench -p ferry-control-plane --bench fanout --no-run`, then
//! `unshare -n sh -c 'ip link set lo up && target/x86_64-unknown-linux-gnu/release/deps/fanout-<hash> [N...]'`
//! (default N: 1000 5000).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_api::proto::config_discovery_client::ConfigDiscoveryClient;
use ferry_api::proto::DeltaRequest;
use ferry_control_plane::authn::Authenticator;
use ferry_control_plane::push::{ConfigCache, ConfigDiscoveryService};
use ferry_control_plane::source::{K8sObject, SourceEvent};
use ferry_control_plane::translate::{TranslateOptions, Translator};
use ferry_pki::Authority;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prost::Message;
use tokio::sync::mpsc;

/// The control plane binary's allocator, so that its memory is measured as
/// it runs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const TRUST_DOMAIN: &str = "cluster.local";
const SERVICES: usize = 200;
const PODS_PER_SERVICE: usize = 5;
const CHANGES: usize = 50;
/// Bounds of every phase: the bench stops by itself.
const SYNC_LIMIT: Duration = Duration::from_secs(300);
const CHANGE_LIMIT: Duration = Duration::from_secs(30);
const ROLE: &str = "FERRY_FANOUT_PROXIES";

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn pod(service: usize, replica: usize, nodes: usize, ready: bool) -> core::Pod {
    let index = service * PODS_PER_SERVICE + replica;
    core::Pod {
        metadata: ObjectMeta {
            name: Some(format!("svc-{service}-{replica}")),
            namespace: Some("bench".into()),
            labels: Some(BTreeMap::from([(
                "app".to_string(),
                format!("svc-{service}"),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(core::PodSpec {
            node_name: Some(format!("node-{}", index % nodes)),
            containers: vec![core::Container {
                name: "app".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(core::PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(format!("10.64.{}.{}", index / 256, index % 256)),
            conditions: Some(vec![core::PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn cluster(nodes: usize) -> Vec<SourceEvent> {
    let mut events = Vec::new();
    for s in 0..SERVICES {
        events.push(SourceEvent::Apply(K8sObject::from(core::Service {
            metadata: ObjectMeta {
                name: Some(format!("svc-{s}")),
                namespace: Some("bench".into()),
                ..ObjectMeta::default()
            },
            spec: Some(core::ServiceSpec {
                cluster_ip: Some(format!("10.96.{}.{}", s / 256, s % 256)),
                selector: Some(BTreeMap::from([("app".to_string(), format!("svc-{s}"))])),
                ports: Some(vec![core::ServicePort {
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        })));
        for r in 0..PODS_PER_SERVICE {
            events.push(SourceEvent::Apply(K8sObject::from(pod(s, r, nodes, true))));
        }
    }
    events
}

/// This process's CPU time (user + system) and resident memory.
fn cpu_and_rss() -> (Duration, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field overall, the 12th after ") ".
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    // /proc reports CPU time in USER_HZ, 100 per second on Linux.
    (Duration::from_millis(ticks * 10), rss_kib * 1024)
}

fn raise_fd_limit() {
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

struct Row {
    proxies: usize,
    connect: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    bytes_per_change: u64,
    cpu_sync: Duration,
    cpu_per_change: Duration,
    rss: u64,
}

fn main() -> anyhow::Result<()> {
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if std::env::var_os(ROLE).is_some() {
        return runtime.block_on(proxies());
    }
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![1_000, 5_000]
    } else {
        counts
    };
    let mut rows = Vec::new();
    for n in counts {
        rows.push(runtime.block_on(run(n))?);
    }
    println!(
        "\nFerry fan-out: endpoint changes to N proxies over mTLS delta streams ({SERVICES} services, {} pods; {CHANGES} changes, one at a time)",
        SERVICES * PODS_PER_SERVICE
    );
    println!(
        "{:>8} | {:>10} | {:>10} | {:>20} | {:>10} | {:>10} | {:>12} | {:>10} | {:>10}",
        "proxies",
        "sync all",
        "sync CPU",
        "change->last ACK p50",
        "p99",
        "max",
        "bytes/change",
        "CPU/change",
        "CP RSS"
    );
    for r in rows {
        println!(
            "{:>8} | {:>10.2?} | {:>10.2?} | {:>20.2?} | {:>10.2?} | {:>10.2?} | {:>12} | {:>10.2?} | {:>6.1} MiB",
            r.proxies,
            r.connect,
            r.cpu_sync,
            r.p50,
            r.p99,
            r.max,
            r.bytes_per_change,
            r.cpu_per_change,
            r.rss as f64 / 1048576.0,
        );
    }
    Ok(())
}

/// One run: the control plane here, `n` proxies in a child process.
async fn run(n: usize) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let authority = Authority::generate(TRUST_DOMAIN, Duration::from_secs(3600))?;
    authority.write(dir.path())?;
    let server = authority.issue_server(&["127.0.0.1".to_string()], Duration::from_secs(3600))?;

    let mut translator = Translator::new(TranslateOptions::default());
    let cache = ConfigCache::new();
    cache.commit(translator.apply(cluster(n)));

    // A backlog for thousands of proxies connecting at once.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let listener = socket.listen(4096)?;
    let address = listener.local_addr()?;
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &server.cert_pem,
            &server.key_pem,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(
            authority.cert_pem(),
        ));
    let service = ConfigDiscoveryService::new(cache.clone()).with_authenticator(Arc::new(
        Authenticator::NodeCertificate {
            trust_domain: TRUST_DOMAIN.to_string(),
        },
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)?
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );

    let (cpu_before_sync, _) = cpu_and_rss();
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .env(ROLE, "1")
        .env("FANOUT_PROXIES", n.to_string())
        .env("FANOUT_ADDRESS", address.to_string())
        .env("FANOUT_PKI", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let outcome = async {
        match next_line(&mut lines, SYNC_LIMIT).await {
            Some(line) if line == "ready" => {}
            other => anyhow::bail!("the proxies did not sync: {other:?}"),
        }
        let connect = started.elapsed();
        let (cpu_synced, _) = cpu_and_rss();
        let mut latencies = Vec::new();
        let mut bytes = Vec::new();
        for i in 0..CHANGES {
            // A pod goes unready, then ready again: its workload and its
            // service change each time.
            let (s, r) = (((i / 2) * 7) % SERVICES, (i / 2) % PODS_PER_SERVICE);
            let ready = i % 2 == 1;
            let previous = cache.revision();
            let at = unix_ns();
            let changes =
                translator.apply([SourceEvent::Apply(K8sObject::from(pod(s, r, n, ready)))]);
            cache.commit(changes);
            let revision = cache.revision();
            anyhow::ensure!(revision > previous, "change {i} changed nothing");
            loop {
                let Some(line) = next_line(&mut lines, CHANGE_LIMIT).await else {
                    anyhow::bail!(
                        "revision {revision}: not every proxy ACKed within {CHANGE_LIMIT:?}"
                    );
                };
                let fields: Vec<&str> = line.split_whitespace().collect();
                if let ["acked", rev, last, sent] = fields[..] {
                    if rev.parse::<u64>().ok() == Some(revision) {
                        let last: u128 = last.parse()?;
                        latencies.push(Duration::from_nanos(
                            u64::try_from(last.saturating_sub(at)).unwrap_or(u64::MAX),
                        ));
                        bytes.push(sent.parse::<u64>()?);
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (cpu_done, rss) = cpu_and_rss();
        latencies.sort();
        Ok(Row {
            proxies: n,
            connect,
            p50: percentile(&latencies, 50),
            p99: percentile(&latencies, 99),
            max: latencies.last().copied().unwrap_or_default(),
            bytes_per_change: bytes.iter().sum::<u64>() / bytes.len().max(1) as u64,
            cpu_sync: cpu_synced.saturating_sub(cpu_before_sync),
            cpu_per_change: cpu_done.saturating_sub(cpu_synced) / CHANGES as u32,
            rss,
        })
    }
    .await;
    // Closing its stdin ends the child; it is killed if it lingers.
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = stop.send(());
    let _ = serving.await;
    outcome
}

/// The child's next line, or `None` after `limit` (or when it is gone).
async fn next_line(lines: &mut mpsc::UnboundedReceiver<String>, limit: Duration) -> Option<String> {
    tokio::time::timeout(limit, lines.recv())
        .await
        .ok()
        .flatten()
}

/// One ACK a simulated proxy sent: which proxy, the revision, when, and the
/// size of the response it answers.
struct Ack {
    proxy: usize,
    revision: u64,
    at: u128,
    bytes: u64,
}

/// The child: `FANOUT_PROXIES` proxies, each with its own node credential
/// and connection. Prints `ready` once every proxy has its first response,
/// then `acked REV LAST_ACK_UNIX_NS BYTES` when every proxy has ACKed a
/// revision (an ACK of a later revision covers the earlier ones). Ends when
/// its stdin closes.
async fn proxies() -> anyhow::Result<()> {
    let n: usize = std::env::var("FANOUT_PROXIES")?.parse()?;
    let address = std::env::var("FANOUT_ADDRESS")?;
    let pki = std::env::var("FANOUT_PKI")?;
    let authority = Authority::load(Path::new(&pki))?;
    let ca = tonic::transport::Certificate::from_pem(authority.cert_pem());
    let (acks_tx, mut acks) = mpsc::unbounded_channel::<Ack>();
    // Proxies start over a few seconds in a real cluster, not in one
    // instant: at most this many connect at a time.
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let node = format!("node-{i}");
        let credential = authority.issue_node(&node, Duration::from_secs(3600))?;
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .identity(tonic::transport::Identity::from_pem(
                &credential.cert_pem,
                &credential.key_pem,
            ));
        let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{address}"))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(30));
        let acks_tx = acks_tx.clone();
        let connecting = connecting.clone();
        tasks.push(tokio::spawn(async move {
            let result = stream(i, node, endpoint, acks_tx, connecting).await;
            if let Err(e) = &result {
                eprintln!("proxy {i}: {e:#}");
            }
            result
        }));
    }
    drop(acks_tx);
    // Aggregation: per revision, how many proxies are at or past it.
    let mut last: Vec<u64> = vec![0; n];
    let mut pending: BTreeMap<u64, (usize, u128, u64)> = BTreeMap::new();
    let mut synced = 0usize;
    let mut stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|r| r > 0)
            .unwrap_or(false)
        {}
    });
    let mut out = std::io::stdout();
    loop {
        tokio::select! {
            ack = acks.recv() => {
                let Some(ack) = ack else { break };
                let before = last[ack.proxy];
                if before == 0 {
                    synced += 1;
                    last[ack.proxy] = ack.revision;
                    if synced == n {
                        writeln!(out, "ready")?;
                        out.flush()?;
                    }
                    continue;
                }
                if ack.revision <= before {
                    continue;
                }
                last[ack.proxy] = ack.revision;
                let entry = pending.entry(ack.revision).or_insert((0, 0, 0));
                entry.0 += 1;
                entry.1 = entry.1.max(ack.at);
                entry.2 += ack.bytes;
                if entry.0 == n {
                    writeln!(out, "acked {} {} {}", ack.revision, entry.1, entry.2)?;
                    out.flush()?;
                    pending.remove(&ack.revision);
                }
            }
            _ = &mut stdin_closed => break,
        }
    }
    for task in tasks {
        task.abort();
    }
    Ok(())
}

async fn stream(
    proxy: usize,
    node: String,
    endpoint: tonic::transport::Endpoint,
    acks: mpsc::UnboundedSender<Ack>,
    connecting: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<()> {
    // Connect as a proxy does: again after a failure, with a pause; at
    // most 20 tries.
    let mut tries = 0;
    let channel = loop {
        let permit = connecting.acquire().await?;
        let attempt = endpoint.connect().await;
        drop(permit);
        match attempt {
            Ok(channel) => break channel,
            Err(e) if tries >= 20 => return Err(e.into()),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100 * tries)).await;
            }
        }
    };
    let mut client = ConfigDiscoveryClient::new(channel).max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaRequest {
        node,
        ..DeltaRequest::default()
    })
    .await?;
    let mut responses = client
        .delta_config(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(response) = responses.message().await? {
        // The gRPC frame: 5 bytes of header and the message.
        let bytes = response.encoded_len() as u64 + 5;
        let at = unix_ns();
        tx.send(DeltaRequest {
            response_nonce: response.nonce.clone(),
            ..DeltaRequest::default()
        })
        .await?;
        let _ = acks.send(Ack {
            proxy,
            revision: response.revision,
            at,
            bytes,
        });
    }
    Ok(())
}
