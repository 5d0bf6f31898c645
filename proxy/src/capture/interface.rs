//! Which interface the node's pods are behind, read from the node's own
//! routes rather than set by hand: every CNI routes a pod's address to the
//! interface its traffic arrives on, and the names follow the CNI's style.
//!
//! | CNI style | route to a pod | capture interface |
//! |---|---|---|
//! | bridge (flannel, the bridge plugin) | the node's pod /24 via `cni0` | `cni0` |
//! | routed veth (Calico) | a /32 per pod via `cali…` | `cali+` |
//! | point-to-point veth (kindnet, ptp) | a /32 per pod via `veth…` | `veth+` |
//!
//! `--capture-interface auto` looks up the route to each pod of the node
//! ([`Routes`], the kernel's main table as `/proc/net/route` and
//! `/proc/net/ipv6_route` show it) and takes the one interface they share,
//! or the prefix their names share as an iptables wildcard (`cali+`). A
//! name given by hand is checked the same way: pods routed elsewhere are
//! reported (a log line and `ferry_capture_pods_outside_interface`) rather
//! than silently left uncaptured.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `--capture-interface`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceSetting {
    /// Found from the routes to the node's pods.
    Auto,
    /// An interface name, or a prefix ending in `+` (iptables' wildcard).
    Named(String),
}

impl std::str::FromStr for InterfaceSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "" => Err("must not be empty (a name, a prefix ending in +, or auto)".into()),
            // IFNAMSIZ: 15 characters and the terminating zero.
            name if name.len() > 15 => Err(format!("{name}: longer than 15 characters")),
            name if name
                .trim_end_matches('+')
                .chars()
                .any(|c| c.is_whitespace() || c == '/' || c == '+') =>
            {
                Err(format!(
                    "{name}: not an interface name (or a prefix ending in +)"
                ))
            }
            name => Ok(Self::Named(name.to_string())),
        }
    }
}

/// Whether `interface` is covered by `pattern` (a name, or a prefix
/// ending in `+`, as iptables' `-i` takes it).
pub fn covers(pattern: &str, interface: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => interface.starts_with(prefix),
        None => interface == pattern,
    }
}

/// What a network interface is, as far as choosing a capture pattern
/// goes ([`link_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A bridge (`cni0`): one interface for every pod; named exactly.
    Bridge,
    /// One end of a pair (a veth): one interface per pod, named by the
    /// CNI's prefix.
    PerPod,
    /// Anything else: named exactly.
    Other,
}

/// The prefixes of per-pod interfaces of the common CNIs: Calico, the AWS
/// VPC CNI, kindnet and the ptp plugin, Cilium's legacy host routing, the
/// Azure CNI.
const CNI_PREFIXES: [&str; 5] = ["cali", "eni", "veth", "lxc", "azv"];

/// The pattern that covers `interfaces`: a bridge or other shared
/// interface by its name (`cni0`); per-pod interfaces by their CNI's
/// prefix as a wildcard (`cali+`), however many pods there are yet (a
/// known prefix, else the letters their names share). `None` when no one
/// pattern covers them (pods behind unrelated interfaces).
pub fn pattern_for(
    interfaces: &BTreeSet<String>,
    kind: impl Fn(&str) -> LinkKind,
) -> Option<String> {
    let mut exact = BTreeSet::new();
    let mut stems = BTreeSet::new();
    for name in interfaces {
        if kind(name) != LinkKind::PerPod {
            exact.insert(name.clone());
            continue;
        }
        let stem = CNI_PREFIXES
            .iter()
            .find(|p| name.starts_with(*p))
            .map(|p| p.to_string())
            .unwrap_or_else(|| name.chars().take_while(char::is_ascii_alphabetic).collect());
        if stem.is_empty() {
            exact.insert(name.clone());
        } else {
            stems.insert(stem);
        }
    }
    match (exact.len(), stems.len()) {
        (1, 0) => exact.pop_first(),
        (0, 1) => stems.pop_first().map(|stem| format!("{stem}+")),
        (0, _) => {
            // Unknown prefixes that differ in their last letters (`abcx1`,
            // `abcy2`): the letters they share.
            let first = stems.first()?.clone();
            let common = stems.iter().fold(first.len(), |n, s| {
                n.min(
                    first
                        .bytes()
                        .zip(s.bytes())
                        .take_while(|(a, b)| a == b)
                        .count(),
                )
            });
            (common > 0).then(|| format!("{}+", &first[..common]))
        }
        _ => None,
    }
}

