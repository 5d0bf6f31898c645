//! `ferryctl check --pre-install` in a network namespace of its own: what
//! a fresh node lacks fails with a fix (IPv4 forwarding off, a proxy port
//! taken, a Kubernetes older than 1.29), the netfilter features capture
//! needs are tried for real, and once the node is fixed the same checks
//! pass. Needs root (see `netns::root_or_skip`).

use std::process::Command;

use ferry_tests::apiserver::ApiServer;
use ferry_tests::netns::{root_or_skip, Netns};
use serde_json::Value;

/// Runs the check inside `ns`: exit code and the report.
fn check(
    ns: &Netns,
    cni: &std::path::Path,
    kubeconfig: &std::path::Path,
) -> anyhow::Result<(i32, Value)> {
    let ferryctl = ferry_tests::binary("ferryctl")?;
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(ferryctl)
        .args(["check", "--pre-install", "--output", "json", "--cni-dir"])
        .arg(cni)
        .env("KUBECONFIG", kubeconfig)
        .output()?;
    let report: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status.code().unwrap_or(-1), report))
}

fn find<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["check"] == name))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_fails_with_fixes_and_passes_once_fixed() -> anyhow::Result<()> {
    if !root_or_skip("a_fresh_node_fails_with_fixes_and_passes_once_fixed") {
        return Ok(());
    }
    let ns = Netns::new(&format!("fpre{}", std::process::id() % 10_000))?;
    let dir = tempfile::tempdir()?;
    let cni = dir.path().join("cni");
    std::fs::create_dir(&cni)?;
    std::fs::write(
        cni.join("10-flannel.conflist"),
        r#"{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel"},{"type":"portmap"}]}"#,
    )?;
    // The cluster's API server, inside the node's namespace, too old.
    let api = ApiServer::start_on_std(ns.listen_tcp("127.0.0.1:6443".parse()?)?)?;
    api.set_version(1, 28);
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    // Something already holds the proxy's metrics port.
    let taken = ns.listen_tcp("0.0.0.0:15020".parse()?)?;

    let (code, report) = tokio::task::block_in_place(|| check(&ns, &cni, &kubeconfig))?;
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false);
    for (name, fix) in [
        ("IPv4 forwarding", "sysctl -w net.ipv4.ip_forward=1"),
        ("port 15020", "ss -ltnp"),
        ("Kubernetes version", "1.29 or later"),
    ] {
        let c = find(&report, name);
        assert_eq!(c["status"], "fail", "{name}: {c}");
        assert!(
            c["fix"].as_str().unwrap_or_default().contains(fix),
            "{name}: {c}"
        );
    }
    assert_eq!(find(&report, "port 15001")["status"], "pass");
    let cni_check = find(&report, "CNI");
    assert_eq!(cni_check["status"], "pass");
    assert!(cni_check["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("flannel, portmap"));
    // The netfilter features capture needs, tried for real here.
    let probes: Vec<&Value> = report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["check"]
                .as_str()
                .unwrap_or_default()
                .starts_with("netfilter: ")
        })
        .collect();
    assert_eq!(probes.len(), 4, "{report:#}");
    assert!(probes.iter().all(|c| c["status"] == "pass"), "{probes:?}");

    // Fixed: forwarding on, the port free, the cluster upgraded.
    ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    drop(taken);
    api.set_version(1, 31);
    let (_, report) = tokio::task::block_in_place(|| check(&ns, &cni, &kubeconfig))?;
    for name in ["IPv4 forwarding", "port 15020", "Kubernetes version"] {
        assert_eq!(find(&report, name)["status"], "pass", "{name}: {report:#}");
    }
    assert!(find(&report, "Kubernetes version")["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("v1.31.0"));
    Ok(())
}
