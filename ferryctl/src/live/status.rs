//! `ferryctl status`: every control plane replica's answer merged into
//! one report of the mesh ([`MeshReport`]), with the problems found. The
//! report is the JSON/YAML schema `docs/cli.md` documents.
//!
//! A proxy streams from one replica at a time, and revisions count per
//! replica: each proxy is compared with the replica it streams from.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ferry_api::proto::StatusResponse;
use serde::Serialize;

/// How problems are judged.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// A response unanswered (neither ACKed nor NACKed) for longer: the
    /// proxy is out of date.
    pub stale_after: Duration,
    /// A node credential with less than this left is a problem.
    pub credential_warning: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(10),
            credential_warning: Duration::from_secs(7 * 86_400),
        }
    }
}

/// One replica, as it answered (or did not).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaReport {
    pub name: String,
    pub address: String,
    pub reachable: bool,
    /// Why it could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its latest revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Resources published at that revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<u64>,
    /// Proxies streaming from it.
    pub proxies: usize,
    /// The mesh CA runs there.
    pub ca: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up_seconds: Option<u64>,
}

/// A proxy's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyState {
    /// At its replica's latest revision.
    InSync,
    /// A response is on its way or being applied.
    Syncing,
    /// A response has gone unanswered for longer than the threshold.
    OutOfDate,
    /// It refuses at least one resource (keeping its last good version).
    Nacking,
    /// No replica has a stream from it.
    Disconnected,
    /// No answering replica has a stream from it, and some replica did not
    /// answer: it may stream from that one.
    Unknown,
}

impl ProxyState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyState::InSync => "in-sync",
            ProxyState::Syncing => "syncing",
            ProxyState::OutOfDate => "out-of-date",
            ProxyState::Nacking => "nacking",
            ProxyState::Disconnected => "disconnected",
            ProxyState::Unknown => "unknown",
        }
    }
}

/// A resource a proxy refuses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectionReport {
    /// `kind namespace/name`, as the proxy names it.
    pub resource: String,
    /// The refused version, hex.
    pub version: String,
    /// The proxy's reason.
    pub message: String,
    pub seconds_ago: u64,
}

/// One node's proxy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyReport {
    pub node: String,
    pub state: ProxyState,
    /// The replica it streams from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// The stream's remote address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_seconds: Option<u64>,
    /// The revision it is in sync at, and its replica's latest.
    pub synced_revision: u64,
    pub replica_revision: u64,
    /// How long the response in flight has been unanswered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_seconds: Option<f64>,
    pub rejections: Vec<RejectionReport>,
    /// NACKed resources over the stream's life.
    pub nacks: u64,
    /// Time left on the node credential the stream was opened with
    /// (negative: expired); absent when the proxy authenticates with a
    /// service account token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_expires_in_seconds: Option<i64>,
}

/// A certificate's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertificateState {
    Valid,
    /// Less than a quarter of its life left: proxies renew at half, so
    /// renewal is failing.
    Expiring,
    Expired,
}

/// The latest workload certificate signed for an identity on a node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertificateReport {
    pub node: String,
    pub identity: String,
    pub state: CertificateState,
    pub expires_in_seconds: i64,
    pub lifetime_seconds: u64,
    /// The node still runs a pod with this identity (else it is left to
    /// expire, and never a problem).
    pub needed: bool,
}

/// Nodes and proxies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeCounts {
    /// Nodes in the configuration.
    pub total: usize,
    /// Nodes whose proxy streams from a replica.
    pub connected: usize,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshReport {
    /// No problem found.
    pub healthy: bool,
    /// One line per problem.
    pub problems: Vec<String>,
    pub replicas: Vec<ReplicaReport>,
    pub nodes: NodeCounts,
    pub proxies: Vec<ProxyReport>,
    pub certificates: Vec<CertificateReport>,
}

/// A replica's answer, or why there is none.
#[derive(Debug)]
pub struct Answer {
    pub name: String,
    pub address: String,
    pub response: Result<StatusResponse, String>,
}

