//! `ferryctl --kubernetes` against the in-test API server: a control plane
//! with its CA in a Secret and two proxies with service account tokens
//! run on loopback, and the API server knows their pods (as the chart
//! labels them) and port-forwards to them. ferryctl reaches everything
//! through the API server only: the status API by port-forward to the
//! control plane pod (TLS verified against the published CA root, the
//! caller's kubeconfig token reviewed and authorized), the proxies' admin
//! endpoints by port-forward to their pods, logs from the log
//! subresource. Block 127.89.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use ferry_tests::apiserver::{ApiServer, Grant, TokenIdentity};
use ferry_tests::kube::{start_control_plane, start_proxy};
use ferry_tests::{binary, wait_for};
use serde_json::Value;

const BLOCK: u8 = 89;
const PROXY_ACCOUNT: &str = "system:serviceaccount:ferry-system:ferry-proxy";

fn pod(name: &str, component: &str, node: &str, uid: &str, args: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ferry-system, uid: {uid}, labels: {{app.kubernetes.io/part-of: ferry, app.kubernetes.io/name: ferry, app.kubernetes.io/component: {component}}}}}\nspec: {{nodeName: {node}, hostNetwork: true, serviceAccountName: ferry-{component}, containers: [{{name: {component}, image: ferry, args: [{args}]}}]}}\nstatus: {{phase: Running, podIP: 172.30.0.99}}\n"
    )
}

