//! `ferryctl connectivity test`: a matrix of checks through the live mesh
//! with a pair of test workloads, like `cilium connectivity test`.
//!
//! In a lab it adds, in a namespace of its own (`ferry-connectivity`,
//! enrolled in the mesh):
//! - a client pod on the first node and a server pod on another node, as
//!   network namespaces wired the way the lab's CNI wires pods;
//! - the server's HTTP servers on 8080 and 8081;
//! - a Service by cluster IP and a headless Service;
//! - a NetworkPolicy that admits the client to the server on 8080 only.
//!
//! It writes their manifests into the folder the control plane watches.
//! It then checks what the mesh does with real connections:
//! - across nodes;
//! - a service by name and by address;
//! - a headless service;
//! - allowed and denied by policy (the denial confirmed by the server
//!   proxy's flow log);
//! - mutual TLS on the link: a capture of the link between the nodes sees
//!   only TLS, and the server's proxy saw the client's SPIFFE identity.
//!
//! Everything it added is removed afterwards, pass or fail: the guard
//! drops the manifests, stops the servers and deletes the namespaces.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::client::LabClient;
use super::lab::{LabNodeRecord, LabRecord};
use crate::lab::netns::Netns;
use crate::lab::{LinkCapture, Process};

/// The test's Kubernetes namespace.
pub const NAMESPACE: &str = "ferry-connectivity";

/// The file of its manifests, in the watched folder.
const MANIFEST: &str = "zz-ferry-connectivity.yaml";

/// The server's ports: the policy admits 8080, not 8081.
const ALLOWED_PORT: u16 = 8080;
const DENIED_PORT: u16 = 8081;

/// One check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: String,
    /// `pass`, `fail` or `skip`.
    pub status: &'static str,
    pub detail: String,
}

/// The whole run (`--output json|yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// No check failed.
    pub passed: bool,
    /// The client's and the server's node.
    pub client_node: String,
    pub server_node: String,
    pub checks: Vec<Check>,
    /// Everything the test added is gone from the mesh again.
    pub cleaned_up: bool,
}

/// What the test added; removed when dropped.
struct TestBed {
    manifest: PathBuf,
    /// The servers (stopped first), then the pods' namespaces.
    servers: Vec<Process>,
    pods: Vec<Netns>,
    /// Files of the test's own (the server's script), then the lock.
    files: Vec<PathBuf>,
    lock: PathBuf,
}

impl Drop for TestBed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.manifest);
        self.servers.clear();
        self.pods.clear();
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_file(&self.lock);
    }
}

/// Takes the lab's connectivity lock (`connectivity.lock` in its work
/// folder, holding the PID of the run). A lock whose process is gone was
/// left by an interrupted run: its manifests are removed (its namespaces
/// go when this run makes its own) and the lock is taken over.
fn lock(record: &LabRecord) -> anyhow::Result<PathBuf> {
    let lock = record.work.join("connectivity.lock");
    if let Ok(pid) = std::fs::read_to_string(&lock) {
        let pid = pid.trim();
        if !pid.is_empty() && std::path::Path::new("/proc").join(pid).exists() {
            bail!(
                "another connectivity test is running in lab {} (pid {pid})",
                record.name
            );
        }
        eprintln!("ferryctl connectivity test: cleaning up after an interrupted run (pid {pid})");
        let _ = std::fs::remove_file(record.manifests.join(MANIFEST));
    }
    std::fs::write(&lock, std::process::id().to_string())
        .with_context(|| format!("writing {}", lock.display()))?;
    Ok(lock)
}

/// A free pod address on a node: high in its /24, not any lab pod's.
fn pod_address(node: &LabNodeRecord, taken: &[Ipv4Addr]) -> anyhow::Result<Ipv4Addr> {
    let [a, b, c, _] = node.gateway.octets();
    (200..=250u8)
        .rev()
        .map(|d| Ipv4Addr::new(a, b, c, d))
        .find(|ip| !taken.contains(ip))
        .with_context(|| format!("no free pod address on {}", node.name))
}