fn seconds_between(later_ms: u64, earlier_ms: u64) -> i64 {
    (i128::from(later_ms) - i128::from(earlier_ms))
        .div_euclid(1000)
        .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Merges the replicas' answers into one report.
pub fn report(answers: &[Answer], thresholds: Thresholds) -> MeshReport {
    let mut problems = Vec::new();
    let mut replicas = Vec::new();
    let mut nodes: BTreeSet<&str> = BTreeSet::new();
    // Per node, the newest stream across replicas (during a move a proxy
    // may briefly show on two).
    let mut streams: BTreeMap<&str, (&StatusResponse, &ferry_api::proto::ProxyStream)> =
        BTreeMap::new();
    let mut certificates: BTreeMap<
        (&str, &str),
        (&StatusResponse, &ferry_api::proto::IssuedCertificate),
    > = BTreeMap::new();
    for answer in answers {
        match &answer.response {
            Err(error) => {
                problems.push(format!(
                    "control plane {} at {}: unreachable: {error}",
                    answer.name, answer.address
                ));
                replicas.push(ReplicaReport {
                    name: answer.name.clone(),
                    address: answer.address.clone(),
                    reachable: false,
                    error: Some(error.clone()),
                    version: None,
                    revision: None,
                    resources: None,
                    proxies: 0,
                    ca: false,
                    up_seconds: None,
                });
            }
            Ok(status) => {
                nodes.extend(status.nodes.iter().map(String::as_str));
                for stream in &status.proxies {
                    let newer = streams
                        .get(stream.node.as_str())
                        .is_none_or(|(_, s)| s.connected_at_unix_ms < stream.connected_at_unix_ms);
                    if newer {
                        streams.insert(&stream.node, (status, stream));
                    }
                }
                for cert in &status.certificates {
                    let key = (cert.node.as_str(), cert.identity.as_str());
                    let newer = certificates
                        .get(&key)
                        .is_none_or(|(_, c)| c.not_after_unix_ms < cert.not_after_unix_ms);
                    if newer {
                        certificates.insert(key, (status, cert));
                    }
                }
                replicas.push(ReplicaReport {
                    name: if status.replica.is_empty() {
                        answer.name.clone()
                    } else {
                        status.replica.clone()
                    },
                    address: answer.address.clone(),
                    reachable: true,
                    error: None,
                    version: Some(status.version.clone()),
                    revision: Some(status.revision),
                    resources: Some(status.resources),
                    proxies: status.proxies.len(),
                    ca: status.ca,
                    up_seconds: u64::try_from(seconds_between(
                        status.now_unix_ms,
                        status.started_at_unix_ms,
                    ))
                    .ok(),
                });
            }
        }
    }
    if replicas.iter().all(|r| !r.reachable) {
        problems.push("no control plane replica answered".into());
    }
    let any_unreachable = replicas.iter().any(|r| !r.reachable);
    let mut proxies = Vec::new();
    let all_nodes: BTreeSet<&str> = nodes
        .iter()
        .copied()
        .chain(streams.keys().copied())
        .collect();
    for node in all_nodes {
        let Some((status, stream)) = streams.get(node) else {
            // With a replica unanswered, its proxies are not known to be
            // gone (that replica is the problem reported).
            let state = if any_unreachable {
                ProxyState::Unknown
            } else {
                problems.push(format!(
                    "node {node}: no proxy streams from any control plane replica"
                ));
                ProxyState::Disconnected
            };
            proxies.push(ProxyReport {
                node: node.to_string(),
                state,
                replica: None,
                peer: None,
                connected_seconds: None,
                synced_revision: 0,
                replica_revision: 0,
                pending_seconds: None,
                rejections: Vec::new(),
                nacks: 0,
                credential_expires_in_seconds: None,
            });
            continue;
        };
        let now = status.now_unix_ms;
        let pending_seconds = (stream.pending_revision != 0)
            .then(|| now.saturating_sub(stream.pending_since_unix_ms) as f64 / 1000.0);
        let rejections: Vec<RejectionReport> = stream
            .rejections
            .iter()
            .map(|r| RejectionReport {
                resource: r
                    .key
                    .as_ref()
                    .and_then(ferry_api::ResourceKey::from_proto)
                    .map_or_else(|| "<unknown>".into(), |k| k.to_string()),
                version: format!("{:016x}", r.version),
                message: r.message.clone(),
                seconds_ago: now.saturating_sub(r.at_unix_ms) / 1000,
            })
            .collect();
        let state = if !rejections.is_empty() {
            ProxyState::Nacking
        } else if pending_seconds.is_some_and(|p| p > thresholds.stale_after.as_secs_f64()) {
            ProxyState::OutOfDate
        } else if stream.synced_revision < status.revision {
            ProxyState::Syncing
        } else {
            ProxyState::InSync
        };
        match state {
            ProxyState::Nacking => problems.push(format!(
                "node {node}: the proxy refuses {} (NACK; it keeps the last good version): {}",
                plural(rejections.len(), "resource"),
                rejections
                    .iter()
                    .map(|r| format!("{}: {}", r.resource, r.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            ProxyState::OutOfDate => problems.push(format!(
                "node {node}: revision {} sent {:.0} s ago and not acknowledged (in sync at {})",
                stream.pending_revision,
                pending_seconds.unwrap_or_default(),
                stream.synced_revision
            )),
            _ => {}
        }
        let credential = (stream.credential_not_after_unix_ms != 0)
            .then(|| seconds_between(stream.credential_not_after_unix_ms, now));
        if let Some(left) = credential {
            if left <= 0 {
                problems.push(format!("node {node}: the node credential has expired"));
            } else if (left as u64) < thresholds.credential_warning.as_secs() {
                problems.push(format!(
                    "node {node}: the node credential expires in {}",
                    human(left as u64)
                ));
            }
        }
        proxies.push(ProxyReport {
            node: node.to_string(),
            state,
            replica: Some(status.replica.clone()),
            peer: Some(stream.peer.clone()).filter(|p| !p.is_empty()),
            connected_seconds: u64::try_from(seconds_between(now, stream.connected_at_unix_ms))
                .ok(),
            synced_revision: stream.synced_revision,
            replica_revision: status.revision,
            pending_seconds,
            rejections,
            nacks: stream.nacks,
            credential_expires_in_seconds: credential,
        });
    }
    let mut certs = Vec::new();
    for ((node, identity), (status, cert)) in certificates {
        let left = seconds_between(cert.not_after_unix_ms, status.now_unix_ms);
        let lifetime = u64::try_from(seconds_between(
            cert.not_after_unix_ms,
            cert.issued_at_unix_ms,
        ))
        .unwrap_or(0);
        let state = if left <= 0 {
            CertificateState::Expired
        } else if (left as u64).saturating_mul(4) < lifetime {
            CertificateState::Expiring
        } else {
            CertificateState::Valid
        };
        if cert.needed && state != CertificateState::Valid {
            problems.push(format!(
                "node {node}: the certificate of {identity} {} (its proxy renews at half its life: renewal is failing)",
                if state == CertificateState::Expired {
                    "has expired".to_string()
                } else {
                    format!("expires in {}", human(left as u64))
                }
            ));
        }
        certs.push(CertificateReport {
            node: node.to_string(),
            identity: identity.to_string(),
            state,
            expires_in_seconds: left,
            lifetime_seconds: lifetime,
            needed: cert.needed,
        });
    }
    let connected = proxies
        .iter()
        .filter(|p| !matches!(p.state, ProxyState::Disconnected | ProxyState::Unknown))
        .count();
    MeshReport {
        healthy: problems.is_empty(),
        problems,
        replicas,
        nodes: NodeCounts {
            total: nodes.len(),
            connected,
        },
        proxies,
        certificates: certs,
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `3d`, `5h`, `12m`, `40s`.
pub fn human(seconds: u64) -> String {
    match seconds {
        s if s >= 2 * 86_400 => format!("{}d", s / 86_400),
        s if s >= 2 * 3_600 => format!("{}h", s / 3_600),
        s if s >= 2 * 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The report for people.
pub fn table(report: &MeshReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut rows = vec![vec![
        "CONTROL PLANE".to_string(),
        "ADDRESS".into(),
        "STATE".into(),
        "REVISION".into(),
        "RESOURCES".into(),
        "PROXIES".into(),
        "CA".into(),
        "UP".into(),
        "VERSION".into(),
    ]];
    for r in &report.replicas {
        rows.push(vec![
            r.name.clone(),
            r.address.clone(),
            if r.reachable { "ok" } else { "unreachable" }.into(),
            r.revision.map_or("-".into(), |v| v.to_string()),
            r.resources.map_or("-".into(), |v| v.to_string()),
            r.proxies.to_string(),
            if r.ca { "yes" } else { "no" }.into(),
            r.up_seconds.map_or("-".into(), human),
            r.version.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&columns(&rows));
    let _ = writeln!(
        out,
        "\nPROXIES: {} of {} nodes connected",
        report.nodes.connected, report.nodes.total
    );
    let mut rows = vec![vec![
        "NODE".to_string(),
        "STATE".into(),
        "REPLICA".into(),
        "REVISION".into(),
        "NACKS".into(),
        "REFUSED".into(),
        "CREDENTIAL".into(),
    ]];
    for p in &report.proxies {
        rows.push(vec![
            p.node.clone(),
            p.state.as_str().into(),
            p.replica.clone().unwrap_or_else(|| "-".into()),
            if matches!(p.state, ProxyState::Disconnected | ProxyState::Unknown) {
                "-".into()
            } else {
                format!("{}/{}", p.synced_revision, p.replica_revision)
            },
            p.nacks.to_string(),
            p.rejections.len().to_string(),
            match p.credential_expires_in_seconds {
                None => "token".into(),
                Some(left) if left <= 0 => "expired".into(),
                Some(left) => human(left as u64),
            },
        ]);
    }
    out.push_str(&columns(&rows));
    let refused: Vec<_> = report
        .proxies
        .iter()
        .flat_map(|p| p.rejections.iter().map(move |r| (p, r)))
        .collect();
    if !refused.is_empty() {
        let mut rows = vec![vec![
            "NODE".to_string(),
            "REFUSED RESOURCE".into(),
            "VERSION".into(),
            "REASON".into(),
        ]];
        for (p, r) in refused {
            rows.push(vec![
                p.node.clone(),
                r.resource.clone(),
                r.version.clone(),
                r.message.clone(),
            ]);
        }
        out.push('\n');
        out.push_str(&columns(&rows));
    }
    let count = |state| {
        report
            .certificates
            .iter()
            .filter(|c| c.needed && c.state == state)
            .count()
    };
    let _ = writeln!(
        out,
        "\nCERTIFICATES: {} valid, {} expiring, {} expired (of the identities the nodes run)",
        count(CertificateState::Valid),
        count(CertificateState::Expiring),
        count(CertificateState::Expired)
    );
    if report.healthy {
        out.push_str("\nstatus: healthy\n");
    } else {
        let _ = writeln!(
            out,
            "\nstatus: {}",
            plural(report.problems.len(), "problem")
        );
        for p in &report.problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    out
}

/// Left-aligned columns, two spaces apart.
pub fn columns(rows: &[Vec<String>]) -> String {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..width)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::proto::{IssuedCertificate, ProxyStream, Rejection, StatusResponse};
    use ferry_api::{Kind, ResourceKey};

    const NOW: u64 = 1_800_000_000_000;

    fn replica(name: &str, revision: u64, proxies: Vec<ProxyStream>) -> StatusResponse {
        StatusResponse {
            replica: name.into(),
            version: "0.1.0 (abc)".into(),
            revision,
            resources: 18,
            nodes: vec!["node-a".into(), "node-b".into(), "node-c".into()],
            proxies,
            certificates: vec![],
            now_unix_ms: NOW,
            started_at_unix_ms: NOW - 60_000,
            ca: true,
        }
    }

    fn stream(node: &str, connected_ago_ms: u64, synced: u64) -> ProxyStream {
        ProxyStream {
            node: node.into(),
            peer: "10.0.0.10:40000".into(),
            connected_at_unix_ms: NOW - connected_ago_ms,
            synced_revision: synced,
            credential_not_after_unix_ms: NOW + 365 * 86_400_000,
            ..ProxyStream::default()
        }
    }

    fn answer(status: StatusResponse) -> Answer {
        Answer {
            name: status.replica.clone(),
            address: "10.0.0.2:15010".into(),
            response: Ok(status),
        }
    }

    #[test]
    fn a_healthy_mesh_has_no_problems() {
        let report = report(
            &[answer(replica(
                "cp-1",
                5,
                vec![
                    stream("node-a", 1000, 5),
                    stream("node-b", 1000, 5),
                    stream("node-c", 1000, 5),
                ],
            ))],
            Thresholds::default(),
        );
        assert!(report.healthy, "{:?}", report.problems);
        assert_eq!(report.nodes.total, 3);
        assert_eq!(report.nodes.connected, 3);
        assert!(report.proxies.iter().all(|p| p.state == ProxyState::InSync));
        let table = table(&report);
        assert!(table.contains("3 of 3 nodes connected"), "{table}");
        assert!(table.contains("status: healthy"), "{table}");
    }

    #[test]
    fn each_problem_is_named() {
        let mut nacking = stream("node-b", 1000, 4);
        nacking.nacks = 2;
        nacking.rejections.push(Rejection {
            key: Some(ResourceKey::new(Kind::Service, "default/web").to_proto()),
            version: 0xab,
            message: "refused by --refuse-resources (fault injection)".into(),
            at_unix_ms: NOW - 3000,
        });
        let mut stale = stream("node-a", 1000, 3);
        stale.pending_revision = 5;
        stale.pending_since_unix_ms = NOW - 30_000;
        stale.credential_not_after_unix_ms = NOW + 3_600_000;
        let mut first = replica("cp-1", 5, vec![stale, nacking]);
        first.certificates = vec![
            IssuedCertificate {
                node: "node-a".into(),
                identity: "spiffe://cluster.local/ns/default/sa/web".into(),
                issued_at_unix_ms: NOW - 80_000_000,
                not_after_unix_ms: NOW + 6_400_000,
                needed: true,
            },
            // Left to expire: never a problem.
            IssuedCertificate {
                node: "node-a".into(),
                identity: "spiffe://cluster.local/ns/old/sa/gone".into(),
                issued_at_unix_ms: NOW - 90_000_000,
                not_after_unix_ms: NOW - 1,
                needed: false,
            },
        ];
        let report = report(
            &[
                answer(first),
                Answer {
                    name: "cp-2".into(),
                    address: "10.0.0.3:15010".into(),
                    response: Err("connection refused".into()),
                },
            ],
            Thresholds::default(),
        );
        assert!(!report.healthy);
        let problems = report.problems.join("\n");
        for expected in [
            "control plane cp-2 at 10.0.0.3:15010: unreachable: connection refused",
            "node-a: revision 5 sent 30 s ago and not acknowledged (in sync at 3)",
            "node-a: the node credential expires in 60m",
            "node-b: the proxy refuses 1 resource (NACK; it keeps the last good version): service default/web: refused by --refuse-resources (fault injection)",
            "node-a: the certificate of spiffe://cluster.local/ns/default/sa/web expires in",
        ] {
            assert!(problems.contains(expected), "{expected:?} not in\n{problems}");
        }
        assert!(!problems.contains("ns/old"), "{problems}");
        let states: Vec<(&str, ProxyState)> = report
            .proxies
            .iter()
            .map(|p| (p.node.as_str(), p.state))
            .collect();
        assert_eq!(
            states,
            [
                ("node-a", ProxyState::OutOfDate),
                ("node-b", ProxyState::Nacking),
                ("node-c", ProxyState::Unknown)
            ]
        );
        assert_eq!(report.nodes.connected, 2);
        let table = table(&report);
        assert!(table.contains("REFUSED RESOURCE"), "{table}");
        assert!(table.contains("status: 5 problems"), "{table}");
    }

    #[test]
    fn a_node_without_a_stream_while_every_replica_answers_is_disconnected() {
        let report = report(
            &[answer(replica(
                "cp-1",
                5,
                vec![stream("node-a", 1000, 5), stream("node-b", 1000, 5)],
            ))],
            Thresholds::default(),
        );
        assert_eq!(report.proxies[2].state, ProxyState::Disconnected);
        assert_eq!(
            report.problems,
            ["node node-c: no proxy streams from any control plane replica"]
        );
        assert_eq!(report.nodes.connected, 2);
    }

    #[test]
    fn a_proxy_moving_between_replicas_counts_once_at_its_newest_stream() {
        let old = replica("cp-1", 9, vec![stream("node-a", 50_000, 2)]);
        let new = replica("cp-2", 4, vec![stream("node-a", 1_000, 4)]);
        let report = report(&[answer(old), answer(new)], Thresholds::default());
        let a = &report.proxies[0];
        assert_eq!(a.replica.as_deref(), Some("cp-2"));
        assert_eq!((a.synced_revision, a.replica_revision), (4, 4));
        assert_eq!(a.state, ProxyState::InSync);
        assert_eq!(
            report.proxies.iter().filter(|p| p.node == "node-a").count(),
            1
        );
    }

    #[test]
    fn a_proxy_behind_without_a_response_in_flight_is_syncing_not_a_problem() {
        let report = report(
            &[answer(replica(
                "cp-1",
                7,
                vec![
                    stream("node-a", 1000, 6),
                    stream("node-b", 1000, 7),
                    stream("node-c", 1000, 7),
                ],
            ))],
            Thresholds::default(),
        );
        assert_eq!(report.proxies[0].state, ProxyState::Syncing);
        assert!(report.healthy, "{:?}", report.problems);
    }
}
