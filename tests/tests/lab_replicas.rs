//! Two control plane replicas in the lab (the chart's default): each serves
//! the same configuration from its own watch. One is killed while traffic
//! runs; the proxies that streamed from it move to the other, which brings
//! them in sync with a delta (versions are content hashes, the same in
//! both replicas), and no connection fails. Needs root (see
//! `netns::root_or_skip`).

use std::time::{Duration, Instant};

use ferry_tests::netns::root_or_skip;
use ferry_tests::wait_for;
use ferryctl::lab::{control_plane_daemon, Lab, LabOptions, CONTROL_PLANE_METRICS_PORT};

/// Requests through the mesh while the replica dies: across nodes over
/// HBONE, by service name, and into the mesh from outside it.
const LOAD: [(&str, &str); 3] = [
    ("shop/frontend", "http://backend.shop.svc.cluster.local/"),
    ("shop/frontend", "http://10.244.2.12:9091/"),
    ("default/client", "http://frontend.shop/"),
];

/// The proxy's config stream, from its `/config_dump`.
fn xds(lab: &Lab, node: &str) -> anyhow::Result<serde_json::Value> {
    Ok(lab.config_dump(node)?["xds"].clone())
}

/// How many resources a proxy holds.
fn held(lab: &Lab, node: &str) -> anyhow::Result<usize> {
    let dump = lab.config_dump(node)?;
    Ok(dump["resources"].as_object().map_or(0, |kinds| {
        kinds
            .values()
            .filter_map(|v| v.as_array())
            .map(Vec::len)
            .sum()
    }))
}

