//! `ferryctl`: operator tooling that runs the control plane's own code.
//!
//! - `ferryctl check --manifests DIR` validates a folder exactly as the
//!   control plane would: exit 0 when clean, 1 with one line per problem
//!   (file, object and field) otherwise.
//! - `ferryctl route --manifests DIR --from NS/POD --to HOST:PORT` explains
//!   what the proxy of that pod's node would do with such a connection,
//!   with the proxy's own routing code.
//! - `ferryctl policy reachability --manifests DIR [--ports 80,81]` prints,
//!   for every ordered pair of pods and each port and protocol, whether
//!   NetworkPolicy allows the connection; `ferryctl policy explain` names
//!   the policies and rules that decided one connection. Both use the
//!   proxy's own evaluation code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_control_plane::source::manifests::ManifestSource;
use ferry_control_plane::translate::{TranslateOptions, Translator};

#[derive(Debug, Parser)]
#[command(version, about = "Ferry operator tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a folder of manifests as the control plane would.
    Check {
        #[arg(long)]
        manifests: PathBuf,
    },
    /// The local multi-node mesh in network namespaces: `ferryctl lab up
    /// [--manifests DIR] [--check]` (needs root; runs `ferry-lab`, built
    /// with the workspace, from the same folder as ferryctl).
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// NetworkPolicy: reachability matrix and explanations.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Explain how a connection from a pod to HOST:PORT would be routed.
    Route {
        #[arg(long)]
        manifests: PathBuf,
        /// Source pod, NAMESPACE/NAME.
        #[arg(long)]
        from: String,
        /// Destination: a cluster IP, a service name, a node address with a
        /// node port, a load-balancer IP or a pod IP, with a port.
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Whether each pod may connect to each pod, per port and protocol.
    Reachability {
        #[arg(long)]
        manifests: PathBuf,
        /// Ports to check (default: every container port of the pods, else 80).
        #[arg(long, value_delimiter = ',')]
        ports: Vec<u16>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Which policies and rules decide one connection.
    Explain {
        #[arg(long)]
        manifests: PathBuf,
        /// Source pod, NAMESPACE/NAME.
        #[arg(long)]
        from: String,
        /// NAMESPACE/NAME:PORT[/PROTOCOL] (protocol TCP by default).
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { manifests } => check(manifests),
        Command::Lab { args } => lab(&args),
        Command::Route {
            manifests,
            from,
            to,
            output,
        } => route(manifests, &from, &to, output),
        Command::Policy {
            command:
                PolicyCommand::Reachability {
                    manifests,
                    ports,
                    output,
                },
        } => reachability(manifests, ports, output),
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    manifests,
                    from,
                    to,
                    output,
                },
        } => explain_policy(manifests, &from, &to, output),
    }
}

fn check(dir: PathBuf) -> ExitCode {
    if !dir.is_dir() {
        eprintln!(
            "ferryctl: --manifests {}: not a readable folder",
            dir.display()
        );
        return ExitCode::from(2);
    }
    let mut source = ManifestSource::new(&dir);
    let events = match source.rescan() {
        Ok((events, _)) => events,
        Err(e) => {
            eprintln!("ferryctl: {e}");
            return ExitCode::from(2);
        }
    };
    let objects = events.len();
    let mut translator = Translator::new(TranslateOptions::default());
    let changes = translator.apply(events);
    let problems = source.problems();
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        eprintln!(
            "ok: {objects} objects, {} resources ({} policies)",
            changes.len(),
            translator.policy_count()
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("{} problem(s)", problems.len());
        ExitCode::FAILURE
    }
}