/// A free cluster IP beside the cluster's own.
fn cluster_ip(state: &ferry_core::state::ProxyState) -> Ipv4Addr {
    let used: Vec<Ipv4Addr> = state
        .service_addresses()
        .filter_map(|(ip, _)| match ip {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    let [a, b, ..] = used.first().map_or([10, 96, 0, 0], |ip| ip.octets());
    (10..=250u8)
        .map(|d| Ipv4Addr::new(a, b, 250, d))
        .find(|ip| !used.contains(ip))
        .unwrap_or(Ipv4Addr::new(a, b, 250, 251))
}

fn manifests(
    client_node: &str,
    client_ip: Ipv4Addr,
    server_node: &str,
    server_ip: Ipv4Addr,
    cluster_ip: Ipv4Addr,
) -> String {
    let pod = |name: &str, node: &str, ip: Ipv4Addr, ports: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n  labels: {{app: {name}}}\n\
             spec:\n  nodeName: {node}\n  serviceAccountName: {name}\n  containers:\n  - name: app\n    image: ferry/connectivity\n    ports: [{ports}]\n\
             status:\n  phase: Running\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
        )
    };
    [
        format!("# Written by `ferryctl connectivity test`; removed when it ends.\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n  labels: {{ferry.dev/mesh: enabled}}\n"),
        pod("client", client_node, client_ip, ""),
        pod(
            "server",
            server_node,
            server_ip,
            &format!("{{name: http, containerPort: {ALLOWED_PORT}}}, {{name: other, containerPort: {DENIED_PORT}}}"),
        ),
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: echo, namespace: {NAMESPACE}}}\nspec:\n  clusterIP: {cluster_ip}\n  selector: {{app: server}}\n  ports:\n  - {{name: http, port: 80, targetPort: http}}\n"),
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: echo-headless, namespace: {NAMESPACE}}}\nspec:\n  clusterIP: None\n  selector: {{app: server}}\n  ports:\n  - {{name: http, port: {ALLOWED_PORT}, targetPort: http}}\n"),
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: server-ingress, namespace: {NAMESPACE}}}\nspec:\n  podSelector:\n    matchLabels: {{app: server}}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {{app: client}}\n    ports:\n    - {{protocol: TCP, port: {ALLOWED_PORT}}}\n"),
    ]
    .join("---\n")
}

/// `curl` from a pod's namespace: the body, or why it failed.
fn curl(pod: &Netns, url: &str) -> Result<String, String> {
    pod.exec("curl", &["-sS", "-f", "-m", "3", url])
        .map(|body| body.trim().to_string())
        .map_err(|e| e.to_string().lines().last().unwrap_or_default().to_string())
}

