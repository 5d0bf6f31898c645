//! `ferryctl`: operator tooling that runs the control plane's own code.
//!
//! - `ferryctl check --manifests DIR` validates a folder exactly as the
//!   control plane would: exit 0 when clean, 1 with one line per problem
//!   (file, object and field) otherwise.
//! - `ferryctl route --manifests DIR --from NS/POD --to HOST:PORT` explains
//!   what the proxy of that pod's node would do with such a connection,
//!   with the proxy's own routing code.

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

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { manifests } => check(manifests),
        Command::Route {
            manifests,
            from,
            to,
            output,
        } => route(manifests, &from, &to, output),
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
            "ok: {objects} objects, {} resources ({} policies not yet compiled)",
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
