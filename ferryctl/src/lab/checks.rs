//! The traffic checks of the example cluster (deploy/examples): real
//! requests through the mesh, and what they saw.

use super::{Lab, OUTSIDE};

/// One traffic check of the example cluster and what it saw.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub what: String,
    pub ok: bool,
    pub saw: String,
}

impl Lab {
    /// The traffic checks of deploy/examples: real requests through the mesh.
    pub fn check_examples(&self) -> Vec<CheckResult> {
        let mut results = Vec::new();
        // First, while no tunnel is open yet: the link between the nodes
        // carries the cross-node request only inside TLS.
        let marker = format!("ferry-link-check-{}", std::process::id());
        let mut answered = String::new();
        let captured = self.capture_link("node-a", &[&marker, "shop/backend-2"], || {
            answered = self.curl(
                "shop/frontend",
                &format!("http://10.244.2.11:9090/{marker}"),
            )?;
            Ok(())
        });
        let (ok, saw) = match captured {
            Ok(report) => match report.only_tls(15008, &[15008, 15010]) {
                Ok(summary) => (
                    answered == "shop/backend-2",
                    format!("answered by {answered}; {summary}"),
                ),
                Err(problem) => (false, problem),
            },
            Err(e) => (false, format!("{e:#}")),
        };
        results.push(CheckResult {
            what: "the link between node-a and node-b carries only TLS: shop/frontend -> shop/backend-2".into(),
            ok,
            saw,
        });
        let mut expect = |what: &str, pod: &str, url: &str, want: &dyn Fn(&str) -> bool| {
            let (ok, saw) = match self.curl(pod, url) {
                Ok(body) => (want(&body), format!("answered by {body}")),
                Err(e) => (
                    want(""),
                    format!("refused ({})", e.to_string().lines().next().unwrap_or("")),
                ),
            };
            results.push(CheckResult {
                what: format!("{what}: {pod} -> {url}"),
                ok,
                saw,
            });
        };
        expect(
            "ClusterIP by name, named targetPort, policy allows",
            "shop/frontend",
            "http://backend.shop.svc.cluster.local/",
            &|b| b.starts_with("shop/backend-"),
        );
        expect(
            "ClusterIP by address, same node (selector-less, internalTrafficPolicy Local)",
            "shop/frontend",
            "http://10.96.0.30/",
            &|b| b == "shop/backend-1",
        );
        expect(
            "ClusterIP by address across nodes (client outside the mesh, policed inbound)",
            "default/client",
            "http://10.96.0.10/",
            &|b| b == "shop/frontend",
        );
        expect(
            "pod across nodes by address (HBONE)",
            "shop/frontend",
            "http://10.244.2.12:9091/",
            &|b| b == "shop/backend-3",
        );
        expect(
            "pod in no service, by address (outside the mesh: plaintext)",
            "shop/frontend",
            "http://10.244.2.30:8080/",
            &|b| b == "default/client",
        );
        expect(
            "ExternalName through DNS (CNAME to a service)",
            "shop/frontend",
            "http://backend-alias.shop/",
            &|b| b.starts_with("shop/backend-"),
        );
        expect(
            "policy denies (backend admits only the frontend)",
            "default/client",
            "http://backend.shop/",
            &|b| b.is_empty(),
        );
        expect(
            "service across nodes by short name (client outside the mesh, policed inbound)",
            "default/client",
            "http://frontend.shop/",
            &|b| b == "shop/frontend",
        );
        expect(
            "headless service through DNS",
            "default/client",
            "http://db.shop:5432/",
            &|b| b == "shop/db-0",
        );
        let node_a = self
            .nodes
            .first()
            .map(|n| n.ip.to_string())
            .unwrap_or_default();
        expect(
            "NodePort from outside the cluster",
            OUTSIDE,
            &format!("http://{node_a}:30080/"),
            &|b| b == "shop/frontend",
        );
        if let Some(node_b) = self.nodes.get(1) {
            expect(
                "NodePort with externalTrafficPolicy Local on a node without the pod: refused",
                OUTSIDE,
                &format!("http://{}:30080/", node_b.ip),
                &|b| b.is_empty(),
            );
        }
        expect(
            "LoadBalancer address from outside the cluster",
            OUTSIDE,
            "http://192.0.2.10/",
            &|b| b == "shop/frontend",
        );
        let mut seen = std::collections::BTreeSet::new();
        let mut failures = 0;
        for _ in 0..6 {
            match self.curl("shop/frontend", "http://api.shop/") {
                Ok(body) => {
                    seen.insert(body);
                }
                Err(_) => failures += 1,
            }
        }
        results.push(CheckResult {
            what: "round robin over both nodes: shop/frontend -> http://api.shop/ x6".into(),
            ok: failures == 0 && seen.len() == 3,
            saw: format!(
                "answered by {}; {failures} failed",
                seen.into_iter().collect::<Vec<_>>().join(", ")
            ),
        });
        for node in &self.nodes {
            let (ok, saw) = match self.config_dump(&node.name) {
                Ok(dump) => {
                    let identities: Vec<String> = dump["certificates"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c["identity"].as_str().map(str::to_string))
                        .collect();
                    let pool = &dump["hbone_pool"];
                    (
                        !identities.is_empty(),
                        format!(
                            "identities {}; HBONE (TLS 1.3) connections {}, handshakes {}",
                            identities.join(", "),
                            pool["connections"],
                            pool["handshakes"]
                        ),
                    )
                }
                Err(e) => (false, e.to_string()),
            };
            results.push(CheckResult {
                what: format!("node {} proxy", node.name),
                ok,
                saw,
            });
        }
        results
    }
}
