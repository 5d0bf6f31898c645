//! `ferryctl flows`: the connections the proxies carried or refused, from
//! their flow logs (admin `/flows`), merged in time order, with pods named
//! from the proxies' configuration. `--follow` keeps asking each proxy
//! for what followed its last answer (twice a second).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Mesh;

/// One side of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The address the proxy saw (`IP:PORT`; a name for an unresolved
    /// target).
    pub address: String,
    /// The pod at that address (`namespace/name`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default)]
    pub workload: String,
    #[serde(default)]
    pub namespace: String,
    /// SPIFFE identity; empty outside the mesh.
    #[serde(default)]
    pub identity: String,
}

/// One flow, as `ferryctl flows --output json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    /// The node whose proxy recorded it.
    #[serde(default)]
    pub node: String,
    /// Its place in that proxy's log.
    pub seq: u64,
    pub time_unix_ms: u64,
    /// `source` (the client's proxy) or `destination` (the server's).
    pub reporter: String,
    /// `allowed`, `denied` (NetworkPolicy) or `failed`.
    pub verdict: String,
    /// How it ended (`completed`...) or why it failed (`policy_denied`...).
    pub outcome: String,
    /// `hbone`, `direct`, `passthrough`, `plaintext`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub source: Peer,
    pub destination: Peer,
    /// The service's host name; empty when not through a service.
    #[serde(default)]
    pub service: String,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Page {
    node: String,
    enabled: bool,
    /// The proxy process's numbering: a new one means a restart.
    #[serde(default)]
    epoch: u64,
    next: u64,
    lost: u64,
    flows: Vec<Flow>,
}

/// Flows asked for per request; a reader asks again until it has all.
const PAGE: usize = 1000;

/// Pages read from one proxy per read at most (its whole ring, and some).
const MAX_PAGES: usize = 64;

/// Which flows to show.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Source pod, `namespace/name`.
    pub from: Option<String>,
    /// Destination: a pod (`namespace/name`), a service (`namespace/name`
    /// or its host name) or an IP address.
    pub to: Option<String>,
    /// `allowed`, `denied` or `failed`.
    pub verdict: Option<String>,
    /// Only this node's proxy.
    pub node: Option<String>,
}

impl Filter {
    pub fn admits(&self, flow: &Flow) -> bool {
        if let Some(from) = &self.from {
            if flow.source.pod.as_deref() != Some(from.as_str()) {
                return false;
            }
        }
        if let Some(to) = &self.to {
            let ip = flow
                .destination
                .address
                .parse::<std::net::SocketAddr>()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|_| flow.destination.address.clone());
            let service = to
                .split_once('/')
                .map(|(ns, name)| format!("{name}.{ns}.svc."));
            let matches = flow.destination.pod.as_deref() == Some(to.as_str())
                || ip == *to
                || flow.service == *to
                || service.is_some_and(|s| flow.service.starts_with(&s));
            if !matches {
                return false;
            }
        }
        if let Some(verdict) = &self.verdict {
            if flow.verdict != *verdict {
                return false;
            }
        }
        true
    }
}

/// Names pods by address, from a proxy's configuration.
#[derive(Debug, Default)]
pub struct Pods {
    by_ip: HashMap<String, String>,
}

impl Pods {
    /// From a `/config_dump`.
    pub fn from_dump(dump: &serde_json::Value) -> Self {
        let mut by_ip = HashMap::new();
        for w in dump["resources"]["workload"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(key) = w["key"].as_str() else {
                continue;
            };
            for address in w["addresses"].as_array().into_iter().flatten() {
                if let Some(ip) = address.as_str() {
                    by_ip.insert(ip.to_string(), key.to_string());
                }
            }
        }
        Self { by_ip }
    }

    fn name(&self, peer: &mut Peer) {
        if let Ok(addr) = peer.address.parse::<std::net::SocketAddr>() {
            peer.pod = self.by_ip.get(&addr.ip().to_string()).cloned();
        }
    }
}

/// Reads the flow logs of a mesh's proxies.
#[derive(Debug)]
pub struct Reader<'a> {
    mesh: &'a Mesh,
    nodes: Vec<String>,
    /// Per node: the proxy's numbering and the last flow read.
    cursors: BTreeMap<String, (u64, u64)>,
    pods: Pods,
}

