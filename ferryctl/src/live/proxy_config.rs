//! `ferryctl proxy-config NODE [SECTION]`: the live configuration of one
//! node's proxy, from its admin endpoint (`/config_dump`). JSON and YAML
//! give the section as the proxy dumps it; the table is for people.

use serde_json::Value;

use super::status::columns;

/// What to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Workloads,
    Services,
    Policies,
    Certs,
    All,
}

/// The part of the dump a section shows (JSON and YAML output).
pub fn select(dump: &Value, section: Section) -> Value {
    let resources = |kind: &str| dump["resources"][kind].clone();
    match section {
        Section::Workloads => resources("workload"),
        Section::Services => resources("service"),
        Section::Policies => serde_json::json!({
            "policies": resources("policy"),
            "peer_groups": resources("peer_group"),
        }),
        Section::Certs => dump["certificates"].clone(),
        Section::All => dump.clone(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn yes(v: &Value) -> String {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
    .into()
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// When a Unix time is, from `now`: `in 23h`, `5m ago`.
fn relative(unix: u64, now: u64) -> String {
    if unix >= now {
        format!("in {}", super::status::human(unix - now))
    } else {
        format!("{} ago", super::status::human(now - unix))
    }
}

fn workloads(dump: &Value) -> String {
    let mut rows = vec![vec![
        "WORKLOAD".to_string(),
        "NODE".into(),
        "ADDRESSES".into(),
        "SERVICE ACCOUNT".into(),
        "READY".into(),
        "MESH".into(),
        "VERSION".into(),
    ]];
    for w in list(&dump["resources"]["workload"]) {
        rows.push(vec![
            text(&w["key"]),
            text(&w["node"]),
            text(&w["addresses"]),
            text(&w["service_account"]),
            yes(&w["ready"]),
            yes(&w["mesh"]),
            text(&w["version"]),
        ]);
    }
    columns(&rows)
}

fn services(dump: &Value) -> String {
    let mut rows = vec![vec![
        "SERVICE".to_string(),
        "TYPE".into(),
        "CLUSTER IPS".into(),
        "PORTS".into(),
        "ENDPOINTS".into(),
        "READY".into(),
        "VERSION".into(),
    ]];
    for s in list(&dump["resources"]["service"]) {
        let ports: Vec<String> = list(&s["ports"])
            .iter()
            .map(|p| {
                let mut port = format!("{}/{}", text(&p["port"]), text(&p["protocol"]));
                if let Some(node_port) = p["node_port"].as_u64() {
                    port.push_str(&format!(":{node_port}"));
                }
                port
            })
            .collect();
        let endpoints = list(&s["endpoints"]);
        let ready = endpoints
            .iter()
            .filter(|e| e["ready"].as_bool() == Some(true))
            .count();
        let ips = if s["headless"].as_bool() == Some(true) {
            "None (headless)".to_string()
        } else if let Some(name) = s["external_name"].as_str() {
            format!("-> {name}")
        } else {
            text(&s["cluster_ips"])
        };
        rows.push(vec![
            text(&s["key"]),
            text(&s["service_type"]),
            ips,
            if ports.is_empty() {
                "-".into()
            } else {
                ports.join(",")
            },
            endpoints.len().to_string(),
            ready.to_string(),
            text(&s["version"]),
        ]);
    }
    columns(&rows)
}

fn peers(rules: &Value) -> String {
    let rules = list(rules);
    if rules.is_empty() {
        return "none".into();
    }
    let described: Vec<String> = rules
        .iter()
        .map(|rule| {
            let peers = list(&rule["peers"]);
            let from = if peers.is_empty() {
                "any peer".to_string()
            } else {
                peers
                    .iter()
                    .map(|p| {
                        if let Some(group) = p["group"].as_str() {
                            format!("group {group}")
                        } else if !p["ip_block"].is_null() {
                            format!("ipBlock {}", text(&p["ip_block"]["cidr"]))
                        } else {
                            format!("{} workloads", list(&p["workloads"]).len())
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            };
            let ports = list(&rule["ports"]);
            if ports.is_empty() {
                from
            } else {
                format!("{from} on {} ports", ports.len())
            }
        })
        .collect();
    described.join("; ")
}

fn policies(dump: &Value) -> String {
    let mut rows = vec![vec![
        "POLICY".to_string(),
        "SELECTS".into(),
        "INGRESS".into(),
        "EGRESS".into(),
        "VERSION".into(),
    ]];
    for p in list(&dump["resources"]["policy"]) {
        rows.push(vec![
            text(&p["key"]),
            format!("{} workloads", list(&p["selected"]).len()),
            if p["ingress"].as_bool() == Some(true) {
                peers(&p["ingress_rules"])
            } else {
                "-".into()
            },
            if p["egress"].as_bool() == Some(true) {
                peers(&p["egress_rules"])
            } else {
                "-".into()
            },
            text(&p["version"]),
        ]);
    }
    let mut out = columns(&rows);
    let groups = list(&dump["resources"]["peer_group"]);
    if !groups.is_empty() {
        let mut rows = vec![vec![
            "PEER GROUP".to_string(),
            "MEMBERS".into(),
            "VERSION".into(),
        ]];
        for g in groups {
            rows.push(vec![text(&g["key"]), text(&g["pods"]), text(&g["version"])]);
        }
        out.push('\n');
        out.push_str(&columns(&rows));
    }
    out
}

fn certs(dump: &Value, now: u64) -> String {
    let mut rows = vec![vec![
        "IDENTITY".to_string(),
        "EXPIRES".into(),
        "RENEWAL".into(),
    ]];
    for c in list(&dump["certificates"]) {
        rows.push(vec![
            text(&c["identity"]),
            c["not_after_unix"]
                .as_u64()
                .map_or("-".into(), |t| relative(t, now)),
            c["refresh_at_unix"]
                .as_u64()
                .map_or("-".into(), |t| relative(t, now)),
        ]);
    }
    columns(&rows)
}

/// The section for people; `now` in Unix seconds.
pub fn table(dump: &Value, section: Section, now: u64) -> String {
    let header = format!(
        "node {}: revision {}, {}; control plane {} ({})\n\n",
        text(&dump["node"]),
        text(&dump["revision"]),
        text(&dump["summary"]),
        text(&dump["xds"]["control_plane"]),
        if dump["xds"]["connected"].as_bool() == Some(true) {
            "connected"
        } else {
            "disconnected"
        }
    );
    let body = match section {
        Section::Workloads => workloads(dump),
        Section::Services => services(dump),
        Section::Policies => policies(dump),
        Section::Certs => certs(dump, now),
        Section::All => [
            workloads(dump),
            services(dump),
            policies(dump),
            certs(dump, now),
        ]
        .join("\n"),
    };
    header + &body
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dump() -> Value {
        json!({
            "node": "node-a",
            "summary": "2 nodes, 1 workloads, 1 services (1 endpoints), 1 policies (1 peer group shares)",
            "revision": 4,
            "xds": {"control_plane": "https://10.0.0.2:15010", "connected": true},
            "certificates": [{"identity": "spiffe://cluster.local/ns/default/sa/web", "not_after_unix": 1_000_000 + 86_400, "refresh_at_unix": 1_000_000 + 43_200}],
            "resources": {
                "workload": [{"key": "default/web-1", "version": "00000000000000aa", "node": "node-a", "addresses": ["10.1.0.2"], "service_account": "web", "ready": true, "mesh": true}],
                "service": [{"key": "default/web", "version": "00000000000000bb", "service_type": "ClusterIp", "cluster_ips": ["10.96.0.10"], "headless": false, "ports": [{"port": 80, "protocol": "Tcp", "node_port": null}], "endpoints": [{"ready": true}]}],
                "policy": [{"key": "default/allow", "version": "00000000000000cc", "selected": ["default/web-1"], "ingress": true, "egress": false, "ingress_rules": [{"peers": [{"group": "abc"}], "ports": [{}]}], "egress_rules": []}],
                "peer_group": [{"key": "default/abc", "version": "00000000000000dd", "pods": ["client-1"]}],
                "node": []
            }
        })
    }

    #[test]
    fn sections_select_what_they_name() {
        let d = dump();
        assert_eq!(select(&d, Section::Workloads)[0]["key"], "default/web-1");
        assert_eq!(select(&d, Section::Services)[0]["key"], "default/web");
        assert_eq!(
            select(&d, Section::Policies)["peer_groups"][0]["key"],
            "default/abc"
        );
        assert_eq!(
            select(&d, Section::Certs)[0]["identity"],
            "spiffe://cluster.local/ns/default/sa/web"
        );
        assert_eq!(select(&d, Section::All), d);
    }

    #[test]
    fn tables_show_each_section() {
        let d = dump();
        let all = table(&d, Section::All, 1_000_000);
        for expected in [
            "node node-a: revision 4",
            "(connected)",
            "default/web-1  node-a  10.1.0.2",
            "default/web  ClusterIp  10.96.0.10   80/Tcp  1          1",
            "default/allow  1 workloads  group abc on 1 ports  -",
            "default/abc",
            "spiffe://cluster.local/ns/default/sa/web  in 24h   in 12h",
        ] {
            assert!(all.contains(expected), "{expected:?} not in\n{all}");
        }
    }
}