/// Builds the state a proxy would hold for this folder.
fn proxy_state(
    dir: &std::path::Path,
) -> Result<std::sync::Arc<ferry_proxy::state::ProxyState>, String> {
    if !dir.is_dir() {
        return Err(format!(
            "--manifests {}: not a readable folder",
            dir.display()
        ));
    }
    let mut source = ManifestSource::new(dir);
    let (events, _) = source.rescan().map_err(|e| e.to_string())?;
    for p in source.problems() {
        eprintln!("warning: {p}");
    }
    let mut translator = Translator::new(TranslateOptions::default());
    translator.apply(events);
    let response = ferry_api::proto::DeltaResponse {
        nonce: "ferryctl".into(),
        revision: 1,
        resources: translator
            .published()
            .values()
            .map(|p| (*p.resource).clone())
            .collect(),
        removed: Vec::new(),
    };
    let store = ferry_proxy::state::ConfigStore::new();
    let report = store.apply(response);
    for e in &report.rejected {
        eprintln!("warning: {e}");
    }
    Ok(store.snapshot())
}

fn route(dir: PathBuf, from: &str, to: &str, output: Output) -> ExitCode {
    let state = match proxy_state(&dir) {
        Ok(state) => state,
        Err(e) => {
            eprintln!("ferryctl: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(source) = from.split_once('/').and_then(|_| state.workload(from)) else {
        eprintln!("ferryctl: --from {from}: no such pod (expected NAMESPACE/NAME of a pod in the manifests)");
        return ExitCode::from(2);
    };
    match ferry_proxy::route::explain(&state, source, to) {
        Ok(explanation) => {
            match output {
                Output::Json => match serde_json::to_string_pretty(&explanation) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("ferryctl: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                Output::Table => print!("{}", explanation.to_table()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferryctl: --to {to}: {e}");
            ExitCode::from(2)
        }
    }
}

use ferry_api::model::{Protocol, Workload};
use ferry_proxy::policy::{evaluate, Party, Verdict};

const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

fn party<'a>(state: &'a ferry_proxy::state::ProxyState, w: &Workload) -> Party<'a> {
    Party::workload(state, &w.key_name()).unwrap_or(Party {
        workload: None,
        key: None,
        ip: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    })
}

#[derive(serde::Serialize)]
struct Reach {
    from: String,
    to: String,
    port: u16,
    protocol: &'static str,
    allowed: bool,
}

fn reachability(dir: PathBuf, ports: Vec<u16>, output: Output) -> ExitCode {
    let state = match proxy_state(&dir) {
        Ok(state) => state,
        Err(e) => {
            eprintln!("ferryctl: {e}");
            return ExitCode::from(2);
        }
    };
    let mut pods: Vec<&Workload> = state
        .iter()
        .filter_map(|r| match &r.body {
            ferry_api::ResourceBody::Workload(w) => Some(w),
            _ => None,
        })
        .collect();
    pods.sort_by_key(|w| w.key_name());
    let mut ports = ports;
    if ports.is_empty() {
        let declared: std::collections::BTreeSet<u16> = pods
            .iter()
            .flat_map(|w| w.ports.iter().map(|p| p.port))
            .collect();
        ports = if declared.is_empty() {
            vec![80]
        } else {
            declared.into_iter().collect()
        };
    }
    let mut results = Vec::new();
    for from in &pods {
        for to in &pods {
            for port in &ports {
                for protocol in PROTOCOLS {
                    let verdict = evaluate(
                        &state,
                        &party(&state, from),
                        &party(&state, to),
                        *port,
                        protocol,
                    );
                    results.push(Reach {
                        from: from.key_name(),
                        to: to.key_name(),
                        port: *port,
                        protocol: protocol_name(protocol),
                        allowed: verdict.allowed,
                    });
                }
            }
        }
    }
    match output {
        Output::Json => match serde_json::to_string_pretty(&results) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("ferryctl: {e}");
                return ExitCode::FAILURE;
            }
        },
        Output::Table => {
            let names: Vec<String> = pods.iter().map(|w| w.key_name()).collect();
            let width = names.iter().map(String::len).max().unwrap_or(4).max(4);
            let mut index = 0;
            for port in &ports {
                for protocol in PROTOCOLS {
                    println!(
                        "\n{}/{port}: rows connect to columns (. allowed, X denied)",
                        protocol_name(protocol)
                    );
                    print!("{:width$}", "");
                    for (i, _) in names.iter().enumerate() {
                        print!(" {i:>3}");
                    }
                    println!();
                    for (r, from) in names.iter().enumerate() {
                        print!("{from:width$}");
                        for (c, _) in names.iter().enumerate() {
                            // results are ordered from, to, port, protocol
                            let at = ((r * names.len() + c) * ports.len()
                                + index / PROTOCOLS.len())
                                * PROTOCOLS.len()
                                + index % PROTOCOLS.len();
                            let mark = if results.get(at).is_some_and(|x| x.allowed) {
                                "."
                            } else {
                                "X"
                            };
                            print!(" {mark:>3}");
                        }
                        println!("   ({r})");
                    }
                    index += 1;
                }
            }
        }
    }
    ExitCode::SUCCESS
}

