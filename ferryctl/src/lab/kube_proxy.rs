//! A stand-in for kube-proxy in the lab's nodes, for the clusters Ferry
//! shares with it: its iptables mode reduced to what the lab needs. Every
//! TCP port of every Service's cluster IPs is DNATed to one of the ready
//! endpoints serving it, picked at random (`-m statistic`, as kube-proxy
//! spreads connections), from a `KUBE-SERVICES` chain jumped to from the
//! top of nat PREROUTING (kube-proxy inserts its jump first). Node ports,
//! load-balancer addresses and traffic policies are left out: the lab
//! checks which connections Ferry takes and which it leaves, not
//! kube-proxy.
//!
//! The rules come from the same state a proxy would hold for the
//! manifests ([`crate::mesh::proxy_state`]).

use std::fmt::Write as _;
use std::net::IpAddr;

use ferry_api::model::Protocol;
use ferry_core::state::ProxyState;

/// The chain, named as kube-proxy names its own.
pub const CHAIN: &str = "KUBE-SERVICES";

/// The stand-in's IPv4 rules, as `iptables-restore --noflush` input (the
/// chain only; [`JUMP`] is inserted separately).
pub fn render(state: &ProxyState) -> String {
    let mut out = format!("*nat\n:{CHAIN} - [0:0]\n");
    let mut services: Vec<_> = state
        .service_addresses()
        .filter(|(ip, s)| ip.is_ipv4() && s.cluster_ips.contains(ip))
        .collect();
    services.sort_by_key(|(ip, _)| *ip);
    for (ip, service) in services {
        for (i, port) in service.ports.iter().enumerate() {
            if port.protocol != Protocol::Tcp {
                continue;
            }
            let endpoints: Vec<(IpAddr, u16)> = service
                .endpoints
                .iter()
                .filter(|e| e.ready && e.address.is_ipv4())
                .filter_map(|e| Some((e.address, e.ports.get(i).copied().flatten()?)))
                .collect();
            let n = endpoints.len();
            for (k, (address, target)) in endpoints.iter().enumerate() {
                // The k-th rule takes 1/(n-k) of what the earlier ones left:
                // each endpoint gets 1/n.
                let pick = if k + 1 < n {
                    format!(
                        " -m statistic --mode random --probability {:.5}",
                        1.0 / (n - k) as f64
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "-A {CHAIN} -d {ip}/32 -p tcp --dport {}{pick} -j DNAT --to-destination {address}:{target}",
                    port.port
                );
            }
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// The jump into [`CHAIN`], inserted first in nat PREROUTING (after the
/// node proxy started: Ferry must put its own jumps back ahead of it).
pub const JUMP: [&str; 8] = ["-t", "nat", "-I", "PREROUTING", "1", "-j", CHAIN, "-w"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cluster_ip_port_spreads_over_its_ready_endpoints() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let state = crate::mesh::proxy_state(&dir).expect("the example manifests load");
        let rules = render(&state);
        // backend: 10.96.0.20:80 → the api port of three pods, 1/3 each.
        let backend: Vec<&str> = rules
            .lines()
            .filter(|l| l.contains("-d 10.96.0.20/32 "))
            .collect();
        assert_eq!(backend.len(), 3, "{rules}");
        assert!(
            backend[0].contains("--probability 0.33333"),
            "{}",
            backend[0]
        );
        assert!(
            backend[1].contains("--probability 0.50000"),
            "{}",
            backend[1]
        );
        assert!(!backend[2].contains("statistic"), "{}", backend[2]);
        // Headless services have no cluster IP: nothing.
        assert!(
            rules.starts_with("*nat\n:KUBE-SERVICES - [0:0]\n"),
            "{rules}"
        );
        assert!(rules.ends_with("COMMIT\n"));
    }
}
