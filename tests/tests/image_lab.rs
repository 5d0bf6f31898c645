//! The container image and the Helm chart run the mesh, end to end.
//!
//! - `scripts/image.sh` builds the image from the binaries under test (no
//!   container engine: mmdebstrap and umoci) and the example cluster runs
//!   with its control plane, proxies and `ferry-certs` chrooted into the
//!   unpacked image (`ferryctl::lab::image`): the image's own libraries and
//!   iptables serve real traffic.
//! - The chart runs what it renders: `tests/helm/render_commands.py`
//!   renders the chart (default values, then a second value set) and the
//!   lab starts the control plane and one proxy per node from the image
//!   with exactly the rendered command, arguments, environment, volume
//!   mounts, user, capabilities and read-only root. What the lab stands in
//!   for: the Kubernetes API (an in-test API server in the lab's network,
//!   reached through a kubeconfig where a pod would use its service
//!   account), the cluster DNS name of the control plane and the OTLP
//!   collector (`/etc/hosts`), and the volumes' contents (a service account
//!   token the API server's TokenReview accepts, the CA-root ConfigMap the
//!   control plane publishes, host paths under the lab's folder). Real
//!   traffic then crosses nodes over HBONE, checked in the proxies' metrics
//!   on the chart's metrics port; the admin port is not reachable from the
//!   network.
//!
//! Needs root and Debian's package mirror (the image's base, cached under
//! target/image-test), and the chart's venv (`scripts/chart-test.sh`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use ferry_tests::apiserver::{ApiServer, TokenIdentity};
use ferry_tests::netns::root_or_skip;
use ferry_tests::{otlp, prom, wait_for};
use ferryctl::lab::image::{Container, Mount};
use ferryctl::lab::{Lab, LabOptions};
use serde_json::Value;

/// One lab at a time: each holds every core for a while.
static SERIAL: Mutex<()> = Mutex::new(());

const NAMESPACE: &str = "ferry-system";
const PROXY_ACCOUNT: &str = "system:serviceaccount:ferry-system:ferry-proxy";

