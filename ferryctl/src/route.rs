//! `ferryctl route`: what the proxy of a pod's node would do with a
//! connection, computed by the core's routing code
//! ([`ferry_core::route::explain()`]).

use std::path::PathBuf;
use std::process::ExitCode;

use ferry_core::route::Explanation;
#[cfg(test)]
use ferry_core::route::{Mode, RouteAffinity, RouteEndpoint, RouteMode};

use crate::cli::Output;
use ferryctl::mesh::proxy_state;

pub fn run(dir: PathBuf, from: &str, to: &str, output: Output) -> ExitCode {
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
    match ferry_core::route::explain(&state, source, to) {
        Ok(explanation) => {
            match output {
                Output::Json | Output::Yaml => {
                    match ferryctl::output::structured(&explanation, output) {
                        Ok(text) => println!("{}", text.trim_end()),
                        Err(e) => {
                            eprintln!("ferryctl: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                Output::Table => print!("{}", table(&explanation)),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferryctl: --to {to}: {e}");
            ExitCode::from(2)
        }
    }
}

/// Human-readable form: the route, then the endpoints in aligned columns.
pub fn table(explanation: &Explanation) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        out.push_str(&format!("{label:<15}{value}\n"));
    };
    line("service:", explanation.service.as_deref().unwrap_or("-"));
    line("mode:", explanation.mode.as_str());
    if let Some(reason) = &explanation.reason {
        line("reason:", reason);
    }
    if let Some(affinity) = &explanation.affinity {
        line(
            "affinity:",
            &format!("{} ({} s)", affinity.kind, affinity.timeout_seconds),
        );
    }
    if let Some(host) = &explanation.external_name {
        line("external name:", host);
    }
    if let Some(topology) = &explanation.topology {
        let mut at = format!("node {}", topology.node);
        if let Some(zone) = &topology.zone {
            at.push_str(&format!(", zone {zone}"));
        }
        if let Some(distribution) = &topology.traffic_distribution {
            at.push_str(&format!(", trafficDistribution {distribution}"));
        }
        line("topology:", &format!("{} ({at})", topology.summary));
    }
    if explanation.endpoints.is_empty() {
        out.push_str("endpoints:     none\n");
        return out;
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut rows: Vec<[String; 9]> = vec![[
        "POD".into(),
        "ADDRESS".into(),
        "PORT".into(),
        "NODE".into(),
        "ZONE".into(),
        "READY".into(),
        "SERVING".into(),
        "TERMINATING".into(),
        "MODE".into(),
    ]];
    rows.extend(explanation.endpoints.iter().map(|e| {
        [
            e.pod.as_deref().unwrap_or("-").to_string(),
            e.address.to_string(),
            e.port.to_string(),
            e.node.as_deref().unwrap_or("-").to_string(),
            e.zone.as_deref().unwrap_or("-").to_string(),
            yes_no(e.ready).into(),
            yes_no(e.serving).into(),
            yes_no(e.terminating).into(),
            e.mode.as_str().into(),
        ]
    }));
    let mut widths = [0usize; 9];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    out.push('\n');
    for row in &rows {
        let mut text = String::new();
        for (cell, width) in row.iter().zip(widths) {
            text.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(pod: Option<&str>, address: &str, node: Option<&str>, mode: Mode) -> RouteEndpoint {
        RouteEndpoint {
            pod: pod.map(Into::into),
            address: address.parse().unwrap(),
            port: 8080,
            node: node.map(Into::into),
            ready: true,
            serving: true,
            terminating: false,
            mode,
            zone: None,
        }
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let explanation = Explanation {
            service: Some("shop/backend".into()),
            mode: RouteMode::Hbone,
            reason: None,
            affinity: Some(RouteAffinity {
                kind: "ClientIP",
                timeout_seconds: 60,
            }),
            external_name: None,
            endpoints: vec![
                endpoint(Some("shop/a1"), "10.0.1.1", Some("n1"), Mode::Direct),
                endpoint(
                    Some("shop/a-longer-name"),
                    "10.0.2.1",
                    Some("n2"),
                    Mode::Hbone,
                ),
                endpoint(
                    Some("shop/a3"),
                    "fd00::3:1",
                    Some("node-three"),
                    Mode::Hbone,
                ),
                endpoint(None, "192.0.2.100", None, Mode::Passthrough),
            ],
            topology: None,
        };
        let table = table(&explanation);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "service:       shop/backend");
        assert_eq!(lines[1], "mode:          hbone");
        assert_eq!(lines[2], "affinity:      ClientIP (60 s)");
        let rows = &lines[4..];
        assert_eq!(rows.len(), 5, "{table}");
        assert!(rows[0].starts_with("POD"), "{table}");
        // Every column starts at the same offset on every row.
        let header = rows[0];
        for column in [
            "ADDRESS",
            "PORT",
            "NODE",
            "READY",
            "SERVING",
            "TERMINATING",
            "MODE",
        ] {
            let at = header.find(column).unwrap();
            for row in &rows[1..] {
                assert_eq!(row.as_bytes()[at - 1], b' ', "{column}: {row}");
                assert_ne!(row.as_bytes()[at], b' ', "{column}: {row}");
            }
        }
        assert!(rows[4].starts_with("-  "), "{table}");
        assert!(rows[4].ends_with("passthrough"), "{table}");
    }

    #[test]
    fn a_refusal_has_its_reason_and_no_endpoints() {
        let refused = Explanation {
            service: Some("shop/backend".into()),
            mode: RouteMode::Refused,
            reason: Some("service shop/backend has no TCP port 81".into()),
            affinity: None,
            external_name: None,
            endpoints: vec![],
            topology: None,
        };
        assert_eq!(
            table(&refused),
            "service:       shop/backend\nmode:          refused\n\
             reason:        service shop/backend has no TCP port 81\nendpoints:     none\n"
        );
    }
}