fn describe(verdict: &Verdict) -> String {
    use ferry_proxy::policy::DirectionVerdict as D;
    let half = |name: &str, v: &D| match v {
        D::NotIsolated => format!("{name}: allowed (no policy isolates the pod for {name})"),
        D::Allowed { policy, rule } => format!("{name}: allowed by {policy}, {name} rule {rule}"),
        D::Denied { policies } => format!(
            "{name}: denied (isolated by {}; no rule matches)",
            policies.join(", ")
        ),
    };
    format!(
        "{}\n{}\n{}\n",
        if verdict.allowed { "ALLOWED" } else { "DENIED" },
        half("egress", &verdict.egress),
        half("ingress", &verdict.ingress),
    )
}

fn explain_policy(dir: PathBuf, from: &str, to: &str, output: Output) -> ExitCode {
    let state = match proxy_state(&dir) {
        Ok(state) => state,
        Err(e) => {
            eprintln!("ferryctl: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(source) = state.workload(from) else {
        eprintln!("ferryctl: --from {from}: no such pod (expected NAMESPACE/NAME)");
        return ExitCode::from(2);
    };
    let parsed = to.rsplit_once(':').and_then(|(pod, rest)| {
        let (port, protocol) = match rest.split_once('/') {
            Some((port, proto)) => (port, Protocol::from_k8s(&proto.to_ascii_uppercase())?),
            None => (rest, Protocol::Tcp),
        };
        Some((pod, port.parse::<u16>().ok()?, protocol))
    });
    let Some((pod, port, protocol)) = parsed else {
        eprintln!("ferryctl: --to {to}: expected NAMESPACE/NAME:PORT[/TCP|UDP|SCTP]");
        return ExitCode::from(2);
    };
    let Some(destination) = state.workload(pod) else {
        eprintln!("ferryctl: --to {to}: no such pod {pod}");
        return ExitCode::from(2);
    };
    let verdict = evaluate(
        &state,
        &party(&state, source),
        &party(&state, destination),
        port,
        protocol,
    );
    match output {
        Output::Json => match serde_json::to_string_pretty(&verdict) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("ferryctl: {e}");
                return ExitCode::FAILURE;
            }
        },
        Output::Table => print!("{}", describe(&verdict)),
    }
    ExitCode::SUCCESS
}

/// Runs the lab tool that sits next to ferryctl.
fn lab(args: &[String]) -> ExitCode {
    let tool = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("ferry-lab")));
    let Some(tool) = tool.filter(|t| t.is_file()) else {
        eprintln!("ferryctl: ferry-lab not found next to ferryctl: build it with `cargo build --workspace --bins`");
        return ExitCode::from(2);
    };
    match std::process::Command::new(&tool).args(args).status() {
        Ok(status) => ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)),
        Err(e) => {
            eprintln!("ferryctl: running {}: {e}", tool.display());
            ExitCode::FAILURE
        }
    }
}