#[test]
fn the_example_cluster_runs_from_the_image() -> anyhow::Result<()> {
    if !root_or_skip("the_example_cluster_runs_from_the_image") {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (reference, digest) = ferry_tests::image()?;
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    let mut lab = Lab::up_with(
        &ferry_tests::repo_root().join("deploy/examples"),
        &format!("fi{}", std::process::id() % 10_000),
        LabOptions {
            image: Some(reference),
            ..Default::default()
        },
    )?;
    for r in lab.check_examples() {
        assert!(r.ok, "{}: {}\n{}", r.what, r.saw, lab.logs());
    }
    // The daemons are the image's binaries, not the build folder's.
    for (daemon, binary) in [
        ("control-plane", "ferry-control-plane"),
        ("node-a", "ferry-proxy"),
        ("node-b", "ferry-proxy"),
    ] {
        let pid = lab.pid(daemon)?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
        let root = std::fs::read_link(format!("/proc/{pid}/root"))?;
        assert!(
            exe.ends_with(format!("usr/local/bin/{binary}"))
                && exe != ferry_tests::binary(binary)?
                && root.ends_with("image/rootfs"),
            "{daemon} runs {} with root {}, not the image's {binary}",
            exe.display(),
            root.display()
        );
    }
    Ok(())
}

#[test]
fn the_chart_runs_what_it_renders() -> anyhow::Result<()> {
    if !root_or_skip("the_chart_runs_what_it_renders") {
        return Ok(());
    }
    let python = ferry_tests::repo_root().join("target/chart-venv/bin/python");
    if !python.is_file() {
        let why =
            "the chart's venv (target/chart-venv) is missing: run scripts/chart-test.sh first";
        if std::env::var("FERRY_E2E").as_deref() == Ok("required") {
            anyhow::bail!("{why}");
        }
        eprintln!("skipping the_chart_runs_what_it_renders: {why}");
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (reference, _) = ferry_tests::image()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let _entered = runtime.enter();

    // The defaults: beside kube-proxy, no tracing.
    let chart = render(&python, &[])?;
    let mut run = ChartRun::start(&reference, &chart, "fh", false)?;
    run.check_traffic()?;
    // A rolling update with maxSurge: a second proxy container beside the
    // first on node-a, with the same volumes, takes its listeners over
    // through the state folder; the first drains and exits.
    assert_eq!(
        chart["proxy"]["mounts"]
            .as_array()
            .map(|m| m.iter().any(|m| m["mountPath"] == "/var/lib/ferry")),
        Some(true),
        "the handover needs the state folder"
    );
    run.lab.upgrade("node-a")?;
    run.lab.wait_retired(Duration::from_secs(30))?;
    run.check_traffic()?;
    let settings = run.settings("node-a")?;
    assert_eq!(
        settings["capture"]["kube_proxy_replacement"], false,
        "{settings}"
    );
    drop(run);

    // A second value set: kube-proxy replacement, a custom image by
    // digest, tracing on.
    let chart = render(
        &python,
        &[
            "proxy.kubeProxyReplacement=true",
            "image.registry=registry.example.com",
            "image.repository=mesh/ferry",
            "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "otlp.endpoint=http://otel-collector.observability:4317",
            "otlp.sampler=parentbased_traceidratio",
            "string:otlp.samplerArg=1",
            "logLevel=debug",
        ],
    )?;
    let run = ChartRun::start(&reference, &chart, "fj", true)?;
    run.check_traffic()?;
    let settings = run.settings("node-a")?;
    assert_eq!(
        settings["capture"]["kube_proxy_replacement"], true,
        "{settings}"
    );
    let collector = run.collector.as_ref().context("the collector")?;
    wait_for(
        "spans of the proxies at the chart's OTLP endpoint",
        Duration::from_secs(20),
        || {
            let spans = collector.spans();
            let has = |s: &otlp::Received, key: &str, want: &dyn Fn(&str) -> bool| {
                s.resource.iter().any(|(k, v)| k == key && want(v))
            };
            // The chart's resource attributes: pod, namespace, node.
            let described = spans.iter().any(|s| {
                has(s, "service.name", &|v| v.contains("ferry"))
                    && has(s, "k8s.pod.name", &|v| v.starts_with("ferry-proxy-node-"))
                    && has(s, "k8s.namespace.name", &|v| v == NAMESPACE)
                    && has(s, "k8s.node.name", &|v| v.starts_with("node-"))
            });
            Ok((spans.len() >= 2 && described).then_some(()))
        },
    )
    .map_err(|e| e.context(run.lab.logs()))?;
    Ok(())
}

/// `render_commands.py` with `--set` for each of `values` (`--set-string`
/// for those written `string:KEY=VALUE`).
fn render(python: &Path, values: &[&str]) -> anyhow::Result<Value> {
    let mut command = Command::new(python);
    command.arg(ferry_tests::repo_root().join("tests/helm/render_commands.py"));
    for v in values {
        // `string:KEY=VALUE`: as helm --set-string (a number kept a string).
        match v.strip_prefix("string:") {
            Some(v) => command.args(["--set-string", v]),
            None => command.args(["--set", v]),
        };
    }
    let out = command.output()?;
    anyhow::ensure!(
        out.status.success(),
        "render_commands.py {values:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A lab whose daemons are the chart's containers.
struct ChartRun {
    // Drop order: the lab (processes, namespaces) before the servers.
    lab: Lab,
    collector: Option<otlp::Receiver>,
    _api: ApiServer,
}

impl ChartRun {
    fn start(image: &str, chart: &Value, prefix: &str, tracing: bool) -> anyhow::Result<Self> {
        let examples = ferry_tests::repo_root().join("deploy/examples");
        let mut lab = Lab::up_with(
            &examples,
            &format!("{prefix}{}", std::process::id() % 10_000),
            LabOptions {
                image: Some(image.to_string()),
                no_daemons: true,
                ..Default::default()
            },
        )?;
        let cp_ip = lab.control_plane_ip;
        let net = lab.netns("net").context("the lab's network")?;

        // The Kubernetes API, in the lab's network.
        let api = ApiServer::start_on_std(net.listen_tcp(SocketAddr::from((cp_ip, 6443)))?)?;
        for file in [
            "00-cluster.yaml",
            "10-pods.yaml",
            "20-services.yaml",
            "30-policy.yaml",
        ] {
            api.apply_all(&std::fs::read_to_string(examples.join(file))?)?;
        }
        api.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n"
        ))?;
        let collector = if tracing {
            Some(otlp::Receiver::start_on_std(
                net.listen_tcp(SocketAddr::from((cp_ip, 4317)))?,
            )?)
        } else {
            None
        };
        // What the cluster DNS would answer for the chart's service names.
        let hosts = format!(
            "127.0.0.1 localhost\n{cp_ip} ferry-control-plane.{NAMESPACE}.svc otel-collector.observability\n"
        );
        net.set_etc("hosts", &hosts)?;
        let work = lab.work.path().join("chart");

        // The control plane Deployment's container.
        let kube = work.join("kube");
        std::fs::create_dir_all(&kube)?;
        std::fs::write(
            kube.join("kubeconfig"),
            api.kubeconfig_for(&format!("http://{cp_ip}:6443")),
        )?;
        make_readable(&kube)?;
        let spec = &chart["controlPlane"];
        let env = environment(
            spec,
            &[
                ("metadata.namespace", NAMESPACE),
                ("metadata.name", "ferry-control-plane-0"),
            ],
        )?;
        let mut container = container_of(spec, &env, &BTreeMap::new())?;
        // Where a pod would find its service account: the lab's API.
        container
            .env
            .push(("KUBECONFIG".into(), "/var/run/ferry-lab/kubeconfig".into()));
        container.mounts.push(Mount {
            source: kube,
            target: "/var/run/ferry-lab".into(),
            read_only: true,
        });
        lab.run_container("control-plane", "net", &container)?;

        // The CA root the control plane publishes (the ConfigMap volume).
        let root = wait_for(
            "the ferry-ca-root ConfigMap",
            Duration::from_secs(30),
            || {
                Ok(api
                    .get("v1", "ConfigMap", NAMESPACE, "ferry-ca-root")
                    .and_then(|cm| cm["data"]["ca.pem"].as_str().map(str::to_string)))
            },
        )
        .map_err(|e| e.context(lab.logs()))?;

        // One proxy per node: the DaemonSet's container.
        let spec = &chart["proxy"];
        for (i, node) in lab.nodes.clone().iter().enumerate() {
            let pod = format!("ferry-proxy-{}", node.name);
            let uid = format!("uid-proxy-{i}");
            api.apply(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {NAMESPACE}, uid: {uid}, labels: {{app: ferry-proxy}}}}\nspec: {{nodeName: {}, hostNetwork: true, serviceAccountName: ferry-proxy, containers: [{{name: proxy, image: ferry}}]}}\nstatus: {{phase: Running, podIP: {}}}\n",
                node.name, node.ip
            ))?;
            let token = format!("token-{pod}");
            let audience = spec_token_audience(spec)?;
            api.add_token(
                &token,
                TokenIdentity {
                    username: PROXY_ACCOUNT.into(),
                    audiences: vec![audience],
                    pod: Some((pod.clone(), uid)),
                    node: Some(node.name.clone()),
                },
            );
            let volumes = Volumes {
                dir: work.join(&node.name),
                token,
                root: root.clone(),
            };
            let node_ns = lab.netns(&node.name).context("a node")?;
            node_ns.set_etc("hosts", &hosts)?;
            let env = environment(
                spec,
                &[
                    ("spec.nodeName", node.name.as_str()),
                    ("metadata.name", pod.as_str()),
                    ("metadata.namespace", NAMESPACE),
                ],
            )?;
            let container = container_of(spec, &env, &volumes.provide(spec)?)?;
            lab.run_container(&node.name, &node.name, &container)?;
        }
        for node in lab.nodes.clone() {
            wait_for(
                &format!("the chart's proxy on {} ready with certificates", node.name),
                Duration::from_secs(30),
                || {
                    let ready = lab
                        .exec_in(
                            &node.name,
                            "curl",
                            &["-sf", "127.0.0.1:15020/healthz/ready"],
                        )
                        .is_ok();
                    let dump = lab.config_dump(&node.name).unwrap_or_default();
                    let certified = dump["certificates"]
                        .as_array()
                        .is_some_and(|c| !c.is_empty());
                    Ok((ready && certified).then_some(()))
                },
            )
            .map_err(|e| e.context(lab.logs()))?;
        }
        Ok(Self {
            lab,
            collector,
            _api: api,
        })
    }

    /// The proxy's effective settings (its admin `/config_dump`).
    fn settings(&self, node: &str) -> anyhow::Result<Value> {
        Ok(self.lab.config_dump(node)?["settings"].clone())
    }

    /// Cross-node traffic through the chart's proxies, over HBONE with the
    /// workloads' identities; the admin port unreachable from the network.
    fn check_traffic(&self) -> anyhow::Result<()> {
        let lab = &self.lab;
        let logs = || lab.logs();
        let answer = lab
            .curl("shop/frontend", "http://10.244.2.11:9090/")
            .with_context(logs)?;
        assert!(answer.contains("backend-2"), "{answer}");
        let answer = lab
            .curl("shop/frontend", "http://10.96.0.21/")
            .with_context(logs)?;
        assert!(answer.contains("backend"), "{answer}");
        let answer = lab
            .curl("default/client", "http://10.96.0.10/")
            .with_context(logs)?;
        assert!(answer.contains("frontend"), "{answer}");
        // The server sees its client's address through the chart's proxies
        // (the image's iproute2, the chart's capabilities).
        let seen = lab
            .curl("shop/frontend", "http://10.244.2.11:9090/client")
            .with_context(logs)?;
        assert_eq!(seen, "10.244.1.10", "{}", logs());

        let metrics = |node: &str| -> anyhow::Result<Vec<prom::Sample>> {
            Ok(prom::parse(&lab.exec_in(
                node,
                "curl",
                &["-sf", "127.0.0.1:15020/metrics"],
            )?))
        };
        let hbone = |samples: &[prom::Sample], reporter: &str, key: &str, value: &str| {
            samples.iter().any(|s| {
                s.name == "ferry_connections_opened_total"
                    && s.labels.get("reporter").map(String::as_str) == Some(reporter)
                    && s.labels.get("mode").map(String::as_str) == Some("hbone")
                    && s.labels.get(key).map(String::as_str) == Some(value)
                    && s.value >= 1.0
            })
        };
        assert!(
            hbone(&metrics("node-a")?, "source", "source_workload", "frontend"),
            "node-a did not carry frontend's connection over HBONE\n{}",
            logs()
        );
        assert!(
            hbone(
                &metrics("node-b")?,
                "destination",
                "source_principal",
                "spiffe://cluster.local/ns/shop/sa/frontend"
            ),
            "node-b did not receive frontend's identity over HBONE\n{}",
            logs()
        );

        // From the node network: metrics and health on the chart's port,
        // the admin (configuration dump) nowhere.
        let node_a = lab.nodes[0].ip;
        let outside = |path: &str, port: u16| {
            lab.exec_in(
                ferryctl::lab::OUTSIDE,
                "curl",
                &["-sf", "-m", "3", &format!("http://{node_a}:{port}{path}")],
            )
        };
        assert!(outside("/healthz/ready", 15020).is_ok(), "{}", logs());
        assert!(
            outside("/config_dump", 15020).is_err(),
            "config_dump on the metrics port"
        );
        assert!(
            outside("/config_dump", 15000).is_err(),
            "the admin port answers the network"
        );
        Ok(())
    }
}

