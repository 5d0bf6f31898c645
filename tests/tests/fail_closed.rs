//! Fail closed: a proxy without configuration (a fresh start, or a restart
//! while the control plane is away) relays nothing: every connection is
//! refused, nothing reaches the address it asked for, and readiness says
//! so.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_tests::net::{socks5_connect, EchoServer};
use ferry_tests::{binary, free_port, http_get, wait_for, Process};

/// A proxy on loopback whose control plane never answers (nothing listens
/// at its address), with `env`: the process, its admin and SOCKS5
/// addresses, and the folder of its log.
fn lone_proxy(
    env: &[(String, String)],
) -> anyhow::Result<(Process, SocketAddr, SocketAddr, tempfile::TempDir)> {
    let control_plane = format!("http://127.0.0.1:{}", free_port()?);
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let socks = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let hbone = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let logs = tempfile::tempdir()?;
    let (admin_s, socks_s, hbone_s) = (admin.to_string(), socks.to_string(), hbone.to_string());
    let proxy = Process::start_with_env(
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
        env,
        logs.path().join("proxy.log"),
    )?;
    Ok((proxy, admin, socks, logs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_without_configuration_relays_nothing() -> anyhow::Result<()> {
    let echo = EchoServer::start(SocketAddr::from(([127, 0, 0, 1], free_port()?)), "pod").await?;
    let (proxy, admin, socks, _logs) = lone_proxy(&[])?;
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

/// A proxy restarted while the control plane is down starts from its saved
/// configuration and certificates: it keeps carrying allowed traffic over
/// mTLS and keeps refusing what policy denies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restarted_without_control_plane_keeps_policy_and_identity() -> anyhow::Result<()> {
    use ferry_tests::net::who_answers;
    use ferry_tests::two_nodes::{mtls, Cluster};
    use ferry_tests::MeshOptions;

    const N: u8 = 40;
    let options = MeshOptions {
        state_dirs: true,
        ..mtls()
    };
    let mut c = Cluster::start(N, options).await?;
    // The client may reach the backends' port and nothing else.
    let outside = EchoServer::start(SocketAddr::from(([127, N, 3, 1], 7777)), "outside").await?;
    std::fs::write(
        c.mesh.manifests.path().join("policy.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client-egress, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {app: backend}}}], ports: [{port: 9090}]}]\n",
    )?;
    // Only node-a, where the client runs, is sent the policy.
    tokio::task::block_in_place(|| {
        wait_for("the policy on node-a", Duration::from_secs(20), || {
            let dump = c.mesh.config_dump("node-a")?;
            Ok(dump["resources"]["policy"]
                .as_array()
                .is_some_and(|p| p.len() == 1)
                .then_some(()))
        })
    })?;
    let socks = c.socks("node-a")?;
    let backend_b1 = c.ip(2, 11).to_string();
    let outside_ip = c.ip(3, 1).to_string();
    let client = c.client();
    let check = |stage: &'static str| {
        let backend_b1 = backend_b1.clone();
        let outside_ip = outside_ip.clone();
        async move {
            let answered = who_answers(socks, client, &backend_b1, 9090).await;
            assert_eq!(
                answered.ok().as_deref(),
                Some("backend-b1"),
                "{stage}: allowed, across nodes"
            );
            let denied = socks5_connect(socks, client, &outside_ip, 7777)
                .await
                .err()
                .map(|e| e.to_string());
            assert_eq!(
                denied.as_deref(),
                Some("SOCKS5 reply code 2"),
                "{stage}: denied by the egress policy"
            );
        }
    };
    check("before").await;
    // Let the saved configuration catch up with the policy (saved at most
    // once a second), then take the control plane away and restart node-a.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    c.mesh.control_plane.kill();
    tokio::task::block_in_place(|| c.mesh.restart_proxy("node-a"))?;
    let admin = c.mesh.proxy("node-a")?.admin;
    let ready = tokio::task::block_in_place(|| {
        wait_for("the restarted proxy", Duration::from_secs(10), || {
            Ok(http_get(admin, "/healthz/ready")
                .ok()
                .map(|(status, _)| status))
        })
    })?;
    assert_eq!(ready, 200, "ready on its saved configuration");
    check("after a restart without control plane").await;
    let log = c.mesh.proxy("node-a")?.process.log();
    assert!(
        log.contains("started from the saved configuration"),
        "{log}"
    );
    assert!(log.contains("saved workload certificate restored"), "{log}");
    drop(outside);
    Ok(())
}

/// Telemetry never stops the data path: an OTLP setting the proxy cannot
/// honour is logged and tracing is off; the proxy runs.
#[test]
fn an_unusable_otlp_setting_turns_tracing_off_not_the_proxy() -> anyhow::Result<()> {
    let (mut proxy, admin, _, _logs) = lone_proxy(&[
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            "https://127.0.0.1:4317".into(),
        ),
        (
            "OTEL_EXPORTER_OTLP_COMPRESSION".into(),
            "zstd-please".into(),
        ),
    ])?;
    wait_for("the admin listener", Duration::from_secs(10), || {
        Ok(http_get(admin, "/healthz/ready").ok().map(|_| ()))
    })
    .map_err(|e| e.context(proxy.log()))?;
    assert!(proxy.is_running(), "{}", proxy.log());
    Ok(())
}
