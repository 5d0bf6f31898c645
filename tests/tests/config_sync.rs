//! The control plane and two proxies, as real processes on loopback: edits,
//! additions and deletions of manifests reach both proxies; a control plane
//! restart leaves the proxies serving and resynchronises them with a delta.

use std::time::Duration;

use ferry_tests::{resource, wait_for, LoopbackMesh};
use serde_json::Value;

fn endpoint_ready(dump: &Value, service: &str, address: &str) -> Option<bool> {
    resource(dump, "service", service)?["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["address"] == address)?["ready"]
        .as_bool()
}

#[test]
fn manifest_changes_reach_every_proxy_and_survive_a_control_plane_restart() -> anyhow::Result<()> {
    let examples = ferry_tests::repo_root().join("deploy/examples");
    let mut mesh = LoopbackMesh::start(&examples, &["node-a", "node-b"])?;
    let dir = mesh.manifests.path().to_path_buf();

    // Initial sync: both proxies ready, with the example services resolved.
    mesh.wait_all("initial config", |d| {
        d["ready"] == true && resource(d, "service", "shop/backend").is_some()
    })?;
    for node in ["node-a", "node-b"] {
        assert_eq!(mesh.ready_status(node)?, 200);
        let dump = mesh.config_dump(node)?;
        let backend = resource(&dump, "service", "shop/backend").unwrap();
        assert_eq!(
            backend["endpoints"].as_array().unwrap().len(),
            3,
            "{backend}"
        );
        assert_eq!(dump["xds"]["last_response"]["first_of_stream"], true);
    }

    // Edit: backend-3 loses readiness.
    let pods = dir.join("10-pods.yaml");
    let text = std::fs::read_to_string(&pods)?;
    let marker = "podIP: 10.244.2.12\n  conditions: [{type: Ready, status: \"True\"}]";
    assert!(text.contains(marker));
    std::fs::write(
        &pods,
        text.replace(
            marker,
            "podIP: 10.244.2.12\n  conditions: [{type: Ready, status: \"False\"}]",
        ),
    )?;
    mesh.wait_all("backend-3 not ready", |d| {
        endpoint_ready(d, "shop/backend", "10.244.2.12") == Some(false)
    })?;

    // Addition: a new file with a new service.
    let extra = dir.join("40-extra.yaml");
    std::fs::write(
        &extra,
        "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: shop}\nspec:\n  clusterIP: 10.96.0.99\n  selector: {app: frontend}\n  ports: [{port: 81, targetPort: http}]\n",
    )?;
    mesh.wait_all("new service", |d| {
        resource(d, "service", "shop/extra").is_some_and(|s| s["endpoints"][0]["ports"][0] == 8080)
    })?;

    // A broken edit keeps the last good version.
    std::fs::write(&extra, "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: shop}\nspec:\n  ports: [{port: -5}]\n")?;
    let control_plane_saw_it = wait_for(
        "the rejection in the control plane log",
        Duration::from_secs(10),
        || {
            Ok(mesh
                .control_plane
                .log()
                .contains("spec.ports[0].port: -5 is outside 1-65535")
                .then_some(()))
        },
    );
    control_plane_saw_it.map_err(|e| e.context(mesh.diagnostics()))?;
    for node in ["node-a", "node-b"] {
        let dump = mesh.config_dump(node)?;
        assert!(
            resource(&dump, "service", "shop/extra").is_some(),
            "last good version kept"
        );
    }

    // Deletion.
    std::fs::remove_file(&extra)?;
    mesh.wait_all("service removed", |d| {
        resource(d, "service", "shop/extra").is_none()
    })?;

    // The control plane goes away: proxies stay ready with their config.
    mesh.control_plane.kill();
    let before = mesh.config_dump("node-a")?;
    wait_for("proxies to notice", Duration::from_secs(15), || {
        Ok((mesh.config_dump("node-a")?["xds"]["connected"] == false).then_some(()))
    })?;
    for node in ["node-a", "node-b"] {
        assert_eq!(
            mesh.ready_status(node)?,
            200,
            "{node} serves its last good config"
        );
        let dump = mesh.config_dump(node)?;
        assert_eq!(
            dump["resources"], before["resources"],
            "{node} kept everything"
        );
    }

    // Change one thing while it is away, then restart it: each proxy
    // resynchronises with exactly that one resource.
    let services = dir.join("20-services.yaml");
    let text = std::fs::read_to_string(&services)?;
    std::fs::write(
        &services,
        text.replace("timeoutSeconds: 600", "timeoutSeconds: 900"),
    )?;
    mesh.restart_control_plane(1)?;
    mesh.wait_all("resync after restart", |d| {
        d["xds"]["connects"] == 2
            && d["xds"]["connected"] == true
            && d["xds"]["last_response"]["first_of_stream"] == true
    })?;
    for node in ["node-a", "node-b"] {
        let dump = mesh.config_dump(node)?;
        let last = &dump["xds"]["last_response"];
        assert_eq!(
            last["resources"], 1,
            "{node}: only the changed service is sent: {last}"
        );
        assert_eq!(last["removed"], 0, "{node}: {last}");
        let backend = resource(&dump, "service", "shop/backend").unwrap();
        assert_eq!(backend["client_ip_affinity"], 900);
    }
    Ok(())
}

#[test]
fn sigterm_stops_the_control_plane_with_proxies_connected() -> anyhow::Result<()> {
    let examples = ferry_tests::repo_root().join("deploy/examples");
    let mut mesh = LoopbackMesh::start(&examples, &["node-a", "node-b"])?;
    mesh.wait_all("initial config", |d| d["ready"] == true)?;
    // Both proxies hold open streams; SIGTERM must still stop the process
    // (closing the streams), not leave it serving until SIGKILL.
    let started = std::time::Instant::now();
    let exited = mesh.control_plane.terminate(Duration::from_secs(15));
    assert!(
        exited,
        "the control plane ignored SIGTERM for 15 s\n{}",
        mesh.diagnostics()
    );
    eprintln!(
        "control plane stopped {:?} after SIGTERM",
        started.elapsed()
    );
    assert!(
        mesh.control_plane
            .log()
            .contains("closing the proxy's stream"),
        "{}",
        mesh.diagnostics()
    );
    // Its replacement binds the same ports, and the proxies come back to it.
    mesh.restart_control_plane(1)?;
    wait_for(
        "the new control plane's streams",
        Duration::from_secs(20),
        || {
            Ok(mesh
                .control_plane
                .log()
                .matches("proxy subscribed")
                .count()
                .ge(&2)
                .then_some(()))
        },
    )
    .map_err(|e| e.context(mesh.diagnostics()))?;
    Ok(())
}

/// An editor saving in place truncates the file, then writes it, sometimes
/// in several steps. 200 such saves while the proxies are watched: no
/// proxy ever holds fewer workloads than the folder defines.
#[test]
fn in_place_edits_never_drop_workloads() -> anyhow::Result<()> {
    use std::io::Write as _;
    let examples = ferry_tests::repo_root().join("deploy/examples");
    let mesh = LoopbackMesh::start(&examples, &["node-a", "node-b"])?;
    let workloads = |dump: &Value| dump["resources"]["workload"].as_array().map_or(0, Vec::len);
    mesh.wait_all("initial config", |d| d["ready"] == true && workloads(d) > 0)?;
    let expected = workloads(&mesh.config_dump("node-a")?);
    let pods = mesh.manifests.path().join("10-pods.yaml");
    let text = std::fs::read(&pods)?;
    let (first, second) = text.split_at(text.len() / 2);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let fewest = std::thread::scope(|scope| -> anyhow::Result<usize> {
        let editor = scope.spawn(|| -> std::io::Result<()> {
            for _ in 0..200 {
                let mut file = std::fs::File::create(&pods)?; // truncates
                std::thread::sleep(Duration::from_millis(2));
                file.write_all(first)?;
                file.flush()?;
                std::thread::sleep(Duration::from_millis(2));
                file.write_all(second)?;
                drop(file);
                std::thread::sleep(Duration::from_millis(8));
            }
            stop.store(true, std::sync::atomic::Ordering::Release);
            Ok(())
        });
        let mut fewest = usize::MAX;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !stop.load(std::sync::atomic::Ordering::Acquire)
            && std::time::Instant::now() < deadline
        {
            for node in ["node-a", "node-b"] {
                fewest = fewest.min(workloads(&mesh.config_dump(node)?));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        editor
            .join()
            .map_err(|_| anyhow::anyhow!("the editor thread panicked"))??;
        Ok(fewest)
    })?;
    assert_eq!(
        fewest,
        expected,
        "a proxy dropped workloads during in-place edits\n{}",
        mesh.diagnostics()
    );
    // And the folder's content, unchanged in the end, is what they hold.
    mesh.wait_all("settled", |d| workloads(d) == expected)?;
    Ok(())
}
