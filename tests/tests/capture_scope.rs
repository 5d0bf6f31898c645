//! Capture stays in its lane: on a node that also runs kube-proxy (a
//! stand-in here, `ferryctl::lab::kube_proxy`), the proxy takes only
//! connections with a mesh workload at one end, and leaves the Services of
//! pods outside the mesh to kube-proxy; with `--kube-proxy-replacement` it
//! serves them itself (a cluster without kube-proxy, the lab's default).
//! The example cluster plus a Service backed by a pod outside the mesh.
//! Needs root (see `netns::root_or_skip`).

use std::time::Duration;

use ferry_tests::netns::root_or_skip;
use ferry_tests::{prom, wait_for};
use ferryctl::lab::{Lab, LabOptions};

/// A web server outside the mesh (namespace `default` is not enrolled) on
/// node-a, behind its own Service.
const OUTSIDE_THE_MESH: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: legacy-web, namespace: default, labels: {app: legacy-web}}
spec: {nodeName: node-a, containers: [{name: web, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.244.1.40, conditions: [{type: Ready, status: \"True\"}]}
---
apiVersion: v1
kind: Service
metadata: {name: legacy-web, namespace: default}
spec: {clusterIP: 10.96.0.40, selector: {app: legacy-web}, ports: [{port: 80, targetPort: http}]}
";

/// Connections the two proxies report having opened for `source_workload`
/// (as either end), per destination service.
fn opened_by(lab: &Lab, source_workload: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut seen = Vec::new();
    for node in ["node-a", "node-b"] {
        let text = lab.exec_in(node, "curl", &["-sf", "127.0.0.1:15000/metrics"])?;
        for s in prom::parse(&text) {
            if s.name == "ferry_connections_opened_total"
                && s.labels.get("source_workload").map(String::as_str) == Some(source_workload)
            {
                let service = s
                    .labels
                    .get("destination_service")
                    .cloned()
                    .unwrap_or_default();
                seen.push((format!("{node}: {service}"), s.value));
            }
        }
    }
    Ok(seen)
}

fn manifests() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    ferry_tests::copy_dir(
        &ferry_tests::repo_root().join("deploy/examples"),
        dir.path(),
    )?;
    std::fs::write(
        dir.path().join("90-outside-the-mesh.yaml"),
        OUTSIDE_THE_MESH,
    )?;
    Ok(dir)
}

#[test]
fn beside_kube_proxy_the_proxy_takes_only_mesh_traffic() -> anyhow::Result<()> {
    if !root_or_skip("beside_kube_proxy_the_proxy_takes_only_mesh_traffic") {
        return Ok(());
    }
    let manifests = manifests()?;
    let lab = Lab::up_with(
        manifests.path(),
        &format!("fk{}", std::process::id() % 10_000),
        LabOptions {
            kube_proxy: true,
            ..Default::default()
        },
    )?;
    let logs = || lab.logs();

    // kube-proxy's jump went in first; each proxy puts its own back ahead
    // of it (a mesh pod's Service traffic must reach capture before
    // kube-proxy's DNAT).
    for node in ["node-a", "node-b"] {
        wait_for(
            &format!("capture jumps first again on {node}"),
            Duration::from_secs(10),
            || {
                let rules = lab.exec_in(node, "iptables", &["-t", "nat", "-S", "PREROUTING"])?;
                let jumps: Vec<&str> = rules.lines().filter(|l| l.starts_with("-A ")).collect();
                Ok((jumps.len() == 3
                    && jumps[0].ends_with("-j FERRY_OUTBOUND")
                    && jumps[1].ends_with("-j FERRY_INBOUND")
                    && jumps[2].ends_with("-j KUBE-SERVICES"))
                .then_some(()))
            },
        )
        .map_err(|e| e.context(logs()))?;
    }

    // A pod outside the mesh to a Service outside the mesh: kube-proxy's
    // (the stand-in DNATs it); neither proxy sees it.
    let answer = lab.curl("default/client", "http://10.96.0.40/")?;
    assert!(answer.contains("legacy-web"), "{answer}");
    assert_eq!(
        opened_by(&lab, "client")?,
        vec![],
        "a proxy took a connection outside the mesh\n{}",
        logs()
    );

    // The same pod to a Service with mesh endpoints: ours, so that the
    // mesh pods' inbound policy sees it: the frontend admits it, the
    // backend's policy (only the frontend) refuses it.
    let answer = lab.curl("default/client", "http://10.96.0.10/")?;
    assert!(answer.contains("frontend"), "{answer}");
    let seen = opened_by(&lab, "client")?;
    assert!(
        seen.iter()
            .any(|(k, n)| k.contains("frontend.shop") && *n >= 1.0),
        "{seen:?}\n{}",
        logs()
    );
    assert!(
        lab.curl("default/client", "http://10.96.0.21/").is_err(),
        "the backend's policy was bypassed\n{}",
        logs()
    );

    // A mesh pod's traffic is the mesh's wherever it goes, a Service
    // outside the mesh included.
    let answer = lab.curl("shop/frontend", "http://10.96.0.40/")?;
    assert!(answer.contains("legacy-web"), "{answer}");
    let seen = opened_by(&lab, "frontend")?;
    assert!(
        seen.iter().any(|(k, _)| k.contains("legacy-web.default")),
        "{seen:?}\n{}",
        logs()
    );
    drop(lab);

    // Replacing kube-proxy (no stand-in), the proxy serves the Service
    // outside the mesh for the pod outside the mesh.
    let lab = Lab::up_with(
        manifests.path(),
        &format!("fm{}", std::process::id() % 10_000),
        LabOptions::default(),
    )?;
    let answer = lab.curl("default/client", "http://10.96.0.40/")?;
    assert!(answer.contains("legacy-web"), "{answer}");
    let seen = opened_by(&lab, "client")?;
    assert!(
        seen.iter().any(|(k, _)| k.contains("legacy-web.default")),
        "{seen:?}\n{}",
        lab.logs()
    );
    Ok(())
}
