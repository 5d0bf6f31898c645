//! The API server's defaulting, for objects that did not pass through one
//! (a manifest folder; `ferryctl check`). Objects from the Kubernetes API
//! are already defaulted, and applying the rules again changes nothing.
//!
//! Only the fields Ferry reads, with the rules of the Kubernetes API
//! reference (`SetDefaults_*` of core/v1, discovery/v1, networking/v1):
//!
//! - NetworkPolicy: `policyTypes` empty or missing becomes `[Ingress]`,
//!   plus `Egress` when the spec has at least one egress rule; a port's
//!   `protocol` defaults to TCP.
//! - Service: `type` ClusterIP; `sessionAffinity` None; each port's
//!   `protocol` TCP and `targetPort` its `port`; `internalTrafficPolicy`
//!   Cluster (not for ExternalName); `externalTrafficPolicy` Cluster for
//!   NodePort and LoadBalancer.
//! - EndpointSlice: a port's `protocol` TCP.
//! - Pod: a container port's `protocol` TCP.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::K8sObject;

const TCP: &str = "TCP";

/// Fills in what the API server would.
pub fn apply(object: &mut K8sObject) {
    match object {
        K8sObject::NetworkPolicy(policy) => {
            if let Some(spec) = policy.spec.as_mut() {
                if spec.policy_types.as_ref().is_none_or(Vec::is_empty) {
                    let mut types = vec!["Ingress".to_string()];
                    if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                        types.push("Egress".to_string());
                    }
                    spec.policy_types = Some(types);
                }
                let ports = spec
                    .ingress
                    .iter_mut()
                    .flatten()
                    .flat_map(|r| r.ports.iter_mut().flatten())
                    .chain(
                        spec.egress
                            .iter_mut()
                            .flatten()
                            .flat_map(|r| r.ports.iter_mut().flatten()),
                    );
                for port in ports {
                    port.protocol.get_or_insert_with(|| TCP.into());
                }
            }
        }
        K8sObject::Service(service) => {
            let Some(spec) = service.spec.as_mut() else {
                return;
            };
            let kind = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
            spec.session_affinity.get_or_insert_with(|| "None".into());
            for port in spec.ports.iter_mut().flatten() {
                port.protocol.get_or_insert_with(|| TCP.into());
                port.target_port.get_or_insert(IntOrString::Int(port.port));
            }
            if kind != "ExternalName" {
                spec.internal_traffic_policy
                    .get_or_insert_with(|| "Cluster".into());
            }
            if kind == "NodePort" || kind == "LoadBalancer" {
                spec.external_traffic_policy
                    .get_or_insert_with(|| "Cluster".into());
            }
        }
        K8sObject::EndpointSlice(slice) => {
            for port in slice.ports.iter_mut().flatten() {
                port.protocol.get_or_insert_with(|| TCP.into());
            }
        }
        K8sObject::Pod(pod) => {
            let containers = pod.spec.iter_mut().flat_map(|s| s.containers.iter_mut());
            for port in containers.flat_map(|c| c.ports.iter_mut().flatten()) {
                port.protocol.get_or_insert_with(|| TCP.into());
            }
        }
        K8sObject::Namespace(_) | K8sObject::Node(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    fn policy(yaml: &str) -> K8sObject {
        let policy: NetworkPolicy = serde_yaml::from_str(yaml).unwrap();
        K8sObject::NetworkPolicy(Box::new(policy))
    }

    fn types(object: &K8sObject) -> Vec<String> {
        match object {
            K8sObject::NetworkPolicy(p) => p
                .spec
                .as_ref()
                .and_then(|s| s.policy_types.clone())
                .unwrap_or_default(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn policy_types_default_as_the_api_server_does() {
        let head = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n";
        let cases = [
            ("missing, no egress", "", vec!["Ingress"]),
            (
                "empty list, no egress",
                "  policyTypes: []\n",
                vec!["Ingress"],
            ),
            (
                "missing, an egress rule",
                "  egress: [{to: [{podSelector: {}}]}]\n",
                vec!["Ingress", "Egress"],
            ),
            (
                "missing, an empty egress list (no rule)",
                "  egress: []\n",
                vec!["Ingress"],
            ),
            (
                "empty list, an egress rule",
                "  policyTypes: []\n  egress: [{}]\n",
                vec!["Ingress", "Egress"],
            ),
            (
                "given: kept as written",
                "  policyTypes: [Egress]\n  ingress: [{}]\n",
                vec!["Egress"],
            ),
        ];
        for (case, tail, want) in cases {
            let mut object = policy(&format!("{head}{tail}"));
            apply(&mut object);
            assert_eq!(types(&object), want, "{case}");
            // Applying the rules again changes nothing.
            let once = format!("{object:?}");
            apply(&mut object);
            assert_eq!(format!("{object:?}"), once, "{case}");
        }
    }

    #[test]
    fn service_ports_and_policies_default() {
        let service: k8s_openapi::api::core::v1::Service = serde_yaml::from_str(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  type: NodePort\n  ports: [{port: 80}]\n",
        )
        .unwrap();
        let mut object = K8sObject::Service(Box::new(service));
        apply(&mut object);
        let K8sObject::Service(service) = &object else {
            unreachable!()
        };
        let spec = service.spec.as_ref().unwrap();
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
        assert_eq!(port.target_port, Some(IntOrString::Int(80)));
        assert_eq!(spec.session_affinity.as_deref(), Some("None"));
        assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
    }
}
