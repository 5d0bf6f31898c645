//! `ferryctl status` and `ferryctl proxy-config` against the running lab
//! (two control plane replicas): the status agrees with what the lab set
//! up; a NACK provoked on one proxy (`--refuse-resources`) shows, with the
//! proxy's reason, and makes the exit code 1; a replica that stops shows
//! as unreachable; `proxy-config` gives what the proxy's own dump holds;
//! `flows` shows a connection NetworkPolicy denied (and, following, one
//! denied while it watches) and an allowed one, with pods named;
//! `describe pod` gives a pod's identity and certificate, its services and
//! policies, and the route and verdict of a connection it would make;
//! `bug-report` writes one archive with every daemon's state and logs and
//! no key material; `connectivity test` passes, fails when a policy blocks
//! its client, and leaves nothing behind.
//! Needs root (see `netns::root_or_skip`).

use std::process::Command;
use std::time::Duration;

use ferry_tests::netns::root_or_skip;
use ferry_tests::wait_for;
use ferryctl::lab::{control_plane_daemon, Lab, LabOptions};
use serde_json::Value;

/// Runs `ferryctl ARGS --lab NAME`: the exit code, stdout and stderr.
fn ferryctl(lab: &Lab, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(ferry_tests::binary("ferryctl")?)
        .args(args)
        .args(["--lab", &lab.name])
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `ferryctl status --output json`: the exit code and the report.
fn status(lab: &Lab) -> anyhow::Result<(i32, Value)> {
    let (code, stdout, stderr) = ferryctl(lab, &["status", "--output", "json"])?;
    let report = serde_json::from_str(&stdout)
        .map_err(|e| anyhow::anyhow!("status output is not JSON ({e}): {stdout}\n{stderr}"))?;
    Ok((code, report))
}

fn proxy<'a>(report: &'a Value, node: &str) -> &'a Value {
    report["proxies"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["node"] == node))
        .unwrap_or(&Value::Null)
}

const PROBE: &str = "apiVersion: v1
kind: Service
metadata: {name: nack-probe, namespace: shop}
spec:
  clusterIP: 10.96.0.99
  selector: {app: backend}
  ports:
  - {name: http, port: 80, targetPort: api}
";