/// What `name` is on this node (`/sys/class/net`): a bridge has a
/// `bridge` folder; one end of a pair links to another index than its own.
pub fn link_kind(name: &str) -> LinkKind {
    let base = std::path::Path::new("/sys/class/net").join(name);
    if base.join("bridge").is_dir() {
        return LinkKind::Bridge;
    }
    let read = |file: &str| {
        std::fs::read_to_string(base.join(file))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    match (read("ifindex"), read("iflink")) {
        (Some(index), Some(link)) if index != link => LinkKind::PerPod,
        _ => LinkKind::Other,
    }
}

/// The node's main routing tables, read once for a batch of lookups.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    v4: String,
    v6: String,
}

impl Routes {
    /// The tables of the network namespace this process runs in (empty
    /// where one cannot be read: no IPv6, say).
    pub fn read() -> Self {
        Self {
            v4: std::fs::read_to_string("/proc/net/route").unwrap_or_default(),
            v6: std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default(),
        }
    }

    /// The interface the main table routes `ip` to, or `None` when no
    /// route matches.
    pub fn interface(&self, ip: IpAddr) -> Option<String> {
        self.route(ip).map(|r| r.interface)
    }

    /// The interface of a pod of this node at `ip`: the route to it must
    /// be direct (no gateway) and specific (not a default route): a pod
    /// whose CNI has not wired it yet falls to the default route, which
    /// names the uplink, not the pods' interface.
    pub fn pod_interface(&self, ip: IpAddr) -> Option<String> {
        self.route(ip)
            .filter(|r| !r.gateway && r.prefix > 0)
            .map(|r| r.interface)
    }

    /// The subnet a pod of this node at `ip` shares its link with: the
    /// direct route to it when it covers more than the pod (a bridge's
    /// /24), `None` for a route to the pod alone (routed CNIs' /32) or
    /// none. Pods of one such subnet talk to each other on the link.
    pub fn shared_subnet(&self, ip: IpAddr) -> Option<(IpAddr, u32)> {
        let route = self.route(ip)?;
        let host = if ip.to_canonical().is_ipv4() { 32 } else { 128 };
        (!route.gateway && route.prefix > 0 && route.prefix < host)
            .then_some((route.network, route.prefix))
    }

    fn route(&self, ip: IpAddr) -> Option<Route> {
        match ip.to_canonical() {
            IpAddr::V4(ip) => lookup_v4(&self.v4, ip),
            IpAddr::V6(ip) => lookup_v6(&self.v6, ip),
        }
    }
}

/// The route chosen for an address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    interface: String,
    /// Through a next hop (`RTF_GATEWAY`), not directly on the link.
    gateway: bool,
    /// Prefix length: 0 for a default route.
    prefix: u32,
    /// The route's destination network.
    network: IpAddr,
}

const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;

/// Longest-prefix match in `/proc/net/route`: `Iface Destination Gateway
/// Flags RefCnt Use Metric Mask ...`, addresses as the hex of the
/// network-order word in the host's byte order.
fn lookup_v4(table: &str, ip: Ipv4Addr) -> Option<Route> {
    let network = |dest: u32| IpAddr::V4(Ipv4Addr::from(dest));
    let word = |hex: &str| {
        u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    let mut best: Option<(u32, u32, &str, u32, u32)> = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [iface, dest, _gw, flags, _ref, _use, metric, mask, ..] = f[..] else {
            continue;
        };
        let (Some(dest), Some(mask)) = (word(dest), word(mask)) else {
            continue;
        };
        let flags = u32::from_str_radix(flags, 16).unwrap_or(0);
        let metric: u32 = metric.parse().unwrap_or(u32::MAX);
        let (dest, mask) = (u32::from(dest), u32::from(mask));
        if flags & RTF_UP == 0 || u32::from(ip) & mask != dest {
            continue;
        }
        let bits = mask.count_ones();
        if best.is_none_or(|(b, m, _, _, _)| bits > b || (bits == b && metric < m)) {
            best = Some((bits, metric, iface, flags, dest));
        }
    }
    best.map(|(prefix, _, iface, flags, dest)| Route {
        interface: iface.to_string(),
        gateway: flags & RTF_GATEWAY != 0,
        prefix,
        network: network(dest),
    })
}

