//! Commands on a running mesh: `ferryctl status` ([`status`]),
//! `ferryctl proxy-config` ([`proxy_config`]), `ferryctl flows`
//! ([`flows`]), `ferryctl bug-report` ([`bugreport`]), `ferryctl
//! connectivity test` ([`connectivity`]), and the live state behind
//! `ferryctl describe` ([`pod_state`]).
//!
//! Where the mesh runs ([`Target`], [`Mesh`]):
//! - `--lab [NAME]`, the lab on this machine ([`lab`]: found from its
//!   record, reached inside its network namespaces with a node credential
//!   of its PKI);
//! - `--kubernetes`, the kubeconfig's cluster ([`kubernetes`]: through the
//!   API server only, port-forwards to the control plane and the proxies'
//!   admin endpoints, the caller's token reviewed and authorized by the
//!   control plane).

pub mod bugreport;
pub mod client;
pub mod connectivity;
pub mod flows;
pub mod kubernetes;
pub mod lab;
pub mod mesh;
pub mod proxy_config;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::output::{now_unix, print, structured, Output};

use self::client::LabClient;
use self::kubernetes::{KubeClient, KubeTarget};
use self::lab::LabRecord;
pub use self::mesh::Mesh;

/// Where the running mesh is (flags of every live command).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Live {
    /// The lab running on this machine (`scripts/lab.sh`, `ferryctl lab
    /// up`); NAME picks one when several run.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "", conflicts_with = "kubernetes")]
    pub lab: Option<String>,
    /// The cluster of the kubeconfig (`KUBECONFIG`, `~/.kube/config`, or
    /// in-cluster), through its API server only.
    #[arg(long)]
    pub kubernetes: bool,
    /// With --kubernetes: the kubeconfig context (default: the current).
    #[arg(long, requires = "kubernetes")]
    pub context: Option<String>,
    /// With --kubernetes: the namespace Ferry runs in.
    #[arg(long, default_value = "ferry-system", requires = "kubernetes")]
    pub namespace: String,
    /// With --kubernetes: a bearer token for the control plane's status
    /// API (`-`: stdin) instead of the kubeconfig's.
    #[arg(long, requires = "kubernetes")]
    pub token_file: Option<PathBuf>,
}

/// Where the mesh runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// A lab on this machine: the only running one, or the one named.
    Lab(Option<String>),
    /// A cluster, through its API server.
    Kubernetes(KubeTarget),
}

impl Target {
    /// From `--lab [NAME]` or `--kubernetes`.
    pub fn from_flags(live: Live) -> Result<Self, String> {
        match (live.lab, live.kubernetes) {
            (Some(name), _) if name.is_empty() => Ok(Target::Lab(None)),
            (Some(name), _) => Ok(Target::Lab(Some(name))),
            (None, true) => Ok(Target::Kubernetes(KubeTarget {
                context: live.context,
                namespace: live.namespace,
                token_file: live.token_file,
            })),
            (None, false) => Err(
                "say where the mesh runs: --lab [NAME] (the lab on this machine) or --kubernetes (the kubeconfig's cluster)"
                    .into(),
            ),
        }
    }

    /// Connects to the mesh.
    pub async fn connect(&self) -> anyhow::Result<Mesh> {
        match self {
            Target::Lab(name) => Ok(Mesh::Lab(LabClient::new(LabRecord::find(
                name.as_deref(),
            )?)?)),
            Target::Kubernetes(target) => Ok(Mesh::Kubernetes(KubeClient::connect(target).await?)),
        }
    }
}

/// The runtime a command runs its requests on (one thread: a command
/// waits on the network, it computes little).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Asks every replica of the mesh.
pub async fn answers(mesh: &Mesh) -> Vec<status::Answer> {
    let replicas = mesh.replicas();
    let asks = replicas.iter().map(|replica| async move {
        status::Answer {
            name: replica.name.clone(),
            address: replica.address.clone(),
            response: mesh.status(replica).await.map_err(|e| format!("{e:#}")),
        }
    });
    futures::future::join_all(asks).await
}

/// What the mesh holds for one pod ([`pod_state`]).
#[derive(Debug)]
pub struct PodState {
    /// What the control plane serves the pod's node, in the proxy's store.
    pub state: std::sync::Arc<ferry_core::state::ProxyState>,
    pub trust_domain: String,
    /// The certificate the node's proxy holds for the pod's identity: not
    /// after, refresh at (Unix seconds).
    pub certificate: Option<(u64, u64)>,
}

