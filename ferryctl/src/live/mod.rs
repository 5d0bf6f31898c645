//! Commands on a running mesh: `ferryctl status` ([`status`]),
//! `ferryctl proxy-config` ([`proxy_config`]) and `ferryctl flows`
//! ([`flows`]).
//!
//! Where the mesh runs ([`Target`]): `--lab [NAME]`, the lab on this
//! machine ([`lab`]: found from its record, reached inside its network
//! namespaces with a node credential of its PKI).

pub mod client;
pub mod flows;
pub mod lab;
pub mod proxy_config;
pub mod status;

use std::process::ExitCode;

use crate::output::{structured, Output};

use self::client::LabClient;
use self::lab::LabRecord;

/// Where the mesh runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// A lab on this machine: the only running one, or the one named.
    Lab(Option<String>),
}

impl Target {
    /// From `--lab [NAME]`.
    pub fn from_flags(lab: Option<String>) -> Result<Self, String> {
        match lab {
            Some(name) if name.is_empty() => Ok(Target::Lab(None)),
            Some(name) => Ok(Target::Lab(Some(name))),
            None => Err("say where the mesh runs: --lab [NAME] (the lab on this machine)".into()),
        }
    }

    fn client(&self) -> anyhow::Result<LabClient> {
        match self {
            Target::Lab(name) => LabClient::new(LabRecord::find(name.as_deref())?),
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Asks every replica of the lab.
pub async fn answers(client: &LabClient) -> Vec<status::Answer> {
    let asks = client.record.replicas.iter().map(|replica| async move {
        status::Answer {
            name: replica.name.clone(),
            address: replica.address.to_string(),
            response: client.status(replica).await.map_err(|e| format!("{e:#}")),
        }
    });
    futures::future::join_all(asks).await
}

/// `ferryctl status`: exit 0 when healthy, 1 when a problem is found, 2
/// when the mesh cannot be reached at all.
pub fn status(target: &Target, output: Output, thresholds: status::Thresholds) -> ExitCode {
    let run = || -> anyhow::Result<status::MeshReport> {
        let client = target.client()?;
        let answers = runtime()?.block_on(answers(&client));
        Ok(status::report(&answers, thresholds))
    };
    let report = match run() {
        Ok(report) => report,
        Err(e) => {
            eprintln!("ferryctl status: {e:#}");
            return ExitCode::from(2);
        }
    };
    let printed = match output {
        Output::Table => Ok(status::table(&report)),
        _ => structured(&report, output),
    };
    match printed {
        Ok(text) => println!("{}", text.trim_end()),
        Err(e) => {
            eprintln!("ferryctl status: {e}");
            return ExitCode::FAILURE;
        }
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
        let client = target.client()?;
        let node = client.record.node(node)?.clone();
        let body = runtime()?.block_on(client.admin_get(&node, "/config_dump"))?;
        serde_json::from_slice(&body).map_err(|e| {
            anyhow::anyhow!("the proxy of {}: /config_dump is not JSON: {e}", node.name)
        })
    };
    let dump = match run() {
        Ok(dump) => dump,
        Err(e) => {
            eprintln!("ferryctl proxy-config: {e:#}");
            return ExitCode::from(2);
        }
    };
    let printed = match output {
        Output::Table => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Ok(proxy_config::table(&dump, section, now))
        }
        _ => structured(&proxy_config::select(&dump, section), output),
    };
    match printed {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferryctl proxy-config: {e}");
            ExitCode::FAILURE
        }
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
        let client = target.client()?;
        runtime()?.block_on(async {
            let mut reader = flows::Reader::new(&client, filter.node.as_deref()).await?;
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
