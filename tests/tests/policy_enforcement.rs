//! NetworkPolicy enforced by the real proxies on loopback: ingress judged
//! at the destination node against the verified peer identity, egress at
//! the source node, same node and across nodes; a policy update closes an
//! open connection it no longer allows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_tests::net::{read_banner, socks5_connect, who_answers, EchoServer};
use ferry_tests::{LoopbackMesh, MeshOptions, NodeSpec};
use tokio::io::AsyncReadExt;

const N: u8 = 36;

fn pods() -> String {
    let pod = |name: &str, node: &str, ip: String, app: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}\nspec:\n  nodeName: {node}\n  serviceAccountName: {app}\n  containers: [{{name: c, image: echo, ports: [{{name: api, containerPort: 9090}}]}}]\nstatus:\n  phase: Running\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n---\n"
        )
    };
    let mut out = format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nstatus: {{addresses: [{{type: InternalIP, address: 127.{N}.0.1}}]}}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: node-b}}\nstatus: {{addresses: [{{type: InternalIP, address: 127.{N}.0.2}}]}}\n---\n"
    );
    out += &pod("client", "node-a", format!("127.{N}.1.10"), "client");
    out += &pod("backend-a", "node-a", format!("127.{N}.1.11"), "backend");
    out += &pod("backend-b", "node-b", format!("127.{N}.2.11"), "backend");
    out
}

fn backend_ingress_from(app: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: backend-ingress, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: backend}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: {app}}}}}}}], ports: [{{port: api}}]}}]\n"
    )
}

fn socks_code(err: &std::io::Error) -> String {
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_enforced_on_both_ends_and_updates_cut_connections() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("pods.yaml"), pods())?;
    std::fs::write(
        dir.path().join("policy.yaml"),
        backend_ingress_from("frontend"),
    )?;
    let _a = EchoServer::start(format!("127.{N}.1.11:9090").parse()?, "backend-a").await?;
    let _b = EchoServer::start(format!("127.{N}.2.11:9090").parse()?, "backend-b").await?;
    let nodes = [
        NodeSpec::new("node-a", &format!("127.{N}.0.1"))?,
        NodeSpec::new("node-b", &format!("127.{N}.0.2"))?,
    ];
    let options = MeshOptions {
        pki: true,
        ..MeshOptions::default()
    };
    let mesh =
        tokio::task::block_in_place(|| LoopbackMesh::start_with(dir.path(), &nodes, options))?;
    tokio::task::block_in_place(|| {
        mesh.wait_all("config, policy and certificates", |d| {
            d["resources"]["policy"]
                .as_array()
                .is_some_and(|p| p.len() == 1)
                && d["certificates"].as_array().is_some_and(|c| !c.is_empty())
        })
    })?;
    let socks = mesh.proxy("node-a")?.socks5;
    let client = format!("127.{N}.1.10").parse()?;
    let backend_a = format!("127.{N}.1.11");
    let backend_b = format!("127.{N}.2.11");

    // Only app=frontend may reach the backends: the client is refused on the
    // same node (judged by node-a: SOCKS5 "connection not allowed by
    // ruleset", RFC 1928 code 2) and across nodes (judged by node-b after
    // mTLS, which answers 403). Node-a answers SOCKS5 once nothing it
    // judges refuses the connection, before the tunnel opens; node-b's
    // refusal then resets the client's connection before a byte of the
    // backend's.
    let same = socks5_connect(socks, client, &backend_a, 9090)
        .await
        .unwrap_err();
    assert!(socks_code(&same).contains("reply code 2"), "{same}");
    let mut cross = socks5_connect(socks, client, &backend_b, 9090).await?;
    let mut first = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(10), cross.read(&mut first)).await {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a connection node-b denies was not reset: {other:?}"),
    }
    let dump_b = tokio::task::block_in_place(|| mesh.config_dump("node-b"))?;
    assert!(
        dump_b["policy"]["denied"].as_u64() >= Some(1),
        "{}",
        dump_b["policy"]
    );

    // Allow the client: both succeed.
    let copy = mesh.manifests.path().join("policy.yaml");
    std::fs::write(&copy, backend_ingress_from("client"))?;
    let allowed = ferry_tests::wait_for_async(
        "the client to be allowed",
        Duration::from_secs(20),
        || async { Ok(who_answers(socks, client, &backend_b, 9090).await.ok()) },
    )
    .await?;
    assert_eq!(allowed, "backend-b");
    assert_eq!(
        who_answers(socks, client, &backend_a, 9090).await?,
        "backend-a"
    );

    // An open connection across nodes, then the policy takes the permission back.
    let mut open = socks5_connect(socks, client, &backend_b, 9090).await?;
    assert_eq!(read_banner(&mut open).await?, "backend-b");
    std::fs::write(&copy, backend_ingress_from("frontend"))?;
    let mut buf = [0u8; 16];
    let ended = tokio::time::timeout(Duration::from_secs(20), open.read(&mut buf)).await;
    match ended {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("the connection was not closed by the policy update: {other:?}"),
    }
    let dump_b = tokio::task::block_in_place(|| mesh.config_dump("node-b"))?;
    assert_eq!(
        dump_b["policy"]["closed_by_update"], 1,
        "{}",
        dump_b["policy"]
    );

    // Egress at the source: the client may only talk to backend-a.
    std::fs::write(&copy, backend_ingress_from("client"))?;
    ferry_tests::wait_for_async(
        "the client to be allowed again",
        Duration::from_secs(20),
        || async { Ok(who_answers(socks, client, &backend_b, 9090).await.ok()) },
    )
    .await?;
    std::fs::write(
        mesh.manifests.path().join("egress.yaml"),
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: client-egress, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 127.{N}.1.11/32}}}}]}}]\n"
        ),
    )?;
    let refused =
        ferry_tests::wait_for_async("egress to be enforced", Duration::from_secs(20), || async {
            Ok(socks5_connect(socks, client, &backend_b, 9090)
                .await
                .err()
                .map(|e| e.to_string())
                .filter(|e| e.contains("reply code 2")))
        })
        .await?;
    assert!(
        refused.contains("reply code 2"),
        "judged at the source: {refused}"
    );
    assert_eq!(
        who_answers(socks, client, &backend_a, 9090).await?,
        "backend-a"
    );
    Ok(())
}