/// Runs ferryctl with the kubeconfig: exit code, stdout, stderr.
fn ferryctl(kubeconfig: &std::path::Path, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(binary("ferryctl")?)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferryctl_reads_a_cluster_through_its_api_server() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    for file in [
        "00-cluster.yaml",
        "10-pods.yaml",
        "20-services.yaml",
        "30-policy.yaml",
    ] {
        server.apply_all(&std::fs::read_to_string(
            ferry_tests::repo_root().join("deploy/examples").join(file),
        )?)?;
    }
    server.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: ferry-system}\n")?;
    let cp_ip = format!("127.{BLOCK}.0.1");
    server.apply(&pod(
        "ferry-control-plane-0",
        "control-plane",
        "node-a",
        "uid-cp",
        &format!("--server-name, \"{cp_ip}\""),
    ))?;
    server.apply(&pod("ferry-proxy-a", "proxy", "node-a", "uid-a", ""))?;
    server.apply(&pod("ferry-proxy-b", "proxy", "node-b", "uid-b", ""))?;
    for (token, pod, uid) in [
        ("token-a", "ferry-proxy-a", "uid-a"),
        ("token-b", "ferry-proxy-b", "uid-b"),
    ] {
        server.add_token(
            token,
            TokenIdentity {
                username: PROXY_ACCOUNT.into(),
                audiences: vec!["ferry".into()],
                pod: Some((pod.into(), uid.into())),
                node: None,
            },
        );
    }
    server.add_token("token-operator", TokenIdentity::user("alice"));
    server.grant(Grant::mesh_status("alice", "ferry-system"));

    let dir = tempfile::tempdir()?;
    let cp_kubeconfig = dir.path().join("cp-kubeconfig");
    std::fs::write(&cp_kubeconfig, server.kubeconfig())?;
    let cp = start_control_plane(
        dir.path(),
        &cp_kubeconfig,
        "ferry-control-plane-0",
        BLOCK,
        1,
    )?;
    let root = tokio::task::block_in_place(|| {
        wait_for("the published CA root", Duration::from_secs(30), || {
            Ok(server
                .get("v1", "ConfigMap", "ferry-system", "ferry-ca-root")
                .and_then(|m| m["data"]["ca.pem"].as_str().map(str::to_string)))
        })
    })?;
    std::fs::write(dir.path().join("ca.pem"), &root)?;
    let a = start_proxy(dir.path(), &cp, "node-a", "token-a", "proxy-a", BLOCK, 1)?;
    let b = start_proxy(dir.path(), &cp, "node-b", "token-b", "proxy-b", BLOCK, 2)?;
    // What the API server's port-forwards and logs reach.
    server.forward("ferry-system", "ferry-control-plane-0", 15010, cp.listen);
    server.forward("ferry-system", "ferry-control-plane-0", 15014, cp.metrics);
    server.forward("ferry-system", "ferry-proxy-a", 15000, a.admin);
    server.forward("ferry-system", "ferry-proxy-b", 15000, b.admin);
    server.pod_log("ferry-system", "ferry-control-plane-0", &cp.log);
    server.pod_log("ferry-system", "ferry-proxy-a", &a.log);
    server.pod_log("ferry-system", "ferry-proxy-b", &b.log);

    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig_with_token("token-operator"))?;
    let status = |kubeconfig: &std::path::Path| -> anyhow::Result<(i32, Value, String)> {
        let (code, stdout, stderr) =
            ferryctl(kubeconfig, &["status", "--kubernetes", "--output", "json"])?;
        let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        Ok((code, report, stderr))
    };
    let report = tokio::task::block_in_place(|| {
        wait_for(
            "a healthy status through the API server",
            Duration::from_secs(30),
            || {
                let (code, report, _) = status(&kubeconfig)?;
                let in_sync = report["proxies"]
                    .as_array()
                    .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["state"] == "in-sync"));
                Ok((code == 0 && in_sync).then_some(report))
            },
        )
    })
    .map_err(|e| {
        let (_, _, stderr) = status(&kubeconfig).unwrap_or_default();
        anyhow::anyhow!("{e:#}\n{stderr}\n{}", cp.process.log())
    })?;
    assert_eq!(report["replicas"][0]["name"], "ferry-control-plane-0");
    assert_eq!(
        report["replicas"][0]["address"],
        "pod/ferry-control-plane-0"
    );
    assert_eq!(
        report["nodes"],
        serde_json::json!({"total": 2, "connected": 2})
    );
    // Proxies authenticate with tokens: no node credential to expire.
    assert!(report["proxies"][0]
        .get("credential_expires_in_seconds")
        .is_none());

    let blocking = |args: &[&str]| tokio::task::block_in_place(|| ferryctl(&kubeconfig, args));
    // proxy-config: the proxy's own dump, through a port-forward.
    let (code, stdout, stderr) = blocking(&[
        "proxy-config",
        "node-b",
        "workloads",
        "--kubernetes",
        "--output",
        "json",
    ])?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("shop/db-0"), "{stdout}");
    // describe: live configuration and the node's certificate.
    let (code, stdout, stderr) = blocking(&[
        "describe",
        "pod",
        "shop/db-0",
        "--to",
        "backend.shop:80",
        "--kubernetes",
        "--output",
        "json",
    ])?;
    assert_eq!(code, 0, "{stderr}");
    let db: Value = serde_json::from_str(&stdout)?;
    assert_eq!(db["identity"], "spiffe://cluster.local/ns/shop/sa/db");
    assert!(db["certificate"]["not_after_unix"].is_u64(), "{db}");
    assert_eq!(db["verdict"]["allowed"], false, "{db}");
    // flows: every node's log, read through the API server.
    let (code, stdout, stderr) = blocking(&["flows", "--kubernetes", "--output", "json"])?;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        serde_json::from_str::<Vec<Value>>(&stdout).is_ok(),
        "{stdout}"
    );
    // bug-report: logs from the log subresource, metrics by port-forward.
    let archive = dir.path().join("report.tar.gz");
    let (code, stdout, stderr) = blocking(&[
        "bug-report",
        "--kubernetes",
        "--out",
        &archive.display().to_string(),
    ])?;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for file in [
        "control-plane/ferry-control-plane-0/metrics.txt",
        "control-plane/ferry-control-plane-0/ferry-control-plane-0.log",
        "nodes/node-a/config_dump.json",
        "nodes/node-b/ferry-proxy-b.log",
        "mesh.json",
    ] {
        assert!(
            stdout.contains(file),
            "{file} not in the report:\n{stdout}\n{stderr}"
        );
    }
    assert!(!stdout.contains("not collected"), "{stdout}");
    // The connectivity test needs pods it can run: the lab only.
    let (code, _, stderr) = blocking(&["connectivity", "test", "--kubernetes"])?;
    assert_eq!(code, 2);
    assert!(stderr.contains("lab only"), "{stderr}");

    // Nobody anonymous: a kubeconfig without a token is told what to do;
    // a token RBAC does not allow is refused by the control plane.
    let anonymous = dir.path().join("anonymous");
    std::fs::write(&anonymous, server.kubeconfig())?;
    let (code, report, _) = tokio::task::block_in_place(|| status(&anonymous))?;
    assert_eq!(code, 2, "{report}");
    assert!(
        report["replicas"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("--token-file"),
        "{report}"
    );
    server.add_token("token-bob", TokenIdentity::user("bob"));
    let bob = dir.path().join("bob");
    std::fs::write(&bob, server.kubeconfig_with_token("token-bob"))?;
    let (code, report, _) = tokio::task::block_in_place(|| status(&bob))?;
    assert_eq!(code, 2, "{report}");
    assert!(
        report["replicas"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("bob may not get meshstatus.ferry.dev"),
        "{report}"
    );
    Ok(())
}
