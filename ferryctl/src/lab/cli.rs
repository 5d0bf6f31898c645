//! `ferryctl lab up [--manifests DIR] [--check] [--faults]`: builds the
//! cluster from the manifests, sends real traffic through the mesh and
//! prints what it saw (with `--faults`, then the fault suite: a line per
//! case and a table of figures); with `--check` it exits (non-zero on any
//! failure), otherwise it stays up until Ctrl-C or SIGTERM. Everything it
//! made is removed on exit. Needs root.

use std::path::Path;
use std::process::ExitCode;

use super::{netns, Lab, LabOptions};

/// Runs `ferryctl lab up`; with `faults`, the fault suite after the
/// traffic checks ([`super::faults`]).
pub fn up(manifests: &Path, check: bool, faults: bool, options: LabOptions) -> ExitCode {
    if !manifests.is_dir() {
        eprintln!(
            "ferryctl lab up: --manifests {}: not a folder (run from the repository root, or name the folder)",
            manifests.display()
        );
        return ExitCode::from(2);
    }
    if !netns::is_root() {
        eprintln!("ferryctl lab up: needs root (it creates network namespaces and iptables rules); run it with sudo or as root");
        return ExitCode::from(2);
    }
    let prefix = format!("flab{}", std::process::id() % 10_000);
    let mut lab = match Lab::up_with(manifests, &prefix, options.clone()) {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("ferryctl lab up: building the cluster failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let replicas: Vec<String> = lab
        .control_plane_ips
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "ferry lab: {} nodes, {} pods, control plane at {} (mTLS, mesh CA)",
        lab.nodes.len(),
        lab.pods.len(),
        replicas.join(", ")
    );
    if options.prometheus {
        println!(
            "prometheus: http://{}:{} in the lab's network (e.g. ip netns exec {}-net curl -s 'http://{}:{}/api/v1/query?query=up')",
            lab.control_plane_ip,
            super::PROMETHEUS_PORT,
            prefix,
            lab.control_plane_ip,
            super::PROMETHEUS_PORT
        );
    }
    let results = lab.check_examples();
    let mut failed = print_checks(&results);
    println!("{} passed, {} failed", results.len() - failed, failed);
    if check {
        // Servers see their clients' addresses; then node-a's proxy is
        // replaced twice under traffic.
        let mut results = lab.check_client_addresses();
        results.extend(lab.check_handover());
        failed += print_checks(&results);
    }
    if faults {
        let mut results = lab.fault_suite();
        // Certificate rotation needs a lab whose certificates live seconds.
        let rotating = Lab::up_with(
            manifests,
            &format!("frot{}", std::process::id() % 10_000),
            LabOptions {
                workload_cert_ttl: Some(std::time::Duration::from_secs(4)),
                ..options
            },
        );
        match rotating {
            Ok(mut rotating) => results.extend(rotating.rotation_suite()),
            Err(e) => results.push(super::faults::FaultResult {
                case: "certificate rotation under a long transfer".into(),
                saw: format!("building its lab failed: {e:#}"),
                ..Default::default()
            }),
        }
        for r in &results {
            println!(
                "{} fault: {}: {}",
                if r.ok { "ok  " } else { "FAIL" },
                r.case,
                r.saw
            );
            failed += usize::from(!r.ok);
        }
        println!("\n{}", super::faults::table(&results));
    }
    if check {
        if failed > 0 {
            eprintln!("{}", lab.logs());
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    println!("the lab is up; Ctrl-C to tear it down");
    if let Err(e) = wait_for_signal() {
        eprintln!("ferryctl lab up: waiting for a signal: {e}; tearing down");
    }
    drop(lab);
    ExitCode::SUCCESS
}

/// Prints one line per check; how many failed.
fn print_checks(results: &[super::checks::CheckResult]) -> usize {
    for r in results {
        println!(
            "{} {}: {}",
            if r.ok { "ok  " } else { "FAIL" },
            r.what,
            r.saw
        );
    }
    results.iter().filter(|r| !r.ok).count()
}

/// Blocks until Ctrl-C or SIGTERM.
fn wait_for_signal() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    })
}
