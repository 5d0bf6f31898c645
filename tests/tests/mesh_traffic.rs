//! The mTLS data path with the real binaries on loopback: a control plane
//! with the mesh CA and two node proxies, each standing on its own
//! 127.x.0.y address; pods are echo servers on 127.x.{1,2}.y; clients use
//! the proxies' SOCKS5 listener from their pod's address.
//!
//! Each test uses its own 127.<n>.0.0/16 block so tests can run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ferry_tests::net::{read_banner, socks5_connect, who_answers, Relay};
use ferry_tests::two_nodes::{mtls, Cluster};
use ferry_tests::{wait_for, MeshOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_traffic_is_mutual_tls_on_the_wire() -> anyhow::Result<()> {
    let n = 31;
    // node-b's proxy listens on :15018; a recording relay stands on the
    // announced :15008, between the two proxies.
    let hbone_b: SocketAddr = format!("127.{n}.0.2:15018").parse()?;
    let relay = Relay::start(format!("127.{n}.0.2:15008").parse()?, hbone_b).await?;
    let options = MeshOptions {
        hbone_listen: vec![("node-b".into(), hbone_b)],
        ..mtls()
    };
    let c = Cluster::start(n, options).await?;
    let socks = c.socks("node-a")?;

    // Cross node, by pod IP, with half-close: send, shut down our write
    // side, and still receive the whole echo.
    let marker = b"FERRY-PLAINTEXT-MARKER-";
    let payload: Vec<u8> = marker.iter().copied().cycle().take(200_000).collect();
    let mut stream = socks5_connect(socks, c.client(), &c.ip(2, 11).to_string(), 9090).await?;
    assert_eq!(read_banner(&mut stream).await?, "backend-b1");
    stream.write_all(&payload).await?;
    stream.shutdown().await?;
    let mut echoed = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut echoed)).await??;
    assert_eq!(
        echoed.len(),
        payload.len(),
        "every byte comes back after half-close"
    );
    assert!(echoed == payload);

    // What crossed the link between the proxies: TLS records only.
    let wire = relay.bytes();
    assert!(
        wire.len() > payload.len(),
        "the payload crossed the relay ({} bytes)",
        wire.len()
    );
    assert_eq!(
        &wire[..2],
        &[0x16, 0x03],
        "starts with a TLS handshake record"
    );
    let needle = &marker[..];
    assert!(
        !wire.windows(needle.len()).any(|w| w == needle),
        "plaintext payload visible on the wire"
    );
    assert!(
        !wire.windows(10).any(|w| w == b"backend-b1"),
        "plaintext banner visible on the wire"
    );

    // Same node: direct, by pod IP and by service name.
    assert_eq!(
        who_answers(socks, c.client(), &c.ip(1, 11).to_string(), 9090).await?,
        "backend-a"
    );
    let by_name = who_answers(socks, c.client(), "backend.shop.svc.cluster.local", 80).await?;
    assert!(by_name.starts_with("backend-"), "{by_name}");
    let short = who_answers(socks, c.client(), "backend", 80).await?;
    assert!(short.starts_with("backend-"), "{short}");

    // A stream reuses the pooled HBONE connection: one handshake for many connections.
    for _ in 0..5 {
        who_answers(socks, c.client(), &c.ip(2, 11).to_string(), 9090).await?;
    }
    let dump = tokio::task::block_in_place(|| c.mesh.config_dump("node-a"))?;
    assert_eq!(
        dump["hbone_pool"]["handshakes"], 1,
        "{}",
        dump["hbone_pool"]
    );
    Ok(())
}

