//! The example cluster (deploy/examples) as network namespaces: two nodes,
//! their pods with unmodified HTTP servers, an outside client, the control
//! plane with the mesh CA, one proxy per node with capture, DNS and HBONE.
//! Pods use plain curl with service names and addresses. Needs root (see
//! `netns::root_or_skip`).

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_tests::netns::root_or_skip;
use ferry_tests::wait_for;
use ferryctl::lab::Lab;

/// Rewrites the manifest document of `kind` `name` in `file` of the lab's
/// manifests (the control plane watches them).
fn edit(lab: &Lab, file: &str, name: &str, change: impl Fn(&str) -> String) -> anyhow::Result<()> {
    let path = lab.manifests().join(file);
    let text = std::fs::read_to_string(&path)?;
    let docs: Vec<String> = text
        .split("\n---\n")
        .map(|doc| {
            if doc.contains(&format!("name: {name}\n")) || doc.contains(&format!("name: {name},")) {
                change(doc)
            } else {
                doc.to_string()
            }
        })
        .collect();
    anyhow::ensure!(
        docs.join("\n---\n") != text,
        "{file}: nothing to change for {name}"
    );
    std::fs::write(&path, docs.join("\n---\n"))?;
    Ok(())
}

/// Who answers `url` from `pod`, `count` times (each a new connection).
fn answers(lab: &Lab, pod: &str, url: &str, count: usize) -> anyhow::Result<Vec<String>> {
    (0..count).map(|_| lab.curl(pod, url)).collect()
}

