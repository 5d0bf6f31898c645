//! `ferryctl policy reachability|explain`: NetworkPolicy as the mesh
//! evaluates it ([`ferry_core::policy::evaluate`]).

use std::path::PathBuf;
use std::process::ExitCode;

use ferry_api::model::{Protocol, Workload};
use ferry_core::policy::{evaluate, Party, Verdict};
use ferry_core::state::ProxyState;

use crate::cli::Output;
use ferryctl::mesh::proxy_state;

const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

fn party<'a>(state: &'a ProxyState, w: &Workload) -> Party<'a> {
    state.workload_party(&w.key).unwrap_or(Party {
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

pub fn reachability(dir: PathBuf, ports: Vec<u16>, output: Output) -> ExitCode {
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
    pods.sort_by(|a, b| a.key.cmp(&b.key));
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
                        &*state,
                        &party(&state, from),
                        &party(&state, to),
                        *port,
                        protocol,
                    );
                    results.push(Reach {
                        from: from.key.to_string(),
                        to: to.key.to_string(),
                        port: *port,
                        protocol: protocol_name(protocol),
                        allowed: verdict.allowed,
                    });
                }
            }
        }
    }
    match output {
        Output::Json | Output::Yaml => match ferryctl::output::structured(&results, output) {
            Ok(text) => println!("{}", text.trim_end()),
            Err(e) => {
                eprintln!("ferryctl: {e}");
                return ExitCode::FAILURE;
            }
        },
        Output::Table => {
            let names: Vec<String> = pods.iter().map(|w| w.key.to_string()).collect();
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
    use ferry_core::policy::DirectionVerdict as D;
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

pub fn explain(dir: PathBuf, from: &str, to: &str, output: Output) -> ExitCode {
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
        &*state,
        &party(&state, source),
        &party(&state, destination),
        port,
        protocol,
    );
    match output {
        Output::Json | Output::Yaml => match ferryctl::output::structured(&verdict, output) {
            Ok(text) => println!("{}", text.trim_end()),
            Err(e) => {
                eprintln!("ferryctl: {e}");
                return ExitCode::FAILURE;
            }
        },
        Output::Table => print!("{}", describe(&verdict)),
    }
    ExitCode::SUCCESS
}
