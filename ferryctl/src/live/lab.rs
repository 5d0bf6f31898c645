//! How `ferryctl --lab` finds a running lab: every lab with daemons
//! writes a record of itself (`/run/ferry/labs/<name>.json`: its network
//! namespaces, the control plane replicas, each node's proxy admin
//! address, its PKI folder) and removes it when it goes down. `ferryctl`
//! reaches the daemons by opening its sockets inside the lab's network
//! namespaces: nothing in a lab listens outside them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Where running labs are recorded.
pub const RECORDS: &str = "/run/ferry/labs";

/// A control plane replica of a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabReplica {
    /// The lab's name for it (`control-plane`, `control-plane-2`...), also
    /// its `--replica-name`.
    pub name: String,
    /// Its gRPC address (config, CA, status) in `netns`.
    pub address: SocketAddr,
    /// Its metrics address (`/metrics`) in `netns`.
    pub metrics: SocketAddr,
}

/// A node of a lab, with its proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabNodeRecord {
    pub name: String,
    /// The node's network namespace.
    pub netns: String,
    pub address: Ipv4Addr,
    /// The proxy's admin address inside `netns` (`/config_dump`).
    pub admin: SocketAddr,
    /// The gateway of the node's pods (`.1` of their /24).
    pub gateway: Ipv4Addr,
}

/// A pod of a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPodRecord {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// What a running lab says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabRecord {
    /// The lab's name: the prefix of its namespaces.
    pub name: String,
    /// The process that runs it.
    pub pid: u32,
    /// The PKI folder (`ferry-certs init`): the CA and node credentials.
    pub pki: PathBuf,
    /// The namespace the control plane replicas run in.
    pub control_plane_netns: String,
    pub replicas: Vec<LabReplica>,
    pub nodes: Vec<LabNodeRecord>,
    pub pods: Vec<LabPodRecord>,
    /// The manifests folder the control plane watches (the lab's copy).
    pub manifests: PathBuf,
    /// The lab's work folder: the daemons' logs (`<daemon>.log`,
    /// `proxy-<node>.log`, restarts beside them).
    pub work: PathBuf,
    /// How pods are wired to their node.
    pub cni: crate::lab::cni::Cni,
}

impl LabRecord {
    fn path(name: &str) -> PathBuf {
        Path::new(RECORDS).join(format!("{name}.json"))
    }

    /// Writes the record; it is removed when the guard drops.
    pub fn publish(&self) -> anyhow::Result<RecordGuard> {
        std::fs::create_dir_all(RECORDS).with_context(|| format!("creating {RECORDS}"))?;
        let path = Self::path(&self.name);
        let text = serde_json::to_string_pretty(self)?;
        // Written whole, then renamed: a reader never sees half a record.
        let partial = path.with_extension("json.partial");
        std::fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(RecordGuard { path })
    }

    /// The running lab named `name`, or the only running lab.
    pub fn find(name: Option<&str>) -> anyhow::Result<Self> {
        let running = Self::running()?;
        match name {
            Some(name) => running
                .into_iter()
                .find(|r| r.name == name)
                .with_context(|| {
                    format!("--lab {name}: no running lab of that name (see {RECORDS})")
                }),
            None => {
                let mut running = running;
                match running.len() {
                    0 => bail!("--lab: no lab is running (start one with `scripts/lab.sh` or `ferryctl lab up`)"),
                    1 => Ok(running.remove(0)),
                    _ => bail!(
                        "--lab: {} labs are running ({}): name one, --lab NAME",
                        running.len(),
                        running
                            .iter()
                            .map(|r| r.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
        }
    }

    /// Every running lab (records of labs whose process is gone are
    /// skipped).
    pub fn running() -> anyhow::Result<Vec<Self>> {
        let entries = match std::fs::read_dir(RECORDS) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {RECORDS}")),
        };
        let mut labs = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                // Removed while listing: that lab went down.
                Err(_) => continue,
            };
            let record: Self = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a lab record", path.display()))?;
            if Path::new(&format!("/proc/{}", record.pid)).exists() {
                labs.push(record);
            }
        }
        labs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(labs)
    }

    pub fn node(&self, name: &str) -> anyhow::Result<&LabNodeRecord> {
        self.nodes.iter().find(|n| n.name == name).with_context(|| {
            format!(
                "no node {name} in lab {} (nodes: {})",
                self.name,
                self.nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
}

/// Removes a lab's record when dropped.
#[derive(Debug)]
pub struct RecordGuard {
    path: PathBuf,
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
