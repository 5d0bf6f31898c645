//! Faults of a peer proxy, on loopback: a destination proxy that freezes
//! (SIGSTOP: its sockets stay open, nothing answers) must not hang new
//! connections. Connections to a service fail over to an endpoint behind
//! another node within the connect deadline, and the pool drops the dead
//! connection once its keepalive PING goes unanswered. A client's first
//! bytes, sent ahead of the destination proxy's answer, survive a retry on
//! another endpoint.

use std::time::{Duration, Instant};

use ferry_tests::net::{read_banner, socks5_connect, who_answers};
use ferry_tests::prom;
use ferry_tests::two_nodes::{mtls, Cluster};
use ferry_tests::{http_get, MeshOptions};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_proxy_does_not_hang_new_connections() -> anyhow::Result<()> {
    const N: u8 = 43;
    let options = MeshOptions {
        proxy_args: [
            "--connect-timeout",
            "1s",
            "--tls-handshake-timeout",
            "1s",
            "--hbone-keepalive-interval",
            "1s",
            "--hbone-keepalive-timeout",
            "1s",
        ]
        .map(String::from)
        .to_vec(),
        ..mtls()
    };
    let c = Cluster::start(N, options).await?;
    let socks = c.socks("node-a")?;
    let vip = format!("10.96.{N}.20");
    // Warm up: the pool holds a connection to node-b.
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(who_answers(socks, c.client(), &vip, 80).await?);
    }
    seen.sort();
    assert_eq!(seen, ["backend-a", "backend-b1", "backend-b2"]);

    // Freeze node-b's proxy.
    let frozen = c.mesh.proxy("node-b")?.process.pid().unwrap_or_default();
    ferry_tests::netns::run("kill", &["-STOP", &frozen.to_string()])?;
    let mut slowest = Duration::ZERO;
    let mut answers = Vec::new();
    for _ in 0..9 {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            who_answers(socks, c.client(), &vip, 80),
        )
        .await;
        slowest = slowest.max(started.elapsed());
        answers.push(match answer {
            Ok(Ok(who)) => who,
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "hung for 5 s".into(),
        });
    }
    ferry_tests::netns::run("kill", &["-CONT", &frozen.to_string()])?;
    eprintln!("with node-b frozen: {answers:?}; slowest {slowest:?}");
    // Every connection is served by the endpoint on node-a, within about
    // one deadline (the connections that find node-b frozen wait for its
    // CONNECT reply or TLS handshake, then fail over).
    assert!(
        answers.iter().all(|a| a == "backend-a"),
        "{answers:?}\n{}",
        c.mesh.diagnostics()
    );
    assert!(slowest < Duration::from_secs(3), "slowest {slowest:?}");
    Ok(())
}

/// Many connections opened at once to one peer share few pooled
/// connections: 250 concurrent streams at 100 per connection need 3
/// handshakes, not one per connection; and the pool closes them once idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_share_few_pooled_connections() -> anyhow::Result<()> {
    use ferry_tests::net::{read_banner, socks5_connect};
    const N: u8 = 45;
    let options = MeshOptions {
        proxy_args: ["--hbone-pool-idle", "2s"].map(String::from).to_vec(),
        ..mtls()
    };
    let c = Cluster::start(N, options).await?;
    let socks = c.socks("node-a")?;
    let target = c.ip(2, 11).to_string();
    let opened = futures::future::join_all((0..250).map(|_| {
        let target = target.clone();
        let client = c.client();
        async move {
            let mut stream = socks5_connect(socks, client, &target, 9090).await?;
            read_banner(&mut stream).await?;
            Ok::<_, std::io::Error>(stream)
        }
    }))
    .await;
    let open: Vec<_> = opened.into_iter().collect::<Result<_, _>>()?;
    let pool = tokio::task::block_in_place(|| c.mesh.config_dump("node-a"))?["hbone_pool"].clone();
    eprintln!("250 concurrent connections: pool {pool}");
    assert_eq!(pool["streams"], 250, "{pool}");
    assert!(
        pool["handshakes"].as_u64().is_some_and(|h| h <= 3),
        "{pool}"
    );
    assert!(
        pool["connections"].as_u64().is_some_and(|c| c <= 3),
        "{pool}"
    );
    drop(open);
    // Idle for longer than --hbone-pool-idle: closed.
    let closed = tokio::task::block_in_place(|| {
        ferry_tests::wait_for(
            "idle pooled connections closed",
            Duration::from_secs(10),
            || {
                let pool = c.mesh.config_dump("node-a")?["hbone_pool"].clone();
                Ok((pool["connections"] == 0).then_some(()))
            },
        )
    });
    closed.map_err(|e| e.context(c.mesh.diagnostics()))?;
    Ok(())
}

/// The client speaks first, right after its SOCKS5 answer: its bytes go out
/// behind the CONNECT, before node-b answers. When the endpoint is a pod
/// with nothing listening, node-b refuses (503) and node-a retries another
/// endpoint (on node-b again, or its own pod); the bytes are sent there
/// once, and the client's exchange goes on as if the first attempt had
/// not happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_survive_a_retry_on_another_endpoint() -> anyhow::Result<()> {
    const N: u8 = 47;
    let c = Cluster::start(N, mtls()).await?;
    // A ready pod of the service with nothing listening on its port.
    std::fs::write(
        c.mesh.manifests.path().join("dead.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: backend-dead, namespace: shop, labels: {{app: backend}}}}\nspec:\n  nodeName: node-b\n  serviceAccountName: backend\n  containers: [{{name: c, image: echo, ports: [{{name: api, containerPort: 9090}}]}}]\nstatus:\n  phase: Running\n  podIP: 127.{N}.2.13\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
        ),
    )?;
    tokio::task::block_in_place(|| {
        c.mesh.wait_all("four endpoints", |d| {
            ferry_tests::resource(d, "service", "shop/backend")
                .and_then(|s| s["endpoints"].as_array().cloned())
                .is_some_and(|e| e.len() == 4)
        })
    })?;
    let socks = c.socks("node-a")?;
    let vip = format!("10.96.{N}.20");
    let failed_before = refused_by_b(&c)?;
    let mut answered = Vec::new();
    // Round robin over four endpoints: every fourth connection meets the
    // dead one first.
    for i in 0..8 {
        let mut stream = socks5_connect(socks, c.client(), &vip, 80).await?;
        let first = format!("first-{i}\n");
        stream.write_all(first.as_bytes()).await?;
        stream.write_all(b"second\n").await?;
        let who = read_banner(&mut stream).await?;
        assert_eq!(
            read_banner(&mut stream).await?,
            format!("first-{i}"),
            "{who}"
        );
        // Once, not replayed twice: the next line is the second one.
        assert_eq!(read_banner(&mut stream).await?, "second", "{who}");
        answered.push(who);
    }
    answered.sort();
    answered.dedup();
    assert_eq!(answered, ["backend-a", "backend-b1", "backend-b2"]);
    // The dead endpoint was tried (node-b refused it) before the retries.
    assert!(
        refused_by_b(&c)? >= failed_before + 2.0,
        "{}",
        c.mesh.diagnostics()
    );
    Ok(())
}

/// Connections node-b's proxy failed to make to a pod (its metrics).
fn refused_by_b(c: &Cluster) -> anyhow::Result<f64> {
    let admin = c.mesh.proxy("node-b")?.admin;
    let (status, text) = tokio::task::block_in_place(|| http_get(admin, "/metrics"))?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {text}");
    Ok(prom::sum(
        &prom::parse(&text),
        "ferry_connection_failures_total",
        &[("reporter", "destination")],
    ))
}
