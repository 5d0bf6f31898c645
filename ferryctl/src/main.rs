//! `ferryctl`: operator tooling that runs the mesh's own code: the control
//! plane's validation and translation, the core's routing and policy.
//!
//! - `ferryctl check --manifests DIR` validates a folder exactly as the
//!   control plane would: exit 0 when clean, 1 with one line per problem
//!   (file, object and field) otherwise. `ferryctl check --pre-install`
//!   checks this node's requirements instead.
//! - `ferryctl route --manifests DIR --from NS/POD --to HOST:PORT` explains
//!   what the proxy of that pod's node would do with such a connection,
//!   with the routing code the proxy runs (`ferry-core`).
//! - `ferryctl policy reachability --manifests DIR [--ports 80,81]` prints,
//!   for every ordered pair of pods and each port and protocol, whether
//!   NetworkPolicy allows the connection; `ferryctl policy explain` names
//!   the policies and rules that decided one connection. Both use the
//!   evaluation code the proxy runs (`ferry-core`).
//! - `ferryctl lab up [--manifests DIR] [--check]` runs the local
//!   multi-node mesh in network namespaces ([`ferryctl::lab`]).
//! - `ferryctl status --lab`, `ferryctl proxy-config NODE --lab`,
//!   `ferryctl flows --lab` and `ferryctl describe pod NS/NAME --lab` read
//!   the running mesh ([`ferryctl::live`]).

use std::process::ExitCode;

use clap::Parser;

mod check;
mod cli;
mod describe;
mod preinstall;

mod policy;
mod route;

use cli::{Cli, Command, ConnectivityCommand, DescribeCommand, LabCommand, PolicyCommand};

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check {
            manifests,
            pre_install,
            cni_dir,
            output,
        } => match manifests {
            Some(manifests) if !pre_install => check::run(manifests),
            _ => preinstall::run(&cni_dir, output),
        },
        Command::Lab {
            command:
                LabCommand::Up {
                    manifests,
                    check,
                    faults,
                    kube_proxy,
                    image,
                    cni,
                    prometheus,
                    control_plane_replicas,
                },
        } => ferryctl::lab::cli::up(
            &manifests,
            check,
            faults,
            ferryctl::lab::LabOptions {
                kube_proxy,
                image,
                cni,
                prometheus,
                control_plane_replicas: usize::from(control_plane_replicas),
                ..Default::default()
            },
        ),
        Command::Status {
            target,
            stale_after,
            credential_warning,
            output,
        } => match ferryctl::live::Target::from_flags(target) {
            Ok(target) => ferryctl::live::status(
                &target,
                output,
                ferryctl::live::status::Thresholds {
                    stale_after,
                    credential_warning,
                },
            ),
            Err(e) => {
                eprintln!("ferryctl status: {e}");
                ExitCode::from(2)
            }
        },
        Command::ProxyConfig {
            node,
            section,
            target,
            output,
        } => match ferryctl::live::Target::from_flags(target) {
            Ok(target) => ferryctl::live::proxy_config(&target, &node, section, output),
            Err(e) => {
                eprintln!("ferryctl proxy-config: {e}");
                ExitCode::from(2)
            }
        },
        Command::Flows {
            target,
            follow,
            duration,
            from,
            to,
            verdict,
            node,
            last,
            output,
        } => match ferryctl::live::Target::from_flags(target) {
            Ok(target) => ferryctl::live::flows(
                &target,
                &ferryctl::live::flows::Filter {
                    from,
                    to,
                    verdict,
                    node,
                },
                last,
                follow.then_some(ferryctl::live::flows::Follow {
                    duration,
                    interval: std::time::Duration::from_millis(500),
                }),
                output,
            ),
            Err(e) => {
                eprintln!("ferryctl flows: {e}");
                ExitCode::from(2)
            }
        },
        Command::BugReport {
            target,
            out,
            output,
        } => match ferryctl::live::Target::from_flags(target) {
            Ok(target) => ferryctl::live::bug_report(&target, out, output),
            Err(e) => {
                eprintln!("ferryctl bug-report: {e}");
                ExitCode::from(2)
            }
        },
        Command::Connectivity {
            command: ConnectivityCommand::Test { target, output },
        } => match ferryctl::live::Target::from_flags(target) {
            Ok(target) => ferryctl::live::connectivity_test(&target, output),
            Err(e) => {
                eprintln!("ferryctl connectivity test: {e}");
                ExitCode::from(2)
            }
        },
        Command::Describe {
            what:
                DescribeCommand::Pod {
                    pod,
                    to,
                    target,
                    output,
                },
        } => match ferryctl::live::Target::from_flags(target) {
            Ok(target) => describe::pod(&target, &pod, to.as_deref(), output),
            Err(e) => {
                eprintln!("ferryctl describe: {e}");
                ExitCode::from(2)
            }
        },
        Command::Route {
            manifests,
            from,
            to,
            output,
        } => route::run(manifests, &from, &to, output),
        Command::Policy {
            command:
                PolicyCommand::Reachability {
                    manifests,
                    ports,
                    output,
                },
        } => policy::reachability(manifests, ports, output),
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    manifests,
                    from,
                    to,
                    output,
                },
        } => policy::explain(manifests, &from, &to, output),
    }
}