/// The container of a rendered spec: `$(VAR)` expanded from `env`, the
/// user, capabilities and root from its security context, `mounts` for its
/// volume mounts (by mount path).
fn container_of(
    spec: &Value,
    env: &[(String, String)],
    mounts: &BTreeMap<String, PathBuf>,
) -> anyhow::Result<Container> {
    let strings = |key: &str| -> Vec<String> {
        spec[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let argv: Vec<String> = strings("command")
        .into_iter()
        .chain(strings("args"))
        .map(|a| expand(&a, env))
        .collect();
    let caps = &spec["capabilities"];
    let drops_all = caps["drop"]
        .as_array()
        .is_some_and(|d| d.iter().any(|c| c == "ALL"));
    let capabilities = drops_all.then(|| {
        caps["add"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_ascii_lowercase))
                    .collect()
            })
            .unwrap_or_default()
    });
    let id = |key: &str| {
        spec[key]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0)
    };
    let mut container = Container {
        argv,
        env: env.to_vec(),
        mounts: Vec::new(),
        user: (id("runAsUser"), id("runAsGroup")),
        read_only_root: spec["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
        capabilities,
    };
    for m in spec["mounts"].as_array().into_iter().flatten() {
        let target = m["mountPath"]
            .as_str()
            .context("a mount without mountPath")?;
        let source = mounts
            .get(target)
            .with_context(|| format!("nothing provides the volume mounted at {target}"))?;
        container.mounts.push(Mount {
            source: source.clone(),
            target: target.to_string(),
            read_only: m["readOnly"].as_bool().unwrap_or(false),
        });
    }
    Ok(container)
}