#[test]
fn the_example_cluster_serves_through_the_mesh() -> anyhow::Result<()> {
    if !root_or_skip("the_example_cluster_serves_through_the_mesh") {
        return Ok(());
    }
    let examples = ferry_tests::repo_root().join("deploy/examples");
    let lab = Lab::up(&examples, &format!("fl{}", std::process::id() % 10_000))?;
    let logs = || lab.logs();

    // The checks `ferryctl lab up --check` runs, first: the link capture
    // must see the first tunnel being opened. They cover ClusterIP by name
    // and by address on one node and across nodes, named targetPort,
    // round robin over both nodes, a pod by address, headless and
    // ExternalName through DNS, NodePort and LoadBalancer from outside,
    // the policy, and only TLS on the link between the nodes.
    for r in lab.check_examples() {
        assert!(r.ok, "{}: {}\n{}", r.what, r.saw, logs());
    }

    // ClientIP affinity: the example backend service keeps one backend.
    let seen: BTreeSet<String> = answers(&lab, "shop/frontend", "http://backend.shop/", 6)?
        .into_iter()
        .collect();
    assert_eq!(
        seen.len(),
        1,
        "ClientIP affinity keeps one backend: {seen:?}"
    );

    // An unmodified echo server and a plain TCP client: bytes go through
    // the mesh (frontend on node-a, db-0 on node-b, HBONE) unchanged.
    let _echo = lab.spawn_in(
        "shop/db-0",
        "python3",
        &["-c", "import socketserver\nclass H(socketserver.StreamRequestHandler):\n    def handle(self):\n        for line in self.rfile:\n            self.wfile.write(line)\nsocketserver.ThreadingTCPServer.allow_reuse_address = True\nsocketserver.ThreadingTCPServer(('0.0.0.0', 7000), H).serve_forever()\n"],
    )?;
    let echoed = wait_for("the echo server", Duration::from_secs(10), || {
        Ok(lab
            .exec_in(
                "shop/frontend",
                "python3",
                &["-c", "import socket\ns = socket.create_connection(('10.244.2.20', 7000), 5)\ns.sendall(b'ferry echo 123\\n')\nprint(s.makefile().readline().strip())\n"],
            )
            .ok()
            .filter(|out| !out.trim().is_empty()))
    })?;
    assert_eq!(echoed.trim(), "ferry echo 123");

    // Plaintext from outside the mesh to a mesh pod is policed by the
    // destination's proxy (inbound plaintext): the client may reach the
    // frontend but not a backend, on another node or on its own.
    assert_eq!(
        lab.curl("default/client", "http://10.244.1.10:8080/")?,
        "shop/frontend"
    );
    assert!(lab
        .curl("default/client", "http://10.244.1.11:9090/")
        .is_err());
    assert!(lab
        .curl("default/client", "http://10.244.2.11:9090/")
        .is_err());
    let denied = |node: &str| -> anyhow::Result<u64> {
        Ok(lab.config_dump(node)?["policy"]["denied"]
            .as_u64()
            .unwrap_or(0))
    };
    assert!(denied("node-a")? >= 1, "node-a refused nothing\n{}", logs());
    assert!(denied("node-b")? >= 1, "node-b refused nothing\n{}", logs());

    // A backend becomes unready, then another is removed, while a client
    // keeps connecting: once the proxy has the change, no connection goes
    // to it.
    edit(&lab, "10-pods.yaml", "backend-2", |doc| {
        doc.replace(
            "{type: Ready, status: \"True\"}",
            "{type: Ready, status: \"False\"}",
        )
    })?;
    let mut during = Vec::new();
    wait_for("backend-2 out of rotation", Duration::from_secs(20), || {
        let batch = answers(&lab, "shop/frontend", "http://api.shop/", 4)?;
        let clear = !batch.iter().any(|b| b == "shop/backend-2");
        during.extend(batch);
        Ok(clear.then_some(()))
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", logs()))?;
    let after = answers(&lab, "shop/frontend", "http://api.shop/", 12)?;
    assert!(!after.iter().any(|b| b == "shop/backend-2"), "{after:?}");
    assert!(after.iter().any(|b| b == "shop/backend-1"), "{after:?}");
    assert!(after.iter().any(|b| b == "shop/backend-3"), "{after:?}");
    eprintln!(
        "while backend-2 became unready: {} requests, none failed",
        during.len()
    );

    edit(&lab, "10-pods.yaml", "backend-3", |_| {
        "# backend-3 was deleted\n".into()
    })?;
    wait_for("backend-3 removed", Duration::from_secs(20), || {
        let batch = answers(&lab, "shop/frontend", "http://api.shop/", 4)?;
        Ok((!batch.iter().any(|b| b == "shop/backend-3")).then_some(()))
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", logs()))?;
    let after = answers(&lab, "shop/frontend", "http://api.shop/", 8)?;
    assert!(after.iter().all(|b| b == "shop/backend-1"), "{after:?}");

    // A policy update cuts an open connection it no longer allows: the
    // frontend holds a connection to backend-1 (same node), then the
    // policy stops admitting the frontend.
    let mut held = lab.hold_connection("shop/frontend", "10.244.1.11:9090", 30)?;
    wait_for("held connection open", Duration::from_secs(10), || {
        Ok(held.log().contains("open shop/backend-1").then_some(()))
    })?;
    edit(&lab, "30-policy.yaml", "backend-from-frontend", |doc| {
        doc.replace("matchLabels: {app: frontend}", "matchLabels: {app: nobody}")
    })?;
    wait_for(
        "held connection closed by the update",
        Duration::from_secs(20),
        || Ok(held.log().contains("closed").then_some(())),
    )
    .map_err(|e| anyhow::anyhow!("{e:#}: {}\n{}", held.log(), logs()))?;
    held.kill();
    let dump = lab.config_dump("node-a")?;
    assert!(
        dump["policy"]["closed_by_update"].as_u64() >= Some(1),
        "{}",
        dump["policy"]
    );
    assert!(lab
        .curl("shop/frontend", "http://10.244.1.11:9090/")
        .is_err());
    Ok(())
}

/// The fault suite (`ferryctl lab up --faults`): the control plane killed
/// under load, a proxy restarted while the control plane is away, a
/// destination proxy frozen, admin and DNS floods. Every case must hold.
#[test]
fn the_example_cluster_survives_faults() -> anyhow::Result<()> {
    if !root_or_skip("the_example_cluster_survives_faults") {
        return Ok(());
    }
    let examples = ferry_tests::repo_root().join("deploy/examples");
    let mut lab = Lab::up(&examples, &format!("ff{}", std::process::id() % 10_000))?;
    for r in lab.check_examples() {
        assert!(r.ok, "{}: {}\n{}", r.what, r.saw, lab.logs());
    }
    let mut results = lab.fault_suite();
    drop(lab);
    // Rotation under a transfer: a lab whose certificates live 4 s.
    let mut rotating = ferryctl::lab::Lab::up_with(
        &examples,
        &format!("fr{}", std::process::id() % 10_000),
        ferryctl::lab::LabOptions {
            workload_cert_ttl: Some(Duration::from_secs(4)),
            ..Default::default()
        },
    )?;
    results.extend(rotating.rotation_suite());
    eprintln!("{}", ferryctl::lab::faults::table(&results));
    for r in &results {
        eprintln!(
            "{} fault: {}: {}",
            if r.ok { "ok  " } else { "FAIL" },
            r.case,
            r.saw
        );
    }
    for r in &results {
        assert!(r.ok, "{}: {}\n{}", r.case, r.saw, rotating.logs());
    }
    Ok(())
}