impl<'a> Reader<'a> {
    pub async fn new(mesh: &'a Mesh, node: Option<&str>) -> anyhow::Result<Self> {
        let all = mesh.nodes();
        let nodes = match node {
            Some(name) if all.iter().any(|n| n == name) => vec![name.to_string()],
            Some(name) => anyhow::bail!("no proxy on node {name} (nodes: {})", all.join(", ")),
            None => all,
        };
        let first = nodes
            .first()
            .ok_or_else(|| anyhow::anyhow!("{}: no node has a proxy", mesh.name()))?;
        let dump = mesh.admin_get(first, "/config_dump").await?;
        let pods = Pods::from_dump(&serde_json::from_slice(&dump)?);
        Ok(Self {
            mesh,
            nodes,
            cursors: BTreeMap::new(),
            pods,
        })
    }

    /// What each proxy recorded since the last read, in time order; a
    /// proxy that cannot be read or overwrote flows is reported on stderr.
    pub async fn read(&mut self) -> Vec<Flow> {
        let mut flows = Vec::new();
        for node in &self.nodes {
            for _ in 0..MAX_PAGES {
                let (epoch, since) = self.cursors.get(node).copied().unwrap_or((0, 0));
                let path = format!("/flows?since={since}&limit={PAGE}");
                let page = match self.mesh.admin_get(node, &path).await {
                    Ok(body) => serde_json::from_slice::<Page>(&body)
                        .map_err(|e| anyhow::anyhow!("{node}: /flows: {e}")),
                    Err(e) => Err(e),
                };
                let page = match page {
                    Ok(page) => page,
                    Err(e) => {
                        eprintln!("ferryctl flows: {e:#}");
                        break;
                    }
                };
                if page.epoch != epoch && since > 0 {
                    // The proxy restarted: its numbering began again.
                    eprintln!(
                        "ferryctl flows: {}: the proxy restarted; reading its log from the start",
                        page.node
                    );
                    self.cursors.insert(node.clone(), (page.epoch, 0));
                    continue;
                }
                if !page.enabled {
                    eprintln!(
                        "ferryctl flows: {}: the proxy keeps no flow log (--flow-history 0)",
                        page.node
                    );
                }
                if page.lost > 0 && since > 0 {
                    eprintln!(
                        "ferryctl flows: {}: {} flows were overwritten before they were read",
                        page.node, page.lost
                    );
                }
                self.cursors.insert(node.clone(), (page.epoch, page.next));
                let full = page.flows.len() >= PAGE;
                for mut flow in page.flows {
                    flow.node = page.node.clone();
                    self.pods.name(&mut flow.source);
                    self.pods.name(&mut flow.destination);
                    flows.push(flow);
                }
                if !full {
                    break;
                }
            }
        }
        flows.sort_by(|a, b| {
            (a.time_unix_ms, &a.node, a.seq).cmp(&(b.time_unix_ms, &b.node, b.seq))
        });
        flows
    }
}

/// A side of a flow for people: the pod, else the workload, else the
/// address.
fn who(peer: &Peer) -> String {
    match (&peer.pod, peer.workload.is_empty()) {
        (Some(pod), _) => pod.clone(),
        (None, false) => format!("{}/{}", peer.namespace, peer.workload),
        (None, true) => peer.address.clone(),
    }
}

/// The table's header.
pub const HEADER: &str = "TIME          NODE        DIR  SOURCE                      DESTINATION                 SERVICE                         MODE         VERDICT  OUTCOME              BYTES (OUT/IN)  DURATION";

/// One table row (fixed widths: rows print as they come).
pub fn row(flow: &Flow) -> String {
    let time = {
        let ms = flow.time_unix_ms % 86_400_000;
        format!(
            "{:02}:{:02}:{:02}.{:03}",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        )
    };
    let service = flow
        .service
        .split(".svc.")
        .next()
        .map(|s| match s.split_once('.') {
            Some((name, ns)) => format!("{ns}/{name}"),
            None => s.to_string(),
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into());
    let destination = match (
        &flow.destination.pod,
        flow.destination.address.rsplit_once(':'),
    ) {
        (Some(pod), Some((_, port))) => format!("{pod}:{port}"),
        _ => who(&flow.destination),
    };
    format!(
        "{time:<13} {:<11} {:<4} {:<27} {:<27} {:<31} {:<12} {:<8} {:<20} {:<15} {}ms",
        flow.node,
        if flow.reporter == "source" {
            "out"
        } else {
            "in"
        },
        who(&flow.source),
        destination,
        service,
        flow.mode.as_deref().unwrap_or("-"),
        flow.verdict,
        flow.outcome,
        format!("{}/{}", flow.sent_bytes, flow.received_bytes),
        flow.duration_ms,
    )
    .trim_end()
    .to_string()
}

/// How long to follow, and how often to ask.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    /// Stop after this long (`None`: until interrupted).
    pub duration: Option<Duration>,
    pub interval: Duration,
}