/// The container's environment: literal values, and downward-API fields
/// from `fields`; any other source is an error (the test would have to
/// provide it).
fn environment(spec: &Value, fields: &[(&str, &str)]) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    for var in spec["env"].as_array().into_iter().flatten() {
        let name = var["name"]
            .as_str()
            .context("an env entry without a name")?;
        let value = if let Some(v) = var["value"].as_str() {
            // The kubelet expands `$(VAR)` of variables defined before.
            expand(v, &env)
        } else if let Some(field) = var["fieldRef"].as_str() {
            fields
                .iter()
                .find(|(f, _)| *f == field)
                .map(|(_, v)| v.to_string())
                .with_context(|| format!("{name}: the lab provides no field {field}"))?
        } else {
            anyhow::bail!("{name}: a value source the lab does not provide: {var}");
        };
        env.push((name.to_string(), value));
    }
    Ok(env)
}

/// Kubernetes' `$(VAR)` expansion of command and args (`$$` is `$`).
fn expand(arg: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some((name, after)) = tail
            .strip_prefix("$(")
            .and_then(|t| t.split_once(')'))
            .filter(|(name, _)| env.iter().any(|(k, _)| k == name))
        {
            let value = env
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str());
            out.push_str(value.unwrap_or_default());
            rest = after;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn spec_token_audience(spec: &Value) -> anyhow::Result<String> {
    spec["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|m| {
            (m["volume"]["kind"] == "serviceAccountToken")
                .then(|| m["volume"]["audience"].as_str().map(str::to_string))
                .flatten()
        })
        .context("the proxy mounts no service account token")
}