/// Retries `f` for up to `within`, until it gives `Ok`.
fn retry<T>(within: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Runs the test against the lab `client` reaches.
pub fn run(client: &LabClient, runtime: &tokio::runtime::Runtime) -> anyhow::Result<Report> {
    let record: &LabRecord = &client.record;
    if record.nodes.is_empty() {
        bail!("lab {} has no nodes", record.name);
    }
    if !crate::lab::netns::is_root() {
        bail!("the lab's connectivity test needs root (it adds pods as network namespaces)");
    }
    let client_node = record.nodes[0].clone();
    let server_node = record.nodes[1 % record.nodes.len()].clone();
    let cross_node = client_node.name != server_node.name;
    let taken: Vec<Ipv4Addr> = record.pods.iter().map(|p| p.ip).collect();
    let client_ip = pod_address(&client_node, &taken)?;
    let server_ip = pod_address(&server_node, &[taken.clone(), vec![client_ip]].concat())?;
    let mut bed = TestBed {
        manifest: record.manifests.join(MANIFEST),
        servers: Vec::new(),
        pods: Vec::new(),
        files: Vec::new(),
        lock: lock(record)?,
    };
    // A test that just ended, or was interrupted: its removal may still
    // be on its way.
    let state = gone(client, runtime, &client_node.name)
        .with_context(|| format!("namespace {NAMESPACE} is still in the mesh"))?;
    let cluster_ip = cluster_ip(&state);

    // The pods, wired as the lab wires its own.
    for (k, (node, ip)) in [(&client_node, client_ip), (&server_node, server_ip)]
        .into_iter()
        .enumerate()
    {
        let pod = Netns::new(&format!("{}-ct{k}", record.name))?;
        // The node's namespace belongs to the lab: never deleted from here.
        let node_ns = std::mem::ManuallyDrop::new(Netns {
            name: node.netns.clone(),
        });
        record
            .cni
            .wire_pod(&node_ns, &pod, 240 + k, ip, node.gateway)
            .with_context(|| format!("wiring the test pod on {}", node.name))?;
        pod.set_resolv_conf(&format!(
            "nameserver {}\nsearch {NAMESPACE}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
            node.gateway
        ))?;
        bed.pods.push(pod);
    }
    let script = record.work.join("connectivity-server.py");
    std::fs::write(&script, crate::lab::probes::SERVER)?;
    bed.files.push(script.clone());
    let (script, server_ip_arg) = (script.display().to_string(), server_ip.to_string());
    let (allowed, denied) = (ALLOWED_PORT.to_string(), DENIED_PORT.to_string());
    let server_log = record.work.join("connectivity-server.log");
    bed.servers.push(Process::start(
        "connectivity-server",
        std::path::Path::new("ip"),
        &bed.pods[1].command(
            "python3",
            &[
                &script,
                &format!("{NAMESPACE}/server"),
                &server_ip_arg,
                &allowed,
                &denied,
            ],
        ),
        server_log,
    )?);
    std::fs::write(
        &bed.manifest,
        manifests(
            &client_node.name,
            client_ip,
            &server_node.name,
            server_ip,
            cluster_ip,
        ),
    )?;

    // Until both proxies hold the test's workloads and policy.
    let ready = retry(Duration::from_secs(30), || {
        for node in [&client_node, &server_node] {
            let dump = runtime
                .block_on(client.admin_get(node, "/config_dump"))
                .map_err(|e| format!("{e:#}"))?;
            let dump: serde_json::Value =
                serde_json::from_slice(&dump).map_err(|e| e.to_string())?;
            let keys = |kind: &str| dump["resources"][kind].to_string();
            // The policy goes to the nodes of the pods it selects.
            let policy = node.name != server_node.name
                || keys("policy").contains(&format!("{NAMESPACE}/server-ingress"));
            if !(keys("workload").contains(&format!("{NAMESPACE}/server"))
                && keys("workload").contains(&format!("{NAMESPACE}/client"))
                && policy)
            {
                return Err(format!(
                    "{}'s proxy does not hold the test's configuration yet",
                    node.name
                ));
            }
        }
        Ok(())
    });
    if let Err(e) = ready {
        bail!("the mesh did not take the test's workloads within 30 s: {e}");
    }

    let (client_pod, expected) = (&bed.pods[0], format!("{NAMESPACE}/server"));
    let mut checks = Vec::new();
    let mut check = |name: &str, outcome: Result<String, String>| {
        checks.push(match outcome {
            Ok(detail) => Check {
                check: name.into(),
                status: "pass",
                detail,
            },
            Err(detail) => Check {
                check: name.into(),
                status: "fail",
                detail,
            },
        });
    };
    let answered_by_server = |url: &str| {
        let body = curl(client_pod, url)?;
        if body == expected {
            Ok(format!("{url} answered by {body}"))
        } else {
            Err(format!("{url} answered {body:?}, not {expected}"))
        }
    };
    // The first connection may wait for the capture rules to follow the
    // new pods; later ones must work at once.
    let direct = format!("http://{server_ip}:{ALLOWED_PORT}/");
    check(
        if cross_node {
            "pod to pod across nodes, allowed by policy"
        } else {
            "pod to pod, allowed by policy"
        },
        retry(Duration::from_secs(15), || answered_by_server(&direct)),
    );
    check(
        "service by name",
        answered_by_server(&format!("http://echo.{NAMESPACE}/")),
    );
    check(
        "service by cluster IP",
        answered_by_server(&format!("http://{cluster_ip}/")),
    );
    check(
        "headless service by name",
        answered_by_server(&format!("http://echo-headless.{NAMESPACE}:{ALLOWED_PORT}/")),
    );
    // Denied: the port has a server, so only the policy can refuse it,
    // and a proxy (the server's for ingress, the client's for egress) must
    // say it did, in a flow recorded after the attempt began.
    let denied_url = format!("http://{server_ip}:{DENIED_PORT}/");
    let cursors = [
        flow_cursor(client, runtime, &client_node),
        flow_cursor(client, runtime, &server_node),
    ];
    let denial = match curl(client_pod, &denied_url) {
        Ok(body) => Err(format!(
            "{denied_url} answered {body:?}: the policy did not deny it"
        )),
        Err(_) => retry(Duration::from_secs(5), || {
            let target = format!("{server_ip}:{DENIED_PORT}");
            for (node, since) in [&client_node, &server_node].into_iter().zip(cursors) {
                let denied = flows_after(client, runtime, node, since)?
                    .into_iter()
                    .find(|f| {
                        f["outcome"] == "policy_denied"
                            && f["destination"]["address"] == target.as_str()
                    });
                if let Some(f) = denied {
                    return Ok(format!(
                        "{denied_url} refused; {}'s proxy: {}",
                        node.name,
                        f["detail"].as_str().unwrap_or("policy_denied")
                    ));
                }
            }
            Err(format!(
                "{denied_url} failed, but no proxy recorded a policy denial for it"
            ))
        }),
    };
    check("policy denies another port", denial);
    if cross_node {
        let marker = format!("ferry-connectivity-{}", std::process::id());
        let url = format!("http://{server_ip}:{ALLOWED_PORT}/{marker}");
        let link = (|| -> Result<String, String> {
            let since = flow_cursor(client, runtime, &server_node);
            let capture = LinkCapture::start(
                &client_node.netns,
                &record.work,
                &client_node.name,
                &[&marker],
            )
            .map_err(|e| format!("{e:#}"))?;
            let sent = curl(client_pod, &url);
            let report = capture.finish().map_err(|e| format!("{e:#}"))?;
            sent?;
            let summary = report.only_tls_pooled(
                ferry_api::model::HBONE_PORT,
                &[ferry_api::model::HBONE_PORT, 15010],
            )?;
            // The server's proxy saw the client's identity: from its
            // certificate, over mutual TLS.
            let identity = format!("/ns/{NAMESPACE}/sa/client");
            retry(Duration::from_secs(5), || {
                flows_after(client, runtime, &server_node, since)?
                    .iter()
                    .any(|f| {
                        f["source"]["identity"]
                            .as_str()
                            .is_some_and(|i| i.ends_with(&identity))
                            && f["mode"] == "hbone"
                    })
                    .then_some(())
                    .ok_or_else(|| {
                        format!(
                            "{}'s proxy recorded no HBONE flow from {identity}",
                            server_node.name
                        )
                    })
            })?;
            Ok(format!(
                "{summary}; {}'s proxy saw the client as ...{identity}",
                server_node.name
            ))
        })();
        check("mutual TLS on the link between the nodes", link);
    } else {
        checks.push(Check {
            check: "mutual TLS on the link between the nodes".into(),
            status: "skip",
            detail: "the lab has one node: no connection crosses a link".into(),
        });
    }
    drop(bed);
    let cleaned_up = gone(client, runtime, &client_node.name).is_ok();
    Ok(Report {
        passed: checks.iter().all(|c| c.status != "fail"),
        client_node: client_node.name,
        server_node: server_node.name,
        checks,
        cleaned_up,
    })
}

/// Where a node's flow log ends now (0 when it cannot be read: every
/// flow is then "after").
fn flow_cursor(client: &LabClient, runtime: &tokio::runtime::Runtime, node: &LabNodeRecord) -> u64 {
    read_flows(client, runtime, node, 0).map_or(0, |(_, next)| next)
}

/// The flows a node's proxy recorded after `since`.
fn flows_after(
    client: &LabClient,
    runtime: &tokio::runtime::Runtime,
    node: &LabNodeRecord,
    since: u64,
) -> Result<Vec<serde_json::Value>, String> {
    read_flows(client, runtime, node, since).map(|(flows, _)| flows)
}

/// Every flow after `since` (page by page), and where the log ends.
fn read_flows(
    client: &LabClient,
    runtime: &tokio::runtime::Runtime,
    node: &LabNodeRecord,
    since: u64,
) -> Result<(Vec<serde_json::Value>, u64), String> {
    const PAGE: usize = 1000;
    let mut all = Vec::new();
    let mut cursor = since;
    // The ring holds 1,024 flows by default: a few pages at most.
    for _ in 0..16 {
        let body = runtime
            .block_on(client.admin_get(node, &format!("/flows?since={cursor}&limit={PAGE}")))
            .map_err(|e| format!("{e:#}"))?;
        let mut page: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        cursor = page["next"].as_u64().unwrap_or(cursor);
        let flows = match page["flows"].take() {
            serde_json::Value::Array(flows) => flows,
            _ => Vec::new(),
        };
        let full = flows.len() >= PAGE;
        all.extend(flows);
        if !full {
            break;
        }
    }
    Ok((all, cursor))
}

/// Waits (up to 15 s) until the control plane no longer serves the test's
/// resources; what it serves `node` then.
fn gone(
    client: &LabClient,
    runtime: &tokio::runtime::Runtime,
    node: &str,
) -> anyhow::Result<std::sync::Arc<ferry_core::state::ProxyState>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let served = runtime.block_on(client.node_resources(node))?;
        let (state, _) = crate::mesh::hold(
            served.revision,
            served.resources,
            ferry_api::identity::DEFAULT_TRUST_DOMAIN,
        );
        let present = state
            .iter()
            .any(|r| r.key.name.starts_with(&format!("{NAMESPACE}/")));
        if !present {
            return Ok(state);
        }
        if Instant::now() >= deadline {
            bail!("the control plane still serves resources of namespace {NAMESPACE} after 15 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The report for people.
pub fn table(report: &Report) -> String {
    let mut rows = vec![vec!["CHECK".to_string(), "RESULT".into(), "DETAIL".into()]];
    for c in &report.checks {
        rows.push(vec![
            c.check.clone(),
            match c.status {
                "pass" => "ok",
                "fail" => "FAIL",
                other => other,
            }
            .into(),
            c.detail.clone(),
        ]);
    }
    let passed = report.checks.iter().filter(|c| c.status == "pass").count();
    let failed = report.checks.iter().filter(|c| c.status == "fail").count();
    format!(
        "client on {}, server on {} (namespace {NAMESPACE}, {})\n\n{}\n{passed} passed, {failed} failed\n",
        report.client_node,
        report.server_node,
        if report.cleaned_up {
            "removed again"
        } else {
            "still in the mesh 15 s after its removal"
        },
        super::status::columns(&rows)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_manifests_are_what_the_control_plane_reads() {
        let text = manifests(
            "node-a",
            Ipv4Addr::new(10, 244, 1, 250),
            "node-b",
            Ipv4Addr::new(10, 244, 2, 250),
            Ipv4Addr::new(10, 96, 250, 10),
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST), &text).unwrap();
        let (state, problems) = crate::mesh::proxy_state_checked(dir.path()).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let client = state.workload("ferry-connectivity/client").unwrap();
        assert!(client.mesh);
        let echo = state.service("ferry-connectivity/echo").unwrap();
        assert_eq!(echo.endpoints.len(), 1);
        assert_eq!(&*echo.endpoints[0].ports, [Some(ALLOWED_PORT)]);
        assert!(
            state
                .service("ferry-connectivity/echo-headless")
                .unwrap()
                .headless
        );
        let server = state.workload_party("ferry-connectivity/server").unwrap();
        let from = state.workload_party("ferry-connectivity/client").unwrap();
        let verdict = |port| {
            ferry_core::policy::evaluate(
                &*state,
                &from,
                &server,
                port,
                ferry_api::model::Protocol::Tcp,
            )
            .allowed
        };
        assert!(verdict(ALLOWED_PORT));
        assert!(!verdict(DENIED_PORT));
    }

    #[test]
    fn addresses_avoid_the_labs_pods_and_services() {
        let node = LabNodeRecord {
            name: "node-a".into(),
            netns: "x".into(),
            address: Ipv4Addr::new(172, 30, 0, 10),
            admin: "127.0.0.1:15000".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 244, 1, 1),
        };
        let taken = [Ipv4Addr::new(10, 244, 1, 250)];
        assert_eq!(
            pod_address(&node, &taken).unwrap(),
            Ipv4Addr::new(10, 244, 1, 249)
        );
        let state = crate::mesh::proxy_state(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples"),
        )
        .unwrap();
        let ip = cluster_ip(&state);
        assert!(state.service_by_ip(&ip.into()).is_none());
        assert_eq!(ip.octets()[2], 250);
    }
}