/// Runs the reader: the last `last` flows that pass `filter`, then (when
/// following) every new one, each handed to `show`.
pub async fn run(
    reader: &mut Reader<'_>,
    filter: &Filter,
    last: usize,
    follow: Option<Follow>,
    mut show: impl FnMut(&Flow),
) {
    let first: Vec<Flow> = reader
        .read()
        .await
        .into_iter()
        .filter(|f| filter.admits(f))
        .collect();
    for flow in &first[first.len().saturating_sub(last)..] {
        show(flow);
    }
    let Some(follow) = follow else {
        return;
    };
    let started = Instant::now();
    loop {
        let wait = match follow.duration {
            Some(total) => match total.checked_sub(started.elapsed()) {
                Some(left) if !left.is_zero() => left.min(follow.interval),
                _ => return,
            },
            None => follow.interval,
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = tokio::signal::ctrl_c() => return,
        }
        for flow in reader.read().await.iter().filter(|f| filter.admits(f)) {
            show(flow);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(source: &str, destination: &str, service: &str, verdict: &str) -> Flow {
        Flow {
            node: "node-a".into(),
            seq: 1,
            time_unix_ms: 1_800_000_000_123,
            reporter: "source".into(),
            verdict: verdict.into(),
            outcome: "completed".into(),
            mode: Some("hbone".into()),
            source: Peer {
                address: source.into(),
                pod: None,
                workload: "frontend".into(),
                namespace: "shop".into(),
                identity: "spiffe://cluster.local/ns/shop/sa/frontend".into(),
            },
            destination: Peer {
                address: destination.into(),
                pod: None,
                workload: String::new(),
                namespace: String::new(),
                identity: String::new(),
            },
            service: service.into(),
            sent_bytes: 10,
            received_bytes: 20,
            duration_ms: 3,
            detail: None,
        }
    }

    #[test]
    fn pods_are_named_by_address_and_filters_match_pods_services_and_addresses() {
        let dump = serde_json::json!({"resources": {"workload": [
            {"key": "shop/frontend", "addresses": ["10.244.1.10"]},
            {"key": "shop/backend-2", "addresses": ["10.244.2.11"]},
        ]}});
        let pods = Pods::from_dump(&dump);
        let mut f = flow(
            "10.244.1.10:40000",
            "10.244.2.11:9090",
            "backend.shop.svc.cluster.local",
            "allowed",
        );
        pods.name(&mut f.source);
        pods.name(&mut f.destination);
        assert_eq!(f.source.pod.as_deref(), Some("shop/frontend"));
        assert_eq!(f.destination.pod.as_deref(), Some("shop/backend-2"));
        let admits = |filter: Filter| filter.admits(&f);
        assert!(admits(Filter::default()));
        assert!(admits(Filter {
            from: Some("shop/frontend".into()),
            ..Filter::default()
        }));
        assert!(!admits(Filter {
            from: Some("shop/db-0".into()),
            ..Filter::default()
        }));
        for to in [
            "shop/backend-2",
            "shop/backend",
            "10.244.2.11",
            "backend.shop.svc.cluster.local",
        ] {
            assert!(
                admits(Filter {
                    to: Some(to.into()),
                    ..Filter::default()
                }),
                "{to}"
            );
        }
        assert!(!admits(Filter {
            to: Some("shop/db".into()),
            ..Filter::default()
        }));
        assert!(admits(Filter {
            verdict: Some("allowed".into()),
            ..Filter::default()
        }));
        assert!(!admits(Filter {
            verdict: Some("denied".into()),
            ..Filter::default()
        }));
        let row = row(&f);
        for part in [
            "node-a",
            "out",
            "shop/frontend",
            "shop/backend-2:9090",
            "shop/backend",
            "hbone",
            "allowed",
            "10/20",
            "3ms",
        ] {
            assert!(row.contains(part), "{part:?} not in {row}");
        }
        assert!(HEADER.starts_with("TIME"));
    }
}