/// What the kubelet would put in the proxy's volumes on one node.
struct Volumes {
    dir: PathBuf,
    token: String,
    root: String,
}

impl Volumes {
    /// A host folder (or file) for every volume the spec mounts, by mount
    /// path.
    fn provide(&self, spec: &Value) -> anyhow::Result<BTreeMap<String, PathBuf>> {
        let mut provided = BTreeMap::new();
        for m in spec["mounts"].as_array().into_iter().flatten() {
            let target = m["mountPath"].as_str().context("mountPath")?.to_string();
            let volume = &m["volume"];
            let source = match volume["kind"].as_str() {
                Some("serviceAccountToken") => {
                    let dir = self.dir.join("token");
                    std::fs::create_dir_all(&dir)?;
                    let file = volume["path"].as_str().context("the token's path")?;
                    std::fs::write(dir.join(file), &self.token)?;
                    dir
                }
                Some("configMap") if volume["name"] == "ferry-ca-root" => {
                    let dir = self.dir.join("ca-root");
                    std::fs::create_dir_all(&dir)?;
                    std::fs::write(dir.join("ca.pem"), &self.root)?;
                    dir
                }
                Some("hostPath") => {
                    let path = volume["path"].as_str().context("the host path")?;
                    let on_node = self.dir.join("host").join(path.trim_start_matches('/'));
                    match volume["type"].as_str() {
                        Some("FileOrCreate") => {
                            if let Some(parent) = on_node.parent() {
                                std::fs::create_dir_all(parent)?;
                            }
                            if !on_node.exists() {
                                std::fs::write(&on_node, "")?;
                            }
                        }
                        _ => std::fs::create_dir_all(&on_node)?,
                    }
                    on_node
                }
                other => anyhow::bail!("{target}: the lab provides no {other:?} volume: {volume}"),
            };
            provided.insert(target, source);
        }
        Ok(provided)
    }
}

/// Makes `dir` and its files readable by any user (the control plane runs
/// as the chart's non-root user).
fn make_readable(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        std::fs::set_permissions(entry?.path(), std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

#[test]
fn kubernetes_expands_only_defined_variables() {
    let env = vec![("NODE".to_string(), "node-a".to_string())];
    assert_eq!(expand("--node=$(NODE)", &env), "--node=node-a");
    assert_eq!(expand("$(UNSET) $$(NODE) $", &env), "$(UNSET) $(NODE) $");
    let _ = Ipv4Addr::LOCALHOST;
}