#[test]
fn a_replica_dies_under_load_and_its_proxies_resume_on_the_other_with_a_delta() -> anyhow::Result<()>
{
    if !root_or_skip("a_replica_dies_under_load_and_its_proxies_resume_on_the_other_with_a_delta") {
        return Ok(());
    }
    let examples = ferry_tests::repo_root().join("deploy/examples");
    let lab = Lab::up_with(
        &examples,
        &format!("frep{}", std::process::id() % 10_000),
        LabOptions {
            control_plane_replicas: 2,
            ..LabOptions::default()
        },
    )?;
    let nodes: Vec<String> = lab.nodes.iter().map(|n| n.name.clone()).collect();
    let replicas = lab.control_plane_ips.clone();
    assert_eq!(replicas.len(), 2);

    // Every proxy streams from one of the replicas.
    let mut before = Vec::new();
    for node in &nodes {
        let x = wait_for(
            &format!("{node}'s config stream"),
            Duration::from_secs(30),
            || {
                let x = xds(&lab, node)?;
                Ok((x["connected"] == true && x["last_response"].is_object()).then_some(x))
            },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", lab.logs()))?;
        before.push(x);
    }
    // The victim: the replica node-a streams from.
    let url = before[0]["control_plane"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let victim = replicas
        .iter()
        .position(|ip| url.contains(&format!("{ip}:")))
        .unwrap_or_else(|| panic!("{url} is none of {replicas:?}"));
    let survivor = replicas[1 - victim];
    let moving: Vec<usize> = (0..nodes.len())
        .filter(|&i| before[i]["control_plane"].as_str() == Some(url.as_str()))
        .collect();
    let held_before: Vec<usize> = nodes
        .iter()
        .map(|n| held(&lab, n))
        .collect::<Result<_, _>>()?;

    let (failures, requests, reconnected) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let lab_ref = &lab;
        // Bounded: 90 requests, or 30 s, whichever comes first.
        let load = scope.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut failures = Vec::new();
            let mut requests = 0;
            for i in 0..90 {
                if Instant::now() > deadline {
                    break;
                }
                let (pod, url) = LOAD[i % LOAD.len()];
                requests += 1;
                match lab_ref.curl(pod, url) {
                    Ok(answer) if !answer.is_empty() => {}
                    Ok(_) => failures.push(format!("{pod} -> {url}: empty answer")),
                    Err(e) => failures.push(format!("{pod} -> {url}: {e:#}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (failures, requests)
        });
        std::thread::sleep(Duration::from_millis(700));
        let killed = Instant::now();
        kill(lab_ref, victim)?;
        // Each proxy that streamed from the victim streams from the
        // survivor again (the wait is generous; the time is reported).
        let mut reconnected = Vec::new();
        for &i in &moving {
            let node = &nodes[i];
            let connects = before[i]["connects"].as_u64().unwrap_or(0);
            wait_for(
                &format!("{node} streaming from the survivor"),
                Duration::from_secs(20),
                || {
                    let x = xds(lab_ref, node)?;
                    let on_survivor = x["control_plane"]
                        .as_str()
                        .is_some_and(|u| u.contains(&format!("{survivor}:")));
                    let resynced = x["last_resync"].is_object();
                    Ok((x["connected"] == true
                        && on_survivor
                        && resynced
                        && x["connects"].as_u64().unwrap_or(0) > connects)
                        .then_some(()))
                },
            )?;
            reconnected.push((node.clone(), killed.elapsed()));
        }
        let (failures, requests) = load
            .join()
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))?;
        Ok((failures, requests, reconnected))
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", lab.logs()))?;

    println!("{requests} requests through the mesh while the replica died");
    for (node, took) in &reconnected {
        println!("{node}: streaming from the survivor {took:?} after the kill");
    }
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed while a replica died: {failures:#?}\n{}",
        failures.len(),
        lab.logs()
    );
    assert!(!moving.is_empty());

    // The resync was a delta: the survivor had the same content under the
    // same versions, so it sent nothing the proxy held.
    for &i in &moving {
        let node = &nodes[i];
        let x = xds(&lab, node)?;
        let resync = &x["last_resync"];
        let sent = resync["resources"].as_u64().unwrap_or(u64::MAX);
        println!(
            "{node}: resync on the survivor carried {sent} of {} resources",
            held_before[i]
        );
        assert!(
            held_before[i] > 10,
            "{node} holds {} resources",
            held_before[i]
        );
        assert_eq!(sent, 0, "{node}'s resync was not a delta: {resync}");
        assert_eq!(resync["removed"], 0, "{node}: {resync}");
        assert_eq!(
            held(&lab, node)?,
            held_before[i],
            "{node} holds what it held"
        );
    }

    // The survivor serves changes: a new service reaches every proxy.
    let file = lab.manifests().join("90-replica-probe.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: replica-probe, namespace: shop}\nspec:\n  clusterIP: 10.96.0.99\n  selector: {app: frontend}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )?;
    for node in &nodes {
        wait_for(
            &format!("{node} holding the new service"),
            Duration::from_secs(20),
            || {
                let dump = lab.config_dump(node)?;
                let has = dump["resources"]["service"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["key"] == "shop/replica-probe");
                Ok(has.then_some(()))
            },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", lab.logs()))?;
    }

    // Every proxy is counted by the survivor.
    let metrics = lab.exec_in(
        "net",
        "curl",
        &[
            "-sf",
            &format!("http://{survivor}:{CONTROL_PLANE_METRICS_PORT}/metrics"),
        ],
    )?;
    let connected = metrics
        .lines()
        .find(|l| l.starts_with("ferry_cp_connected_proxies "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(connected, Some(nodes.len() as f64), "{metrics}");
    drop(lab);
    Ok(())
}

/// Kills control plane replica `index` (0-based) with SIGKILL: no goodbye
/// to its streams.
fn kill(lab: &Lab, index: usize) -> anyhow::Result<()> {
    let name = control_plane_daemon(index + 1);
    let pid = lab
        .daemon_pid(&name)
        .ok_or_else(|| anyhow::anyhow!("{name} is not running"))?;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill {name} ({pid}): {status}");
    Ok(())
}
