//! Fail closed: a proxy without configuration (a fresh start, or a restart
//! while the control plane is away) relays nothing: every connection is
//! refused, nothing reaches the address it asked for, and readiness says
//! so.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_tests::net::{socks5_connect, EchoServer};
use ferry_tests::{binary, free_port, http_get, wait_for, Process};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_without_configuration_relays_nothing() -> anyhow::Result<()> {
    let echo = EchoServer::start(SocketAddr::from(([127, 0, 0, 1], free_port()?)), "pod").await?;
    // Nothing listens at the control plane's address: no config will come.
    let control_plane = format!("http://127.0.0.1:{}", free_port()?);
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let socks = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let hbone = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let logs = tempfile::tempdir()?;
    let (admin_s, socks_s, hbone_s) = (admin.to_string(), socks.to_string(), hbone.to_string());
    let proxy = Process::start(
        "proxy",
        &binary("ferry-proxy")?,
        &[
            "--node",
            "node-a",
            "--control-plane",
            &control_plane,
            "--admin",
            &admin_s,
            "--socks5",
            &socks_s,
            "--hbone",
            &hbone_s,
        ],
        logs.path().join("proxy.log"),
    )?;
    let ready = tokio::task::block_in_place(|| {
        wait_for("the admin listener", Duration::from_secs(10), || {
            Ok(http_get(admin, "/healthz/ready")
                .ok()
                .map(|(status, _)| status))
        })
    })?;
    assert_eq!(ready, 503, "not ready without configuration");

    // An address outside the mesh, which a configured proxy would pass
    // through: refused with "general SOCKS server failure", never relayed.
    let refused = socks5_connect(
        socks,
        "127.0.0.1".parse()?,
        "127.0.0.1",
        echo.address.port(),
    )
    .await
    .err()
    .map(|e| e.to_string());
    assert_eq!(
        refused.as_deref(),
        Some("SOCKS5 reply code 1"),
        "{}",
        proxy.log()
    );
    let (_, metrics) = tokio::task::block_in_place(|| http_get(admin, "/metrics"))?;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("reason=\"not_configured\"") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        proxy.log().contains("no configuration yet"),
        "{}",
        proxy.log()
    );
    Ok(())
}