/// Longest-prefix match in `/proc/net/ipv6_route`: `dest plen src slen
/// next_hop metric refcnt use flags iface`, addresses as 32 hex digits.
fn lookup_v6(table: &str, ip: Ipv6Addr) -> Option<Route> {
    let mut best: Option<(u32, u32, &str, u32, u128)> = None;
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [dest, plen, _src, _slen, _hop, metric, _ref, _use, flags, iface] = f[..] else {
            continue;
        };
        let (Ok(dest), Ok(plen)) = (
            u128::from_str_radix(dest, 16),
            u32::from_str_radix(plen, 16),
        ) else {
            continue;
        };
        let flags = u32::from_str_radix(flags, 16).unwrap_or(0);
        let metric = u32::from_str_radix(metric, 16).unwrap_or(u32::MAX);
        let mask = if plen == 0 {
            0
        } else {
            u128::MAX << (128 - plen.min(128))
        };
        if flags & RTF_UP == 0 || iface == "lo" || u128::from(ip) & mask != dest {
            continue;
        }
        if best.is_none_or(|(b, m, _, _, _)| plen > b || (plen == b && metric < m)) {
            best = Some((plen, metric, iface, flags, dest));
        }
    }
    best.map(|(prefix, _, iface, flags, dest)| Route {
        interface: iface.to_string(),
        gateway: flags & RTF_GATEWAY != 0,
        prefix,
        network: IpAddr::V6(Ipv6Addr::from(dest)),
    })
}

