//! How the lab wires pods to their node: the three ways CNI plugins do,
//! so that capture is tested against each (docs/kubernetes.md has the
//! table). In every style the pod's resolver is its node's proxy at the
//! node's pod gateway address (`.1` of the node's pod /24).
//!
//! - [`Cni::Bridge`] (flannel, the bridge plugin): a bridge `cni0` holding
//!   the gateway address; each pod's veth is a port of it and the pod has
//!   an address in the node's /24. Pods of one node reach each other over
//!   the bridge; the kernel's bridge netfilter hook shows that traffic to
//!   iptables, as every Kubernetes node with a bridge CNI requires.
//! - [`Cni::Routed`] (Calico): a veth `cali<n>` per pod with no address on
//!   the node side, a /32 route to the pod through it, the pod's link-local
//!   gateway `169.254.1.1` resolving to the node side's MAC (proxy ARP
//!   on a real node). The node holds the
//!   pod gateway address on `lo` (where a cluster DNS address would be).
//! - [`Cni::PointToPoint`] (kindnet, the ptp plugin): a veth `veth<n>` per
//!   pod whose node side holds the gateway address as a /32, a /32 route to
//!   the pod through it; the pod routes everything to the gateway.

use std::net::Ipv4Addr;

use super::netns::Netns;

/// The wiring style.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Cni {
    /// A bridge `cni0` (flannel, the bridge plugin).
    #[default]
    Bridge,
    /// Routed veths `cali*` (Calico).
    Routed,
    /// Point-to-point veths `veth*` (kindnet, ptp).
    PointToPoint,
}

impl Cni {
    /// The `--capture-interface` an operator would set for this style.
    pub fn capture_interface(self) -> &'static str {
        match self {
            Cni::Bridge => "cni0",
            Cni::Routed => "cali+",
            Cni::PointToPoint => "veth+",
        }
    }

    /// Prepares a node for its pods.
    pub fn wire_node(self, node: &Netns, gateway: Ipv4Addr) -> anyhow::Result<()> {
        match self {
            Cni::Bridge => {
                node.ip(&["link", "add", "cni0", "type", "bridge"])?;
                node.ip(&["addr", "add", &format!("{gateway}/24"), "dev", "cni0"])?;
                node.ip(&["link", "set", "cni0", "up"])?;
                node.exec("sysctl", &["-qw", "net.bridge.bridge-nf-call-iptables=1"])?;
            }
            Cni::Routed => {
                node.ip(&["addr", "add", &format!("{gateway}/32"), "dev", "lo"])?;
            }
            Cni::PointToPoint => {}
        }
        Ok(())
    }

    /// Wires pod `index` (namespace `pod`, address `ip`) to `node`.
    pub fn wire_pod(
        self,
        node: &Netns,
        pod: &Netns,
        index: usize,
        ip: Ipv4Addr,
        gateway: Ipv4Addr,
    ) -> anyhow::Result<()> {
        let host_side = match self {
            Cni::Bridge => format!("p{index}"),
            Cni::Routed => format!("cali{index}"),
            Cni::PointToPoint => format!("veth{index}"),
        };
        node.ip(&[
            "link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ])?;
        let gateway = gateway.to_string();
        match self {
            Cni::Bridge => {
                node.ip(&["link", "set", &host_side, "master", "cni0", "up"])?;
                pod.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
                pod.ip(&["link", "set", "eth0", "up"])?;
                pod.ip(&["route", "add", "default", "via", &gateway, "dev", "eth0"])?;
            }
            Cni::Routed => {
                node.ip(&["link", "set", &host_side, "up"])?;
                // Proxy ARP answers at once, as Calico sets it.
                node.exec(
                    "sysctl",
                    &[
                        "-qw",
                        &format!("net.ipv4.conf.{host_side}.proxy_arp=1"),
                        &format!("net.ipv4.neigh.{host_side}.proxy_delay=0"),
                    ],
                )?;
                node.ip(&["route", "add", &format!("{ip}/32"), "dev", &host_side])?;
                pod.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
                pod.ip(&["link", "set", "eth0", "up"])?;
                pod.ip(&[
                    "route",
                    "add",
                    "169.254.1.1",
                    "dev",
                    "eth0",
                    "scope",
                    "link",
                ])?;
                // Proxy ARP answers only for addresses the node routes
                // elsewhere, and a lab node has no default route: the
                // neighbour entry is what the answer would be.
                let mac = node.exec("cat", &[&format!("/sys/class/net/{host_side}/address")])?;
                pod.ip(&[
                    "neigh",
                    "add",
                    "169.254.1.1",
                    "lladdr",
                    mac.trim(),
                    "dev",
                    "eth0",
                ])?;
                pod.ip(&[
                    "route",
                    "add",
                    "default",
                    "via",
                    "169.254.1.1",
                    "dev",
                    "eth0",
                ])?;
            }
            Cni::PointToPoint => {
                node.ip(&["addr", "add", &format!("{gateway}/32"), "dev", &host_side])?;
                node.ip(&["link", "set", &host_side, "up"])?;
                node.ip(&["route", "add", &format!("{ip}/32"), "dev", &host_side])?;
                pod.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
                pod.ip(&["link", "set", "eth0", "up"])?;
                pod.ip(&["route", "add", &gateway, "dev", "eth0", "scope", "link"])?;
                pod.ip(&["route", "add", "default", "via", &gateway, "dev", "eth0"])?;
            }
        }
        Ok(())
    }
}
