//! Graceful shutdown of a node proxy: on SIGTERM it stops accepting at
//! once, lets open connections finish (up to `--drain-timeout`), and exits
//! as soon as the last one closes.

use std::time::{Duration, Instant};

use ferry_tests::net::{read_banner, socks5_connect};
use ferry_tests::two_nodes::{mtls, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_connections_and_refuses_new_ones() -> anyhow::Result<()> {
    const N: u8 = 44;
    let mut c = Cluster::start(N, mtls()).await?;
    let socks = c.socks("node-a")?;
    let backend_b1 = c.ip(2, 11).to_string();
    let mut open = socks5_connect(socks, c.client(), &backend_b1, 9090).await?;
    assert_eq!(read_banner(&mut open).await?, "backend-b1");

    let pid = c.mesh.proxy("node-a")?.process.pid().unwrap_or_default();
    ferry_tests::netns::run("kill", &["-TERM", &pid.to_string()])?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are refused: the listener is closed...
    assert!(
        socks5_connect(socks, c.client(), &backend_b1, 9090)
            .await
            .is_err(),
        "a new connection was accepted after SIGTERM"
    );
    // ...while the open one still carries bytes, both ways.
    open.write_all(b"still there\n").await?;
    let mut echoed = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), open.read_exact(&mut echoed)).await??;
    assert_eq!(&echoed, b"still there\n");
    // Closing it lets the proxy exit, well before the drain timeout (10 s).
    let closed = Instant::now();
    drop(open);
    let proxy = &mut c
        .mesh
        .proxies
        .iter_mut()
        .find(|p| p.node == "node-a")
        .ok_or_else(|| anyhow::anyhow!("no node-a"))?
        .process;
    let exited = tokio::task::block_in_place(|| {
        ferry_tests::wait_for("the proxy to exit", Duration::from_secs(8), || {
            Ok((!proxy.is_running()).then_some(()))
        })
    });
    exited.map_err(|e| e.context(proxy.log()))?;
    assert!(
        closed.elapsed() < Duration::from_secs(5),
        "{:?}",
        closed.elapsed()
    );
    let log = proxy.log();
    assert!(log.contains("draining open connections"), "{log}");
    assert!(log.contains("every connection finished"), "{log}");
    Ok(())
}
