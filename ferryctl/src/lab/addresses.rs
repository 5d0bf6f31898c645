//! The client-address checks: pods see the address of the client that
//! connected, not the node proxy's (`ferry_proxy::net::transparent`):
//! same-node (from one mesh pod to another: the proxy delivers directly),
//! cross-node (HBONE: the address from the tunnel), and plaintext from a
//! pod outside the mesh (policed by the destination's proxy). Behind an L2
//! bridge a same-node server would answer its client around the proxy, so
//! there the proxy keeps the node's address and counts the fallback.

use super::checks::CheckResult;
use super::cni::Cni;
use super::Lab;

impl Lab {
    /// The client-address checks of the example cluster (see the module).
    pub fn check_client_addresses(&self) -> Vec<CheckResult> {
        let node_a_gateway = self
            .nodes
            .iter()
            .find(|n| n.name == "node-a")
            .map(|n| n.gateway.to_string())
            .unwrap_or_default();
        let same_node_expected = if self.cni == Cni::Bridge {
            // Falls back to the node's address on the bridge.
            node_a_gateway.clone()
        } else {
            "10.244.1.10".to_string()
        };
        let cases = [
            (
                "same node (mesh to mesh, delivered by the proxy)",
                "shop/frontend",
                "http://10.244.1.11:9090/client",
                same_node_expected,
            ),
            (
                "across nodes over HBONE (the address from the tunnel)",
                "shop/frontend",
                "http://10.244.2.11:9090/client",
                "10.244.1.10".to_string(),
            ),
            (
                "plaintext from a pod outside the mesh, policed at the destination",
                "default/client",
                "http://10.244.1.10:8080/client",
                "10.244.2.30".to_string(),
            ),
        ];
        let mut results = Vec::new();
        for (what, pod, url, want) in cases {
            let (ok, saw) = match self.curl(pod, url) {
                Ok(seen) => (
                    seen == want,
                    format!("the server saw {seen} (expected {want})"),
                ),
                Err(e) => (false, format!("{e:#}")),
            };
            results.push(CheckResult {
                what: format!("the server sees its client's address, {what}: {pod} -> {url}"),
                ok,
                saw,
            });
        }
        if self.cni == Cni::Bridge {
            let counted = self
                .exec_in("node-a", "curl", &["-sf", "127.0.0.1:15000/metrics"])
                .unwrap_or_default()
                .lines()
                .find(|l| {
                    l.starts_with("ferry_client_address_fallbacks_total{reason=\"same_link\"}")
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            results.push(CheckResult {
                what: "a same-node fallback behind a bridge is counted".into(),
                ok: counted >= 1.0,
                saw: format!("ferry_client_address_fallbacks_total{{reason=\"same_link\"}} = {counted} on node-a"),
            });
        }
        results
    }
}
