//! `ferry-bench`: the data path benchmark. One run measures, through the
//! mesh (client pod -> SOCKS5 -> node-a proxy -> HBONE mTLS -> node-b proxy
//! -> server pod) and directly (client -> server), on loopback:
//!
//! - single-stream throughput,
//! - p50/p99 latency of a small request/response on a persistent connection,
//! - new connections per second (connect, one round trip, close),
//! - proxy memory (RSS of both proxies) per 1,000 open connections,
//!
//! and prints a table with mesh/direct ratios. `ferry-bench telemetry`
//! instead measures the mesh twice, with telemetry off (metrics only, no
//! access logs, no traces) and on (access logs, and a span per connection
//! on each proxy exported over OTLP to an in-process receiver), and prints
//! the cost; `ferry-bench flows` does the same for the flow log
//! (`--flow-history 0` vs its default). Every loop is bounded in count and
//! time. Run with the release binaries:
//! `scripts/release.sh && cargo run --release -p ferry-tests --bin ferry-bench [telemetry|flows]`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_tests::net::{socks5_connect, TaskGuard};
use ferry_tests::{LoopbackMesh, MeshOptions, NodeSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BLOCK: u8 = 77;
/// The second mesh of `ferry-bench telemetry`.
const BLOCK_ON: u8 = 78;
const THROUGHPUT_BYTES: usize = 512 << 20;
const LATENCY_ROUNDS: usize = 5_000;
const CONNECTIONS: usize = 2_000;
const OPEN_CONNECTIONS: usize = 1_000;
const PHASE_LIMIT: Duration = Duration::from_secs(60);

fn manifests(n: u8) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nstatus: {{addresses: [{{type: InternalIP, address: 127.{n}.0.1}}]}}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: node-b}}\nstatus: {{addresses: [{{type: InternalIP, address: 127.{n}.0.2}}]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: bench}}\nspec: {{nodeName: node-a, serviceAccountName: client, containers: [{{name: c, image: x}}]}}\nstatus: {{phase: Running, podIP: 127.{n}.1.10, conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: server, namespace: bench}}\nspec: {{nodeName: node-b, serviceAccountName: server, containers: [{{name: c, image: x}}]}}\nstatus: {{phase: Running, podIP: 127.{n}.2.10, conditions: [{{type: Ready, status: \"True\"}}]}}\n"
    )
}

/// Server: "s" = sink (read to EOF, answer with the byte count), "e" =
/// echo; the first byte of a connection chooses.
async fn server(address: SocketAddr) -> anyhow::Result<TaskGuard> {
    let listener = TcpListener::bind(address).await?;
    Ok(TaskGuard::new(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if stream.read_exact(&mut mode).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 64 * 1024];
                if mode[0] == b's' {
                    let mut total = 0u64;
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    let _ = stream.write_all(&total.to_be_bytes()).await;
                } else {
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    })))
}

#[derive(Clone, Copy)]
enum Path {
    Direct,
    Mesh { socks: SocketAddr },
}

async fn connect(path: Path, client: IpAddr, server: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = match path {
        Path::Direct => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(client, 0))?;
            socket.connect(server).await?
        }
        Path::Mesh { socks } => {
            socks5_connect(socks, client, &server.ip().to_string(), server.port()).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn throughput(path: Path, client: IpAddr, server: SocketAddr) -> anyhow::Result<f64> {
    let mut stream = connect(path, client, server).await?;
    stream.write_all(b"s").await?;
    let chunk = vec![0x5au8; 256 * 1024];
    let started = Instant::now();
    let mut sent = 0;
    while sent < THROUGHPUT_BYTES && started.elapsed() < PHASE_LIMIT {
        stream.write_all(&chunk).await?;
        sent += chunk.len();
    }
    stream.shutdown().await?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        u64::from_be_bytes(count) == sent as u64,
        "byte count mismatch"
    );
    Ok(sent as f64 / elapsed.as_secs_f64() / (1024.0 * 1024.0))
}

async fn latency(
    path: Path,
    client: IpAddr,
    server: SocketAddr,
) -> anyhow::Result<(Duration, Duration)> {
    let mut stream = connect(path, client, server).await?;
    stream.write_all(b"e").await?;
    let request = [7u8; 64];
    let mut response = [0u8; 64];
    // Warm up.
    for _ in 0..200 {
        stream.write_all(&request).await?;
        stream.read_exact(&mut response).await?;
    }
    let mut samples = Vec::with_capacity(LATENCY_ROUNDS);
    let deadline = Instant::now() + PHASE_LIMIT;
    for _ in 0..LATENCY_ROUNDS {
        if Instant::now() > deadline {
            break;
        }
        let started = Instant::now();
        stream.write_all(&request).await?;
        stream.read_exact(&mut response).await?;
        samples.push(started.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Ok((at(0.50), at(0.99)))
}

async fn connections_per_second(
    path: Path,
    client: IpAddr,
    server: SocketAddr,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut done = 0;
    while done < CONNECTIONS && started.elapsed() < PHASE_LIMIT {
        let mut stream = connect(path, client, server).await?;
        stream.write_all(b"ex").await?;
        let mut one = [0u8; 1];
        stream.read_exact(&mut one).await?;
        drop(stream);
        done += 1;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

async fn memory_per_thousand(
    mesh: &LoopbackMesh,
    socks: SocketAddr,
    client: IpAddr,
    server: SocketAddr,
) -> anyhow::Result<f64> {
    let pids: Vec<u32> = mesh
        .proxies
        .iter()
        .filter_map(|p| p.process.pid())
        .collect();
    let rss = |pids: &[u32]| -> anyhow::Result<u64> {
        pids.iter().map(|p| ferry_tests::rss_kib(*p)).sum()
    };
    let before = rss(&pids)?;
    let mut open = Vec::with_capacity(OPEN_CONNECTIONS);
    for _ in 0..OPEN_CONNECTIONS {
        let mut stream = connect(Path::Mesh { socks }, client, server).await?;
        stream.write_all(b"ex").await?;
        let mut one = [0u8; 1];
        stream.read_exact(&mut one).await?;
        open.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss(&pids)?;
    drop(open);
    Ok((after.saturating_sub(before)) as f64 / 1024.0 * (1000.0 / OPEN_CONNECTIONS as f64))
}

/// A two-node mesh on block `n` with a server pod, its proxies' `env`.
struct Bench {
    mesh: LoopbackMesh,
    client: IpAddr,
    server: SocketAddr,
    socks: SocketAddr,
    _server: TaskGuard,
    _dir: tempfile::TempDir,
}

async fn bench_mesh(n: u8, env: Vec<(String, String)>) -> anyhow::Result<Bench> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("bench.yaml"), manifests(n))?;
    let client: IpAddr = format!("127.{n}.1.10").parse()?;
    let server_addr: SocketAddr = format!("127.{n}.2.10:9000").parse()?;
    let server_task = server(server_addr).await?;
    let nodes = [
        NodeSpec::new("node-a", &format!("127.{n}.0.1"))?,
        NodeSpec::new("node-b", &format!("127.{n}.0.2"))?,
    ];
    let options = MeshOptions {
        pki: true,
        proxy_env: env,
        ..MeshOptions::default()
    };
    let mesh =
        tokio::task::block_in_place(|| LoopbackMesh::start_with(dir.path(), &nodes, options))?;
    tokio::task::block_in_place(|| {
        mesh.wait_all("certificates", |d| {
            d["certificates"].as_array().is_some_and(|c| !c.is_empty())
        })
    })?;
    let socks = mesh.proxy("node-a")?.socks5;
    Ok(Bench {
        mesh,
        client,
        server: server_addr,
        socks,
        _server: server_task,
        _dir: dir,
    })
}

fn print_table(title: &str, columns: (&str, &str), rows: Vec<(String, String, String, String)>) {
    println!("\n{title}");
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    println!(
        "{:<w$} | {:>8} | {:>8} | {:>6}",
        "measure", columns.0, columns.1, "ratio"
    );
    println!("{:-<w$}-+-{:->8}-+-{:->8}-+-{:->6}", "", "", "", "");
    for (name, m, d, r) in rows {
        println!("{name:<w$} | {m:>8} | {d:>8} | {r:>6}");
    }
}

/// The flow log (`ferryctl flows`) off vs on (its default, 1,024 flows),
/// through the mesh; access logs off in both.
async fn flows_cost() -> anyhow::Result<()> {
    let env = |history: &str| {
        vec![
            ("FERRY_ACCESS_LOG_RATE".to_string(), "0".to_string()),
            ("FERRY_FLOW_HISTORY".to_string(), history.to_string()),
        ]
    };
    compare(
        "Flow log cost (loopback mesh; on = one flow recorded per connection on each proxy)",
        env("0"),
        env("1024"),
    )
    .await
}

/// Telemetry off vs on, through the mesh.
async fn telemetry_cost() -> anyhow::Result<()> {
    let off_env = vec![("FERRY_ACCESS_LOG_RATE".to_string(), "0".to_string())];
    let receiver = ferry_tests::otlp::Receiver::counting("127.0.0.1:0".parse()?).await?;
    let on_env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            receiver.endpoint(),
        ),
        // Every connection is logged (the default rate limit would hide
        // the cost under load).
        ("FERRY_ACCESS_LOG_RATE".to_string(), "1000000".to_string()),
        // Istio's metrics as well, and (with tracing) exemplars.
        ("FERRY_ISTIO_METRICS".to_string(), "true".to_string()),
    ];
    compare(
        "Telemetry cost (loopback mesh; on = access log line + OTLP span + Istio metrics + exemplar per connection on each proxy)",
        off_env,
        on_env,
    )
    .await?;
    println!("spans received by the OTLP receiver: {}", receiver.count());
    Ok(())
}

/// One mesh with `off_env`, then one with `on_env`: the figures side by
/// side.
async fn compare(
    title: &str,
    off_env: Vec<(String, String)>,
    on_env: Vec<(String, String)>,
) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for (n, env) in [(BLOCK, off_env), (BLOCK_ON, on_env)] {
        let b = bench_mesh(n, env).await?;
        let path = Path::Mesh { socks: b.socks };
        let mb = throughput(path, b.client, b.server).await?;
        let (p50, p99) = latency(path, b.client, b.server).await?;
        let cps = connections_per_second(path, b.client, b.server).await?;
        results.push((mb, p50, p99, cps));
    }
    let [(off_mb, off50, off99, off_cps), (on_mb, on50, on99, on_cps)] = results[..] else {
        anyhow::bail!("two runs expected");
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let ratio = |on: f64, off: f64| format!("{:.2}x", on / off);
    let rows = vec![
        (
            "throughput, 1 stream (MiB/s)".into(),
            format!("{on_mb:.0}"),
            format!("{off_mb:.0}"),
            ratio(on_mb, off_mb),
        ),
        (
            "latency p50, 64 B echo (µs)".into(),
            format!("{:.0}", us(on50)),
            format!("{:.0}", us(off50)),
            ratio(us(on50), us(off50)),
        ),
        (
            "latency p99, 64 B echo (µs)".into(),
            format!("{:.0}", us(on99)),
            format!("{:.0}", us(off99)),
            ratio(us(on99), us(off99)),
        ),
        (
            "new connections per second".into(),
            format!("{on_cps:.0}"),
            format!("{off_cps:.0}"),
            ratio(on_cps, off_cps),
        ),
    ];
    print_table(title, ("on", "off"), rows);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("telemetry") => return telemetry_cost().await,
        Some("flows") => return flows_cost().await,
        Some(other) => anyhow::bail!("usage: ferry-bench [telemetry|flows] (got {other})"),
        None => {}
    }
    let bench = bench_mesh(BLOCK, Vec::new()).await?;
    let (mesh, client, server_addr, socks) = (&bench.mesh, bench.client, bench.server, bench.socks);
    let mesh_path = Path::Mesh { socks };

    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let ratio = |m: f64, d: f64| format!("{:.2}x", m / d);

    let direct = throughput(Path::Direct, client, server_addr).await?;
    let meshed = throughput(mesh_path, client, server_addr).await?;
    rows.push((
        "throughput, 1 stream (MiB/s)".into(),
        format!("{meshed:.0}"),
        format!("{direct:.0}"),
        ratio(meshed, direct),
    ));

    let (d50, d99) = latency(Path::Direct, client, server_addr).await?;
    let (m50, m99) = latency(mesh_path, client, server_addr).await?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    rows.push((
        "latency p50, 64 B echo (µs)".into(),
        format!("{:.0}", us(m50)),
        format!("{:.0}", us(d50)),
        ratio(us(m50), us(d50)),
    ));
    rows.push((
        "latency p99, 64 B echo (µs)".into(),
        format!("{:.0}", us(m99)),
        format!("{:.0}", us(d99)),
        ratio(us(m99), us(d99)),
    ));

    let dc = connections_per_second(Path::Direct, client, server_addr).await?;
    let mc = connections_per_second(mesh_path, client, server_addr).await?;
    rows.push((
        "new connections per second".into(),
        format!("{mc:.0}"),
        format!("{dc:.0}"),
        ratio(mc, dc),
    ));

    let mib = memory_per_thousand(mesh, socks, client, server_addr).await?;
    rows.push((
        "proxy RSS per 1,000 open connections (MiB, both proxies)".into(),
        format!("{mib:.1}"),
        "-".into(),
        "-".into(),
    ));

    let dump = tokio::task::block_in_place(|| mesh.config_dump("node-a"))?;
    print_table(
        "Ferry data path benchmark (loopback, mesh = SOCKS5 + HBONE mTLS between two proxies)",
        ("mesh", "direct"),
        rows,
    );
    println!(
        "HBONE handshakes during the run: {}",
        dump["hbone_pool"]["handshakes"]
    );
    Ok(())
}
