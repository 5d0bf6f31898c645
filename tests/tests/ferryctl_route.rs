//! `ferryctl route` on the example manifests: the JSON shape of the issue,
//! with the proxy's own routing code behind it.

use std::process::Command;

use serde_json::{json, Value};

fn route(from: &str, to: &str) -> anyhow::Result<(Option<i32>, Value)> {
    let out = Command::new(ferry_tests::binary("ferryctl")?)
        .args(["route", "--manifests"])
        .arg(ferry_tests::repo_root().join("deploy/examples"))
        .args(["--from", from, "--to", to, "--output", "json"])
        .output()?;
    let value = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout)?
    };
    Ok((out.status.code(), value))
}

#[test]
fn service_by_name_with_named_target_ports_and_affinity() -> anyhow::Result<()> {
    let (code, v) = route("default/client", "backend.shop.svc.cluster.local:80")?;
    assert_eq!(code, Some(0));
    assert_eq!(v["service"], "shop/backend");
    assert_eq!(
        v["mode"], "passthrough",
        "client runs on node-b outside the mesh (namespace default is not enrolled): \
         no identity, so plaintext to backend-1 on node-a, policed there"
    );
    assert_eq!(
        v["affinity"],
        json!({"type": "ClientIP", "timeout_seconds": 600})
    );
    let ports: Vec<(String, u64)> = v["endpoints"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .map(|e| {
            (
                e["pod"].as_str().unwrap_or("").to_string(),
                e["port"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("shop/backend-1".to_string(), 9090),
            ("shop/backend-2".to_string(), 9090),
            ("shop/backend-3".to_string(), 9091)
        ]
    );
    // A mesh pod on node-a: backend-1 directly, the others through HBONE.
    let (_, from_mesh) = route("shop/frontend", "backend.shop:80")?;
    assert_eq!(from_mesh["mode"], "hbone");
    let modes: Vec<&str> = from_mesh["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["mode"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(modes, ["direct", "hbone", "hbone"]);
    Ok(())
}

#[test]
fn node_port_with_external_traffic_policy_local_from_a_pod_reaches_every_endpoint(
) -> anyhow::Result<()> {
    // externalTrafficPolicy: Local restricts clients outside the cluster
    // (the lab checks that a node without the pod refuses them); a pod
    // reaching a node port is sent to every endpoint, as kube-proxy sends
    // pod traffic for external destinations through the cluster chain.
    for node_ip in ["172.30.0.11", "172.30.0.12"] {
        let (_, routed) = route("default/client", &format!("{node_ip}:30080"))?;
        assert_eq!(routed["service"], "shop/frontend", "{node_ip}");
        assert_ne!(routed["mode"], "refused", "{node_ip}: {routed}");
        assert_eq!(
            routed["endpoints"],
            json!([routed["endpoints"][0].clone()]),
            "{node_ip}"
        );
        assert_eq!(routed["endpoints"][0]["pod"], "shop/frontend", "{node_ip}");
    }
    Ok(())
}

#[test]
fn terminating_fallback_external_name_and_pod_ip() -> anyhow::Result<()> {
    // legacy: hand-written slice, internalTrafficPolicy Local; from shop/frontend on node-a.
    let (_, legacy) = route("shop/frontend", "10.96.0.30:80")?;
    assert_eq!(legacy["endpoints"].as_array().map(Vec::len), Some(1));
    assert_eq!(legacy["endpoints"][0]["address"], "10.244.1.11");
    assert_eq!(legacy["mode"], "direct");

    let (_, search) = route("shop/frontend", "search:443")?;
    assert_eq!(search["mode"], "passthrough");
    assert_eq!(search["external_name"], "search.example.com");

    let (_, pod) = route("shop/frontend", "10.244.2.20:5432")?;
    assert_eq!(pod["service"], Value::Null);
    assert_eq!(pod["mode"], "hbone");
    assert_eq!(pod["endpoints"][0]["pod"], "shop/db-0");
    Ok(())
}

#[test]
fn bad_input_is_a_usage_error() -> anyhow::Result<()> {
    let (code, _) = route("shop/nobody", "10.96.0.20:80")?;
    assert_eq!(code, Some(2));
    let (code, _) = route("shop/frontend", "no-port")?;
    assert_eq!(code, Some(2));
    Ok(())
}

/// Three nodes in two zones, a `PreferClose` service with a pod in each
/// zone but one pod hinted for zone-b only, from manifests in a folder of
/// the test's own.
const ZONED: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {topology.kubernetes.io/zone: zone-a}}
status: {addresses: [{type: InternalIP, address: 172.31.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-b, labels: {topology.kubernetes.io/zone: zone-b}}
status: {addresses: [{type: InternalIP, address: 172.31.0.2}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-c}
status: {addresses: [{type: InternalIP, address: 172.31.0.3}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec:
  clusterIP: 10.96.5.5
  selector: {app: api}
  trafficDistribution: PreferClose
  ports: [{port: 80, targetPort: 8080}]
"#;

fn zoned_pod(name: &str, node: &str, ip: &str, app: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, image: x}}]}}\n\
         status: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: \"True\"}}]}}\n"
    )
}

#[test]
fn prefer_close_keeps_a_connection_in_its_zone_and_says_why() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut manifests = ZONED.to_string();
    for (name, node, ip, app) in [
        ("api-a", "node-a", "10.20.1.1", "api"),
        ("api-b1", "node-b", "10.20.2.1", "api"),
        ("api-b2", "node-b", "10.20.2.2", "api"),
        ("client-a", "node-a", "10.20.1.9", "client"),
        ("client-b", "node-b", "10.20.2.9", "client"),
        ("client-c", "node-c", "10.20.3.9", "client"),
    ] {
        manifests.push_str(&zoned_pod(name, node, ip, app));
    }
    std::fs::write(dir.path().join("cluster.yaml"), manifests)?;
    let route_in = |from: &str, output: &str| -> anyhow::Result<(Option<i32>, String)> {
        let out = Command::new(ferry_tests::binary("ferryctl")?)
            .args(["route", "--manifests"])
            .arg(dir.path())
            .args(["--from", from, "--to", "api:80", "--output", output])
            .output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    };
    // (client, endpoints, decision)
    let cases = [
        ("default/client-a", vec!["10.20.1.1"], "same_zone"),
        (
            "default/client-b",
            vec!["10.20.2.1", "10.20.2.2"],
            "same_zone",
        ),
        (
            "default/client-c",
            vec!["10.20.1.1", "10.20.2.1", "10.20.2.2"],
            "everywhere",
        ),
    ];
    for (from, endpoints, decision) in cases {
        let (code, json) = route_in(from, "json")?;
        assert_eq!(code, Some(0), "{from}: {json}");
        let v: Value = serde_json::from_str(&json)?;
        let got: Vec<&str> = v["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["address"].as_str())
            .collect();
        assert_eq!(got, endpoints, "{from}");
        assert_eq!(v["topology"]["decision"], decision, "{from}");
        assert_eq!(v["topology"]["traffic_distribution"], "PreferClose");
    }
    let (_, table) = route_in("default/client-a", "table")?;
    assert!(
        table.contains(
            "topology:      zone zone-a only (hints.forZones) (node node-a, zone zone-a, trafficDistribution PreferClose)"
        ),
        "{table}"
    );
    let (_, table) = route_in("default/client-c", "table")?;
    assert!(
        table.contains("every zone: the node has no topology.kubernetes.io/zone label"),
        "{table}"
    );
    Ok(())
}