/// What the mesh holds for pod `key` (`namespace/name`).
pub fn pod_state(target: &Target, key: &str) -> anyhow::Result<PodState> {
    let rt = runtime()?;
    rt.block_on(async {
        let mesh = target.connect().await?;
        let trust_domain = mesh.trust_domain()?;
        let state_of = |node: String| {
            let (mesh, trust_domain) = (&mesh, &trust_domain);
            async move {
                let response = mesh.node_resources(&node).await?;
                let (state, report) =
                    crate::mesh::hold(response.revision, response.resources, trust_domain);
                if let Some(e) = report.rejected.first() {
                    anyhow::bail!(
                        "the control plane serves {node} a resource the proxy's code refuses: {e}"
                    );
                }
                anyhow::Ok(state)
            }
        };
        let nodes = mesh.nodes();
        let first = nodes
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{}: no node has a proxy", mesh.name()))?;
        let mut state = state_of(first.clone()).await?;
        let node = state
            .workload(key)
            .ok_or_else(|| anyhow::anyhow!("no pod {key} in the mesh's configuration"))?
            .node
            .as_deref()
            .map(str::to_string);
        let mut certificate = None;
        if let Some(node) = node.filter(|n| nodes.contains(n)) {
            if node != first {
                state = state_of(node.clone()).await?;
            }
            let dump: serde_json::Value =
                serde_json::from_slice(&mesh.admin_get(&node, "/config_dump").await?)?;
            if let Some(w) = state.workload(key) {
                let identity = ferry_api::identity::Identity::new(
                    &trust_domain,
                    &w.namespace,
                    &w.service_account,
                )
                .to_string();
                certificate = dump["certificates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["identity"] == identity.as_str())
                    .and_then(|c| {
                        Some((
                            c["not_after_unix"].as_u64()?,
                            c["refresh_at_unix"].as_u64()?,
                        ))
                    });
            }
        }
        Ok(PodState {
            state,
            trust_domain,
            certificate,
        })
    })
}

/// `ferryctl status`: exit 0 when healthy, 1 when a problem is found, 2
/// when the mesh cannot be reached at all.
pub fn status(target: &Target, output: Output, thresholds: status::Thresholds) -> ExitCode {
    let run = || -> anyhow::Result<status::MeshReport> {
        let answers = runtime()?.block_on(async {
            let mesh = target.connect().await?;
            anyhow::Ok(answers(&mesh).await)
        })?;
        Ok(status::report(&answers, thresholds))
    };
    let report = match run() {
        Ok(report) => report,
        Err(e) => {
            eprintln!("ferryctl status: {e:#}");
            return ExitCode::from(2);
        }
    };
    if !print(&report, output, status::table, "status") {
        return ExitCode::FAILURE;
    }
    if report.replicas.iter().all(|r| !r.reachable) {
        ExitCode::from(2)
    } else if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `ferryctl proxy-config NODE [SECTION]`.
pub fn proxy_config(
    target: &Target,
    node: &str,
    section: proxy_config::Section,
    output: Output,
) -> ExitCode {
    let run = || -> anyhow::Result<serde_json::Value> {
        let body = runtime()?.block_on(async {
            let mesh = target.connect().await?;
            mesh.admin_get(node, "/config_dump").await
        })?;
        serde_json::from_slice(&body)
            .map_err(|e| anyhow::anyhow!("the proxy of {node}: /config_dump is not JSON: {e}"))
    };
    let dump = match run() {
        Ok(dump) => dump,
        Err(e) => {
            eprintln!("ferryctl proxy-config: {e:#}");
            return ExitCode::from(2);
        }
    };
    let shown = match output {
        Output::Table => print(
            &dump,
            output,
            |dump| proxy_config::table(dump, section, now_unix()),
            "proxy-config",
        ),
        _ => print(
            &proxy_config::select(&dump, section),
            output,
            |_| String::new(),
            "proxy-config",
        ),
    };
    if shown {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `ferryctl flows`: exit 0, or 2 when the mesh cannot be reached.
pub fn flows(
    target: &Target,
    filter: &flows::Filter,
    last: usize,
    follow: Option<flows::Follow>,
    output: Output,
) -> ExitCode {
    let run = || -> anyhow::Result<()> {
        runtime()?.block_on(async {
            let mesh = target.connect().await?;
            let mut reader = flows::Reader::new(&mesh, filter.node.as_deref()).await?;
            let mut collected = Vec::new();
            let following = follow.is_some();
            if output == Output::Table {
                println!("{}", flows::HEADER);
            }
            flows::run(&mut reader, filter, last, follow, |flow| match output {
                Output::Table => println!("{}", flows::row(flow)),
                // Following: one JSON object per line, one YAML document
                // per flow; else one array at the end.
                Output::Json if following => match serde_json::to_string(flow) {
                    Ok(line) => println!("{line}"),
                    Err(e) => eprintln!("ferryctl flows: {e}"),
                },
                Output::Yaml if following => match serde_yaml::to_string(flow) {
                    Ok(doc) => println!("---\n{}", doc.trim_end()),
                    Err(e) => eprintln!("ferryctl flows: {e}"),
                },
                _ => collected.push(flow.clone()),
            })
            .await;
            if !following && output != Output::Table {
                let text = structured(&collected, output).map_err(anyhow::Error::msg)?;
                println!("{}", text.trim_end());
            }
            anyhow::Ok(())
        })
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferryctl flows: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `ferryctl bug-report`: writes the archive to `out` (default
/// `ferry-bug-report-<Unix time>.tar.gz` here); exit 0, or 2 when the mesh
/// cannot be reached or the archive cannot be written.
pub fn bug_report(target: &Target, out: Option<std::path::PathBuf>, output: Output) -> ExitCode {
    let out = out.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        std::path::PathBuf::from(format!("ferry-bug-report-{now}.tar.gz"))
    });
    let run = || -> anyhow::Result<bugreport::Written> {
        runtime()?.block_on(async {
            let mesh = target.connect().await?;
            bugreport::write(&mesh, &out).await
        })
    };
    match run() {
        Ok(written) => {
            if print(&written, output, bugreport::table, "bug-report") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ferryctl bug-report: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `ferryctl connectivity test`: exit 0 when every check passes, 1 when
/// one fails, 2 when the test cannot run.
pub fn connectivity_test(target: &Target, output: Output) -> ExitCode {
    let run = || -> anyhow::Result<connectivity::Report> {
        let runtime = runtime()?;
        let mesh = runtime.block_on(target.connect())?;
        let lab = mesh.lab().ok_or_else(|| {
            anyhow::anyhow!("the connectivity test runs in the lab only (--lab): on a cluster it would need an image to run its test pods")
        })?;
        connectivity::run(lab, &runtime)
    };
    let report = match run() {
        Ok(report) => report,
        Err(e) => {
            eprintln!("ferryctl connectivity test: {e:#}");
            return ExitCode::from(2);
        }
    };
    if !print(&report, output, connectivity::table, "connectivity test") {
        return ExitCode::from(2);
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