/// Whether some interface of this node is covered by `pattern`.
pub fn present(pattern: &str) -> bool {
    std::fs::read_dir("/sys/class/net")
        .map(|dir| {
            dir.flatten()
                .any(|e| covers(pattern, &e.file_name().to_string_lossy()))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Calico node: default route, the node network, two pods.
    fn hex(ip: &str) -> String {
        let ip: Ipv4Addr = ip.parse().unwrap();
        format!("{:08X}", u32::from_ne_bytes(ip.octets()))
    }

    fn route_table(routes: &[(&str, &str, &str, &str, u32)]) -> String {
        let mut t = String::from(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n",
        );
        for (iface, dest, mask, flags, metric) in routes {
            t.push_str(&format!(
                "{iface}\t{}\t00000000\t{flags}\t0\t0\t{metric}\t{}\t0\t0\t0\n",
                hex(dest),
                hex(mask)
            ));
        }
        t
    }

    #[test]
    fn the_longest_matching_up_route_names_the_interface() {
        let t = route_table(&[
            ("eth0", "0.0.0.0", "0.0.0.0", "0003", 0),
            ("eth0", "172.30.0.0", "255.255.255.0", "0001", 0),
            ("cni0", "10.244.1.0", "255.255.255.0", "0001", 0),
            ("calia1", "10.244.2.7", "255.255.255.255", "0005", 0),
            // A route that is down is no route.
            ("down0", "10.244.3.0", "255.255.255.0", "0000", 0),
            // The lower metric wins among equal prefixes.
            ("slow0", "10.244.4.0", "255.255.255.0", "0001", 100),
            ("fast0", "10.244.4.0", "255.255.255.0", "0001", 10),
        ]);
        let at = |ip: &str| lookup_v4(&t, ip.parse().unwrap()).map(|r| r.interface);
        assert_eq!(at("10.244.1.10").as_deref(), Some("cni0"));
        assert_eq!(at("10.244.2.7").as_deref(), Some("calia1"));
        assert_eq!(
            at("10.244.3.9").as_deref(),
            Some("eth0"),
            "the down route is skipped"
        );
        assert_eq!(at("10.244.4.1").as_deref(), Some("fast0"));
        assert_eq!(at("8.8.8.8").as_deref(), Some("eth0"));
        assert_eq!(
            lookup_v4("Iface\tDestination\n", "10.0.0.1".parse().unwrap()),
            None
        );
        // A pod only the default route reaches is not behind a pod
        // interface (its CNI has not wired it yet).
        let routes = Routes {
            v4: t,
            v6: String::new(),
        };
        assert_eq!(
            routes
                .pod_interface("10.244.2.7".parse().unwrap())
                .as_deref(),
            Some("calia1")
        );
        assert_eq!(routes.pod_interface("10.9.9.9".parse().unwrap()), None);
        assert_eq!(
            routes.interface("10.9.9.9".parse().unwrap()).as_deref(),
            Some("eth0")
        );
    }

    #[test]
    fn ipv6_routes_match_by_prefix_length() {
        let t = "\
fd000244000100000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     cni0
fd000244000200000000000000000010 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001  cali2b
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
";
        let at = |ip: &str| lookup_v6(t, ip.parse().unwrap()).map(|r| r.interface);
        assert_eq!(at("fd00:244:1::10").as_deref(), Some("cni0"));
        assert_eq!(at("fd00:244:2::10").as_deref(), Some("cali2b"));
        assert_eq!(at("2001:db8::1").as_deref(), Some("eth0"));
        assert_eq!(
            at("::1"),
            Some("eth0".into()),
            "lo is never a pod's interface"
        );
    }

    #[test]
    fn the_pattern_is_the_shared_interface_or_its_cni_prefix() {
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        let kind = |name: &str| match name {
            "cni0" => LinkKind::Bridge,
            "eth0" | "ens5" => LinkKind::Other,
            _ => LinkKind::PerPod,
        };
        assert_eq!(pattern_for(&set(&["cni0"]), kind).as_deref(), Some("cni0"));
        // One Calico pod is enough to know the prefix: the next pod's
        // interface (another hash) is covered too.
        assert_eq!(
            pattern_for(&set(&["calia1b2c3d4e5f"]), kind).as_deref(),
            Some("cali+")
        );
        assert_eq!(
            pattern_for(&set(&["calia1", "cali2b"]), kind).as_deref(),
            Some("cali+")
        );
        assert_eq!(
            pattern_for(&set(&["veth1", "veth12"]), kind).as_deref(),
            Some("veth+")
        );
        assert_eq!(
            pattern_for(&set(&["eni0a1"]), kind).as_deref(),
            Some("eni+")
        );
        // An unknown CNI: the letters its interfaces share.
        assert_eq!(
            pattern_for(&set(&["podxa1", "podyb2"]), kind).as_deref(),
            Some("pod+")
        );
        assert_eq!(
            pattern_for(&set(&["podx1"]), kind).as_deref(),
            Some("podx+")
        );
        // No single pattern.
        assert_eq!(pattern_for(&set(&["cni0", "eth0"]), kind), None);
        assert_eq!(pattern_for(&set(&["cni0", "cali1"]), kind), None);
        assert_eq!(pattern_for(&set(&["abc1", "xyz2"]), kind), None);
        assert_eq!(pattern_for(&set(&[]), kind), None);
        // A shared interface that is no bridge is still named exactly.
        assert_eq!(pattern_for(&set(&["ens5"]), kind).as_deref(), Some("ens5"));
        assert!(covers("cali+", "cali2b") && !covers("cali+", "cni0"));
        assert!(covers("cni0", "cni0") && !covers("cni0", "cni01"));
    }

    #[test]
    fn the_setting_is_auto_or_a_plausible_name() {
        assert_eq!("auto".parse(), Ok(InterfaceSetting::Auto));
        assert_eq!("cali+".parse(), Ok(InterfaceSetting::Named("cali+".into())));
        for bad in ["", "a b", "x/y", "averyveryverylongname", "ca+li"] {
            assert!(bad.parse::<InterfaceSetting>().is_err(), "{bad}");
        }
    }
}