#[test]
fn status_and_proxy_config_read_the_live_lab() -> anyhow::Result<()> {
    if !root_or_skip("status_and_proxy_config_read_the_live_lab") {
        return Ok(());
    }
    let examples = ferry_tests::repo_root().join("deploy/examples");
    let mut lab = Lab::up_with(
        &examples,
        &format!("fctl{}", std::process::id() % 10_000),
        LabOptions {
            control_plane_replicas: 2,
            ..LabOptions::default()
        },
    )?;
    let nodes: Vec<String> = lab.nodes.iter().map(|n| n.name.clone()).collect();

    // Healthy: both replicas, every node's proxy in sync with the replica
    // its own dump says it streams from, the certificates it holds valid.
    let report = wait_for("a healthy status", Duration::from_secs(20), || {
        let (code, report) = status(&lab)?;
        let in_sync = report["proxies"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["state"] == "in-sync"));
        Ok((code == 0 && report["healthy"] == true && in_sync).then_some(report))
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", lab.logs()))?;
    let replicas: Vec<&str> = report["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(replicas, [control_plane_daemon(1), control_plane_daemon(2)]);
    assert_eq!(report["nodes"]["total"], nodes.len());
    assert_eq!(report["nodes"]["connected"], nodes.len());
    for (node, ip) in lab.nodes.iter().map(|n| (&n.name, n.ip)) {
        let shown = proxy(&report, node);
        assert_eq!(shown["state"], "in-sync", "{shown}");
        let dump = lab.config_dump(node)?;
        let url = dump["xds"]["control_plane"].as_str().unwrap_or_default();
        let replica = shown["replica"].as_str().unwrap_or_default();
        let index = replicas.iter().position(|r| *r == replica).unwrap_or(99);
        let address = report["replicas"][index]["address"].as_str().unwrap_or("?");
        assert!(
            url.contains(address),
            "{node} streams from {url}, status says {replica} ({address})"
        );
        assert!(
            shown["peer"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&format!("{ip}:")),
            "{shown}"
        );
        // Every identity the proxy holds a certificate for is shown valid.
        for cert in dump["certificates"].as_array().into_iter().flatten() {
            let identity = &cert["identity"];
            let listed = report["certificates"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["node"] == node.as_str() && &c["identity"] == identity);
            let listed = listed
                .unwrap_or_else(|| panic!("{node} {identity} not in {}", report["certificates"]));
            assert_eq!(listed["state"], "valid");
            assert_eq!(listed["needed"], true);
        }
    }
    let (code, table, _) = ferryctl(&lab, &["status"])?;
    assert_eq!(code, 0, "{table}");
    assert!(
        table.contains(&format!("PROXIES: {0} of {0} nodes connected", nodes.len())),
        "{table}"
    );
    assert!(table.contains("status: healthy"), "{table}");

    // proxy-config: the proxy's own dump, by section.
    let dump = lab.config_dump("node-a")?;
    let (code, stdout, stderr) = ferryctl(
        &lab,
        &["proxy-config", "node-a", "workloads", "--output", "json"],
    )?;
    assert_eq!(code, 0, "{stderr}");
    let workloads: Value = serde_json::from_str(&stdout)?;
    let keys = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|w| w["key"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(keys(&workloads), keys(&dump["resources"]["workload"]));
    let (code, stdout, _) = ferryctl(
        &lab,
        &["proxy-config", "node-a", "services", "--output", "yaml"],
    )?;
    assert_eq!(code, 0);
    assert!(stdout.contains("key: shop/backend"), "{stdout}");
    let (code, stdout, _) = ferryctl(&lab, &["proxy-config", "node-a"])?;
    assert_eq!(code, 0);
    for section in [
        "WORKLOAD",
        "SERVICE",
        "POLICY",
        "IDENTITY",
        "shop/backend-from-frontend",
    ] {
        assert!(stdout.contains(section), "{section} not in\n{stdout}");
    }
    let (code, _, stderr) = ferryctl(&lab, &["proxy-config", "node-z"])?;
    assert_eq!(code, 2);
    assert!(stderr.contains("no node node-z"), "{stderr}");

    // describe pod: from the live configuration and its node's proxy.
    let describe = |args: &[&str]| -> anyhow::Result<Value> {
        let mut all = vec!["describe", "pod"];
        all.extend_from_slice(args);
        all.extend(["--output", "json"]);
        let (code, stdout, stderr) = ferryctl(&lab, &all)?;
        assert_eq!(code, 0, "{stderr}");
        Ok(serde_json::from_str(&stdout)?)
    };
    let backend = describe(&["shop/backend-1"])?;
    assert_eq!(
        backend["identity"],
        "spiffe://cluster.local/ns/shop/sa/backend"
    );
    let held = lab.config_dump("node-a")?["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["identity"] == backend["identity"])
        .map(|c| c["not_after_unix"].clone());
    assert_eq!(Some(backend["certificate"]["not_after_unix"].clone()), held);
    assert!(
        backend["services"].to_string().contains("shop/backend"),
        "{backend}"
    );
    assert_eq!(
        backend["policies"][0]["policy"],
        "shop/backend-from-frontend"
    );
    assert_eq!(
        backend["policies"][0]["ingress"][0]["peers"],
        serde_json::json!(["shop/frontend"])
    );
    let db = describe(&["shop/db-0", "--to", "backend.shop:80"])?;
    assert_eq!(db["route"]["service"], "shop/backend");
    assert_eq!(db["verdict"]["allowed"], false, "{db}");
    let frontend = describe(&["shop/frontend", "--to", "backend.shop:80"])?;
    assert_eq!(frontend["verdict"]["allowed"], true, "{frontend}");
    let (code, table, _) = ferryctl(
        &lab,
        &["describe", "pod", "shop/db-0", "--to", "backend.shop:80"],
    )?;
    assert_eq!(code, 0);
    assert!(table.contains("policy:        DENIED"), "{table}");
    let (code, _, stderr) = ferryctl(&lab, &["describe", "pod", "shop/nope"])?;
    assert_eq!(code, 2);
    assert!(stderr.contains("no pod shop/nope"), "{stderr}");

    // flows: a denied connection (the backend admits only the frontend;
    // db-0 is a mesh pod on node-b) and an allowed one.
    assert!(lab.curl("shop/db-0", "http://backend.shop/").is_err());
    lab.curl("shop/frontend", "http://backend.shop/")?;
    let flows = |args: &[&str]| -> anyhow::Result<Vec<Value>> {
        let mut all = vec!["flows", "--output", "json"];
        all.extend_from_slice(args);
        let (code, stdout, stderr) = ferryctl(&lab, &all)?;
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<Vec<Value>>(&stdout)
            .map_err(|e| anyhow::anyhow!("flows output ({e}): {stdout}"))
    };
    let denied = wait_for("the denied flow", Duration::from_secs(10), || {
        let denied = flows(&["--verdict", "denied", "--from", "shop/db-0"])?;
        Ok((!denied.is_empty()).then_some(denied))
    })?;
    for flow in &denied {
        assert_eq!(flow["verdict"], "denied", "{flow}");
        assert_eq!(flow["source"]["pod"], "shop/db-0", "{flow}");
        assert_eq!(
            flow["source"]["identity"], "spiffe://cluster.local/ns/shop/sa/db",
            "{flow}"
        );
        // The client's proxy knows the service; the server's sees a pod.
        let (field, prefix) = if flow["reporter"] == "source" {
            (&flow["service"], "backend.shop.svc")
        } else {
            (&flow["destination"]["pod"], "shop/backend-")
        };
        assert!(
            field.as_str().unwrap_or_default().starts_with(prefix),
            "{flow}"
        );
    }
    assert!(
        denied.iter().any(|f| f["outcome"] == "policy_denied"),
        "the destination's proxy records the denial: {denied:?}"
    );
    let allowed = flows(&[
        "--verdict",
        "allowed",
        "--from",
        "shop/frontend",
        "--to",
        "shop/backend",
    ])?;
    assert!(
        allowed.iter().any(|f| f["outcome"] == "completed"
            && f["destination"]["pod"]
                .as_str()
                .unwrap_or_default()
                .starts_with("shop/backend-")),
        "{allowed:?}"
    );
    assert!(flows(&["--verdict", "denied", "--from", "shop/frontend"])?.is_empty());
    // Following: a denial made while it watches shows up, one JSON per line.
    let follower = Command::new(ferry_tests::binary("ferryctl")?)
        .args([
            "flows",
            "--follow",
            "--duration",
            "4s",
            "--last",
            "0",
            "--verdict",
            "denied",
            "--output",
            "json",
            "--lab",
            &lab.name,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    assert!(lab.curl("default/client", "http://backend.shop/").is_err());
    let out = follower.wait_with_output()?;
    assert!(out.status.success());
    let followed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(!followed.is_empty(), "no denial followed");
    assert!(
        followed
            .iter()
            .all(|f| f["verdict"] == "denied" && f["source"]["pod"] == "default/client"),
        "{followed:?}"
    );
    let (code, table, _) = ferryctl(&lab, &["flows", "--verdict", "denied"])?;
    assert_eq!(code, 0);
    assert!(
        table.starts_with("TIME") && table.contains("policy_denied"),
        "{table}"
    );

    // bug-report: everything, and no key material.
    let out = tempfile::tempdir()?;
    let archive = out.path().join("report.tar.gz");
    let archive_arg = archive.display().to_string();
    let (code, stdout, stderr) = ferryctl(&lab, &["bug-report", "--out", &archive_arg])?;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let unpacked = out.path().join("unpacked");
    std::fs::create_dir(&unpacked)?;
    let untar = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()?;
    assert!(untar.success());
    let root = unpacked.join("report");
    let mut expected = vec![
        "README.txt".to_string(),
        "status.json".into(),
        "status.txt".into(),
        "mesh.json".into(),
        "control-plane/control-plane/metrics.txt".into(),
        "control-plane/control-plane/control-plane.log".into(),
        "control-plane/control-plane-2/metrics.txt".into(),
    ];
    for node in &nodes {
        for file in ["config_dump.json", "metrics.txt", "flows.json"] {
            expected.push(format!("nodes/{node}/{file}"));
        }
        expected.push(format!("nodes/{node}/proxy-{node}.log"));
    }
    for file in &expected {
        let path = root.join(file);
        assert!(
            path.metadata().is_ok_and(|m| m.len() > 0),
            "{file} missing or empty in the report:\n{stdout}\n{stderr}"
        );
    }
    let reported: Value = serde_json::from_slice(&std::fs::read(root.join("status.json"))?)?;
    assert_eq!(reported["nodes"]["total"], nodes.len());
    let flows_json = std::fs::read_to_string(root.join("nodes/node-a/flows.json"))?;
    assert!(flows_json.contains("policy_denied"), "{flows_json}");
    let all = Command::new("grep")
        .args(["-rl", "PRIVATE KEY"])
        .arg(&root)
        .output()?;
    assert!(
        all.stdout.is_empty(),
        "key material in {}",
        String::from_utf8_lossy(&all.stdout)
    );

    // connectivity test: passes, and removes what it added.
    let connectivity = |lab: &Lab| -> anyhow::Result<(i32, Value)> {
        let (code, stdout, stderr) = ferryctl(lab, &["connectivity", "test", "--output", "json"])?;
        let report = serde_json::from_str(&stdout)
            .map_err(|e| anyhow::anyhow!("connectivity output ({e}): {stdout}\n{stderr}"))?;
        Ok((code, report))
    };
    let (code, report) = connectivity(&lab)?;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["cleaned_up"], true);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["check"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "pod to pod across nodes, allowed by policy",
            "service by name",
            "service by cluster IP",
            "headless service by name",
            "policy denies another port",
            "mutual TLS on the link between the nodes"
        ]
    );
    assert!(!lab.manifests().join("zz-ferry-connectivity.yaml").exists());
    assert!(!Command::new("ip")
        .args(["netns", "list"])
        .output()?
        .stdout
        .windows(4)
        .any(|w| w == b"-ct0" || w == b"-ct1"));
    // A policy that blocks the test client's egress: the checks through it
    // fail, the denial check still passes, and the exit code says so.
    let block = lab.manifests().join("31-block-connectivity.yaml");
    std::fs::write(
        &block,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: block-client, namespace: ferry-connectivity}\nspec:\n  podSelector:\n    matchLabels: {app: client}\n  policyTypes: [Egress]\n",
    )?;
    let (code, report) = connectivity(&lab)?;
    assert_eq!(code, 1, "{report:#}");
    let status_of = |name: &str| {
        report["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["check"] == name)
            .map(|c| c["status"].clone())
    };
    assert_eq!(
        status_of("service by name"),
        Some("fail".into()),
        "{report:#}"
    );
    assert_eq!(
        status_of("policy denies another port"),
        Some("pass".into()),
        "{report:#}"
    );
    assert_eq!(report["cleaned_up"], true);
    std::fs::remove_file(&block)?;

    // A NACK: node-b's proxy refuses a new service.
    lab.restart_with("node-b", &["--refuse-resources", "service/shop/nack-probe"])?;
    std::fs::write(lab.manifests().join("40-nack-probe.yaml"), PROBE)?;
    let report = wait_for(
        "node-b shown refusing the probe",
        Duration::from_secs(30),
        || {
            let (code, report) = status(&lab)?;
            // node-a takes the probe (it may be a moment behind).
            let shown = proxy(&report, "node-b")["state"] == "nacking"
                && proxy(&report, "node-a")["state"] == "in-sync";
            Ok((code == 1 && shown).then_some(report))
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", lab.logs()))?;
    let b = proxy(&report, "node-b");
    assert_eq!(
        b["rejections"][0]["resource"], "service shop/nack-probe",
        "{b}"
    );
    assert!(
        b["rejections"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("fault injection"),
        "{b}"
    );
    let problems = report["problems"].to_string();
    assert!(
        problems.contains("node node-b: the proxy refuses 1 resource"),
        "{problems}"
    );
    let (code, table, _) = ferryctl(&lab, &["status"])?;
    assert_eq!(code, 1);
    assert!(
        table.contains("REFUSED RESOURCE") && table.contains("service shop/nack-probe"),
        "{table}"
    );

    // Back to its first command: it takes the probe, the mesh is healthy.
    lab.restart("node-b")?;
    wait_for(
        "a healthy status after the fault",
        Duration::from_secs(30),
        || {
            let (code, report) = status(&lab)?;
            Ok((code == 0 && report["healthy"] == true).then_some(()))
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", lab.logs()))?;

    // A replica stops: shown unreachable, its proxies on the other one.
    lab.stop(&control_plane_daemon(2))?;
    let report = wait_for(
        "replica 2 unreachable, every proxy on replica 1",
        Duration::from_secs(30),
        || {
            let (code, report) = status(&lab)?;
            let moved = nodes
                .iter()
                .all(|n| proxy(&report, n)["replica"] == control_plane_daemon(1).as_str());
            Ok((code == 1 && moved).then_some(report))
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", lab.logs()))?;
    assert_eq!(report["replicas"][1]["reachable"], false);
    assert!(
        report["problems"]
            .to_string()
            .contains("control plane control-plane-2"),
        "{}",
        report["problems"]
    );
    Ok(())
}