/// The data path on a multi-threaded runtime (`--worker-threads 3`; the
/// default is one thread, a current-thread runtime): bulk transfers both
/// ways over HBONE, and many connections at once, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_worker_threads_carry_the_same_traffic() -> anyhow::Result<()> {
    let n = 46;
    let options = MeshOptions {
        proxy_args: ["--worker-threads", "3"].map(String::from).to_vec(),
        ..mtls()
    };
    let c = Cluster::start(n, options).await?;
    // The flag took: each proxy runs its workers (blocking-pool threads,
    // if any, carry the same name).
    for node in ["node-a", "node-b"] {
        let pid = c.mesh.proxy(node)?.process.pid().expect("running");
        let workers = std::fs::read_dir(format!("/proc/{pid}/task"))?
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim() == "ferry-worker")
            .count();
        assert!(workers >= 3, "{node}: {workers} worker threads");
    }
    let socks = c.socks("node-a")?;
    // Bulk, cross node, with half-close: 8 MiB out and every byte back.
    let payload: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut stream = socks5_connect(socks, c.client(), &c.ip(2, 11).to_string(), 9090).await?;
    assert_eq!(read_banner(&mut stream).await?, "backend-b1");
    let (mut reader, mut writer) = stream.into_split();
    let sent = payload.clone();
    let writing = tokio::spawn(async move {
        writer.write_all(&sent).await?;
        writer.shutdown().await
    });
    let mut echoed = Vec::with_capacity(payload.len());
    tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut echoed)).await??;
    writing.await??;
    assert!(
        echoed == payload,
        "{} of {} bytes came back",
        echoed.len(),
        payload.len()
    );
    // Many at once: each connection echoes its own message.
    let connections = (0..64u32).map(|i| {
        let client = c.client();
        let target = c.ip(2, 11 + (i % 2) as u8).to_string();
        tokio::spawn(async move {
            let mut stream = socks5_connect(socks, client, &target, 9090).await?;
            read_banner(&mut stream).await?;
            let message = format!("message {i} ").repeat(100);
            stream.write_all(message.as_bytes()).await?;
            stream.shutdown().await?;
            let mut back = String::new();
            stream.read_to_string(&mut back).await?;
            anyhow::ensure!(back == message, "connection {i}: echo differs");
            anyhow::Ok(())
        })
    });
    let results = tokio::time::timeout(
        Duration::from_secs(30),
        futures::future::join_all(connections),
    )
    .await?;
    for result in results {
        result??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_affinity_and_endpoint_removal() -> anyhow::Result<()> {
    let c = Cluster::start(32, mtls()).await?;
    let socks = c.socks("node-a")?;
    let vip = format!("10.96.{}.20", c.n);

    // Round robin over three backends on two nodes: an even spread.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..30 {
        *seen
            .entry(who_answers(socks, c.client(), &vip, 80).await?)
            .or_default() += 1;
    }
    assert_eq!(
        seen,
        BTreeMap::from([
            ("backend-a".to_string(), 10),
            ("backend-b1".to_string(), 10),
            ("backend-b2".to_string(), 10)
        ])
    );

    // ClientIP affinity: one backend while the entry is fresh, another after the timeout (2 s).
    let sticky = format!("10.96.{}.21", c.n);
    let first = who_answers(socks, c.client(), &sticky, 80).await?;
    for _ in 0..10 {
        assert_eq!(who_answers(socks, c.client(), &sticky, 80).await?, first);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let after = who_answers(socks, c.client(), &sticky, 80).await?;
    assert_ne!(after, first, "affinity expired, round robin moved on");

    // Endpoint removal: backend-b2 goes away; no connection reaches it afterwards.
    let path = c.mesh.manifests.path().join("cluster.yaml");
    let text = std::fs::read_to_string(&path)?;
    let without: Vec<&str> = text
        .split("---\n")
        .filter(|doc| !doc.contains("name: backend-b2"))
        .collect();
    std::fs::write(&path, without.join("---\n"))?;
    tokio::task::block_in_place(|| {
        c.mesh.wait_all("backend-b2 removed", |d| {
            ferry_tests::resource(d, "service", "shop/backend")
                .and_then(|s| s["endpoints"].as_array().map(Vec::len))
                == Some(2)
        })
    })?;
    for _ in 0..20 {
        let who = who_answers(socks, c.client(), &vip, 80).await?;
        assert_ne!(who, "backend-b2");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_loses_no_byte_of_a_long_transfer() -> anyhow::Result<()> {
    let options = MeshOptions {
        workload_cert_ttl: Some(4),
        ..mtls()
    };
    let c = Cluster::start(33, options).await?;
    let socks = c.socks("node-a")?;
    let not_after = |dump: &serde_json::Value| dump["certificates"][0]["not_after_unix"].as_u64();
    let before = not_after(&tokio::task::block_in_place(|| {
        c.mesh.config_dump("node-a")
    })?);

    let mut stream = socks5_connect(socks, c.client(), &c.ip(2, 11).to_string(), 9090).await?;
    assert_eq!(read_banner(&mut stream).await?, "backend-b1");
    let (mut reader, mut writer) = stream.into_split();
    // 70 chunks of 16 KiB over ~7 s: longer than a certificate's life.
    let sender = tokio::spawn(async move {
        let mut sent = Vec::new();
        for i in 0..70u32 {
            let chunk: Vec<u8> = (0..16_384u32).map(|j| ((i * 31 + j) % 251) as u8).collect();
            writer.write_all(&chunk).await?;
            sent.extend_from_slice(&chunk);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        writer.shutdown().await?;
        Ok::<_, std::io::Error>(sent)
    });
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut received)).await??;
    let sent = sender.await??;
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "byte-exact echo across rotations");

    let after = not_after(&tokio::task::block_in_place(|| {
        c.mesh.config_dump("node-a")
    })?);
    assert!(
        after > before,
        "the certificate rotated during the transfer ({before:?} -> {after:?})"
    );
    // New connections work with the new certificate.
    assert_eq!(
        who_answers(socks, c.client(), &c.ip(2, 12).to_string(), 9090).await?,
        "backend-b2"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_unknown_port_no_endpoints_and_no_identity() -> anyhow::Result<()> {
    let c = Cluster::start(34, mtls()).await?;
    let socks = c.socks("node-a")?;
    // A cluster IP on a port the service does not define.
    let err = socks5_connect(socks, c.client(), &format!("10.96.{}.20", c.n), 81)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // A source that is not a mesh workload has no identity for a tunnel:
    // its connection to a remote pod goes in plaintext (on a real node the
    // destination proxy's inbound capture polices it), never through HBONE.
    let handshakes = || -> anyhow::Result<Option<u64>> {
        let dump = tokio::task::block_in_place(|| c.mesh.config_dump("node-a"))?;
        Ok(dump["hbone_pool"]["handshakes"].as_u64())
    };
    let before = handshakes()?;
    let stranger = c.ip(1, 99);
    assert_eq!(
        who_answers(socks, stranger, &c.ip(2, 11).to_string(), 9090).await?,
        "backend-b1"
    );
    assert_eq!(
        handshakes()?,
        before,
        "no tunnel for a source outside the mesh"
    );
    // Every backend unready: refused.
    let path = c.mesh.manifests.path().join("cluster.yaml");
    let text = std::fs::read_to_string(&path)?;
    std::fs::write(&path, text.replace("status: \"True\"", "status: \"False\""))?;
    tokio::task::block_in_place(|| {
        c.mesh.wait_all("all unready", |d| {
            ferry_tests::resource(d, "service", "shop/backend")
                .and_then(|s| s["endpoints"].as_array().cloned())
                .is_some_and(|e| e.iter().all(|e| e["ready"] == false))
        })
    })?;
    let err = socks5_connect(socks, c.client(), &format!("10.96.{}.20", c.n), 80)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    wait_for("log line", Duration::from_secs(5), || {
        Ok(c.mesh
            .proxy("node-a")?
            .process
            .log()
            .contains("no ready endpoints")
            .then_some(()))
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_keeps_flowing_while_the_control_plane_is_away() -> anyhow::Result<()> {
    let mut c = Cluster::start(37, mtls()).await?;
    let socks = c.socks("node-a")?;
    assert_eq!(
        who_answers(socks, c.client(), &c.ip(2, 11).to_string(), 9090).await?,
        "backend-b1"
    );
    let handshakes = |c: &Cluster| -> anyhow::Result<u64> {
        let dump = tokio::task::block_in_place(|| c.mesh.config_dump("node-a"))?;
        Ok(dump["hbone_pool"]["handshakes"].as_u64().unwrap_or(0))
    };
    assert_eq!(handshakes(&c)?, 1);

    // The control plane (and with it the CA) goes away.
    c.mesh.control_plane.kill();
    // A destination with another identity needs a new mTLS handshake: both
    // proxies still hold valid certificates and the config, so it works.
    assert_eq!(
        who_answers(socks, c.client(), &c.ip(2, 12).to_string(), 9090).await?,
        "backend-b2"
    );
    assert_eq!(
        handshakes(&c)?,
        2,
        "a new handshake with the certificates held"
    );
    let vip = format!("10.96.{}.20", c.n);
    assert!(who_answers(socks, c.client(), &vip, 80)
        .await?
        .starts_with("backend-"));
    for node in ["node-a", "node-b"] {
        assert_eq!(
            tokio::task::block_in_place(|| c.mesh.ready_status(node))?,
            200
        );
    }
    Ok(())
}
