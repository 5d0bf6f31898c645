//! What the lab builds, read from the manifests: nodes (their InternalIP),
//! pods (node and IP) and the addresses services publish.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{LabNode, LabPod};

fn field<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> Option<&'a serde_yaml::Value> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    Some(v)
}

pub(super) fn gateway_of(ip: Ipv4Addr) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 1)
}

/// What the lab builds from the manifests.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub nodes: Vec<LabNode>,
    pub pods: Vec<LabPod>,
    /// Load-balancer ingress and external IPs of services: the outside
    /// client routes them through the first node, as a cloud load balancer
    /// would hand them to a node.
    pub published: Vec<Ipv4Addr>,
}

/// Reads nodes, pods and published service addresses from the manifests
/// (YAML documents).
pub fn read_topology(dir: &Path) -> anyhow::Result<Topology> {
    let mut nodes = Vec::new();
    let mut pods = Vec::new();
    let mut published = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "yaml" || e == "yml"))
    {
        let text = std::fs::read_to_string(file)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let Ok(v) = serde::Deserialize::deserialize(doc) else {
                continue;
            };
            let v: serde_yaml::Value = v;
            let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            let name = field(&v, &["metadata", "name"])
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_string();
            match kind {
                "Node" => {
                    let ip = field(&v, &["status", "addresses"])
                        .and_then(|a| a.as_sequence())
                        .into_iter()
                        .flatten()
                        .find(|a| a.get("type").and_then(|t| t.as_str()) == Some("InternalIP"))
                        .and_then(|a| a.get("address")?.as_str()?.parse::<Ipv4Addr>().ok())
                        .with_context(|| format!("node {name} has no IPv4 InternalIP"))?;
                    nodes.push(LabNode {
                        name,
                        ip,
                        gateway: Ipv4Addr::UNSPECIFIED,
                    });
                }
                "Pod" => {
                    let Some(ip) = field(&v, &["status", "podIP"])
                        .and_then(|i| i.as_str()?.parse::<Ipv4Addr>().ok())
                    else {
                        continue;
                    };
                    let node = field(&v, &["spec", "nodeName"])
                        .and_then(|n| n.as_str())
                        .unwrap_or("")
                        .to_string();
                    let namespace = field(&v, &["metadata", "namespace"])
                        .and_then(|n| n.as_str())
                        .unwrap_or("default")
                        .to_string();
                    let ports = field(&v, &["spec", "containers"])
                        .and_then(|c| c.as_sequence())
                        .into_iter()
                        .flatten()
                        .flat_map(|c| {
                            c.get("ports")
                                .and_then(|p| p.as_sequence())
                                .cloned()
                                .unwrap_or_default()
                        })
                        .filter(|p| {
                            p.get("protocol").and_then(|x| x.as_str()).unwrap_or("TCP") == "TCP"
                        })
                        .filter_map(|p| {
                            p.get("containerPort")?
                                .as_u64()
                                .and_then(|n| u16::try_from(n).ok())
                        })
                        .collect();
                    pods.push(LabPod {
                        namespace,
                        name,
                        node,
                        ip,
                        ports,
                    });
                }
                "Service" => {
                    let ingress = field(&v, &["status", "loadBalancer", "ingress"])
                        .and_then(|i| i.as_sequence())
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i.get("ip")?.as_str()?.parse::<Ipv4Addr>().ok());
                    let external = field(&v, &["spec", "externalIPs"])
                        .and_then(|i| i.as_sequence())
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i.as_str()?.parse::<Ipv4Addr>().ok());
                    published.extend(ingress.chain(external));
                }
                _ => {}
            }
        }
    }
    published.sort();
    published.dedup();
    for node in &mut nodes {
        let pod = pods.iter().find(|p| p.node == node.name).with_context(|| {
            format!(
                "node {} has no pod: cannot infer its pod network",
                node.name
            )
        })?;
        node.gateway = gateway_of(pod.ip);
    }
    Ok(Topology {
        nodes,
        pods,
        published,
    })
}
