//! Semantic validation of Kubernetes objects, beyond what their types check.
//!
//! Every source runs an object through [`validate`] before it reaches the
//! store; an object with problems is refused and the last good version of it
//! stays in force. Each problem names the field by its path in the manifest
//! (`spec.ports[0].targetPort`), so a person can find and fix it.

use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::K8sObject;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One problem with one field of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Default)]
struct Problems(Vec<FieldProblem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldProblem {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Checks an object; an empty list means it may be used.
pub fn validate(object: &K8sObject) -> Vec<FieldProblem> {
    let mut p = Problems::default();
    match object {
        K8sObject::Namespace(o) => metadata(&o.metadata, &mut p),
        K8sObject::Node(o) => node(o, &mut p),
        K8sObject::Pod(o) => pod(o, &mut p),
        K8sObject::Service(o) => service(o, &mut p),
        K8sObject::EndpointSlice(o) => endpoint_slice(o, &mut p),
        K8sObject::NetworkPolicy(o) => network_policy(o, &mut p),
    }
    p.0
}

/// RFC 1123 label: what Kubernetes requires of namespace names and port names' shape.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: object names.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// IANA service name: what a named port must be (at most 15 characters, a letter in it).
fn is_port_name(s: &str) -> bool {
    is_dns_label(s)
        && s.len() <= 15
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.contains("--")
}

fn metadata(meta: &ObjectMeta, p: &mut Problems) {
    match meta.name.as_deref() {
        None | Some("") => p.add("metadata.name", "missing"),
        Some(name) if !is_dns_subdomain(name) => p.add(
            "metadata.name",
            format!("{name:?} is not a valid name (lower-case letters, digits, '-' and '.')"),
        ),
        Some(_) => {}
    }
    if let Some(ns) = meta.namespace.as_deref() {
        if !is_dns_label(ns) {
            p.add(
                "metadata.namespace",
                format!("{ns:?} is not a valid namespace name"),
            );
        }
    }
}

fn port_number(value: i32, field: &str, p: &mut Problems) {
    if !(1..=65535).contains(&value) {
        p.add(field, format!("{value} is outside 1-65535"));
    }
}

fn protocol(value: Option<&str>, field: &str, p: &mut Problems) {
    if let Some(v) = value {
        if ferry_api::model::Protocol::from_k8s(v).is_none() {
            p.add(field, format!("{v:?} is not one of TCP, UDP, SCTP"));
        }
    }
}

fn ip(value: &str, field: &str, p: &mut Problems) {
    if value.parse::<IpAddr>().is_err() {
        p.add(field, format!("{value:?} is not an IP address"));
    }
}

fn int_or_port_name(value: &IntOrString, field: &str, p: &mut Problems) {
    match value {
        IntOrString::Int(n) => port_number(*n, field, p),
        IntOrString::String(s) => {
            // A numeric string is accepted by the API server as a number.
            if let Ok(n) = s.parse::<i32>() {
                port_number(n, field, p);
            } else if !is_port_name(s) {
                p.add(
                    field,
                    format!("{s:?} is neither a port number nor a valid port name"),
                );
            }
        }
    }
}

fn label_selector(sel: &LabelSelector, field: &str, p: &mut Problems) {
    for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        let values = expr.values.as_deref().unwrap_or_default();
        match expr.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => p.add(
                format!("{at}.values"),
                format!("must not be empty for operator {}", expr.operator),
            ),
            "Exists" | "DoesNotExist" if !values.is_empty() => p.add(
                format!("{at}.values"),
                format!("must be empty for operator {}", expr.operator),
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => p.add(
                format!("{at}.operator"),
                format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
            ),
        }
    }
}

fn node(o: &Node, p: &mut Problems) {
    metadata(&o.metadata, p);
    let addresses = o.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in addresses.into_iter().flatten().enumerate() {
        if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
            ip(&a.address, &format!("status.addresses[{i}].address"), p);
        }
    }
}

fn pod(o: &Pod, p: &mut Problems) {
    metadata(&o.metadata, p);
    if let Some(spec) = &o.spec {
        for (c, container) in spec.containers.iter().enumerate() {
            for (i, port) in container.ports.iter().flatten().enumerate() {
                let at = format!("spec.containers[{c}].ports[{i}]");
                port_number(port.container_port, &format!("{at}.containerPort"), p);
                protocol(port.protocol.as_deref(), &format!("{at}.protocol"), p);
                if let Some(name) = port.name.as_deref() {
                    if !is_port_name(name) {
                        p.add(
                            format!("{at}.name"),
                            format!("{name:?} is not a valid port name"),
                        );
                    }
                }
            }
        }
    }
    if let Some(status) = &o.status {
        if let Some(pod_ip) = status.pod_ip.as_deref() {
            ip(pod_ip, "status.podIP", p);
        }
        for (i, a) in status.pod_ips.iter().flatten().enumerate() {
            ip(&a.ip, &format!("status.podIPs[{i}].ip"), p);
        }
    }
}

fn service(o: &Service, p: &mut Problems) {
    metadata(&o.metadata, p);
    if let Some(name) = o.metadata.name.as_deref() {
        if !is_dns_label(name) {
            p.add(
                "metadata.name",
                format!("{name:?} is not a valid service name (a DNS label)"),
            );
        }
    }
    let Some(spec) = &o.spec else {
        p.add("spec", "missing");
        return;
    };
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        service_type,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        p.add(
            "spec.type",
            format!(
                "{service_type:?} is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"
            ),
        );
    }
    if service_type == "ExternalName" && spec.external_name.as_deref().unwrap_or("").is_empty() {
        p.add("spec.externalName", "required for type ExternalName");
    }
    if let Some(cluster_ip) = spec.cluster_ip.as_deref() {
        if !cluster_ip.is_empty() && cluster_ip != "None" {
            ip(cluster_ip, "spec.clusterIP", p);
        }
    }
    for (i, cip) in spec.cluster_ips.iter().flatten().enumerate() {
        if cip != "None" {
            ip(cip, &format!("spec.clusterIPs[{i}]"), p);
        }
    }
    for (i, eip) in spec.external_ips.iter().flatten().enumerate() {
        ip(eip, &format!("spec.externalIPs[{i}]"), p);
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    let mut names = std::collections::BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        port_number(port.port, &format!("{at}.port"), p);
        protocol(port.protocol.as_deref(), &format!("{at}.protocol"), p);
        if let Some(t) = &port.target_port {
            int_or_port_name(t, &format!("{at}.targetPort"), p);
        }
        if let Some(np) = port.node_port {
            port_number(np, &format!("{at}.nodePort"), p);
        }
        let name = port.name.as_deref().unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            p.add(
                format!("{at}.name"),
                "required when the service has more than one port",
            );
        } else if !name.is_empty() && !is_dns_label(name) {
            p.add(
                format!("{at}.name"),
                format!("{name:?} is not a valid port name"),
            );
        }
        if !name.is_empty() && !names.insert(name) {
            p.add(
                format!("{at}.name"),
                format!("duplicate port name {name:?}"),
            );
        }
    }
    match spec.session_affinity.as_deref() {
        None | Some("None") | Some("ClientIP") => {}
        Some(other) => p.add(
            "spec.sessionAffinity",
            format!("{other:?} is not one of None, ClientIP"),
        ),
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    if let Some(t) = timeout {
        if !(1..=86_400).contains(&t) {
            p.add(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                format!("{t} is outside 1-86400"),
            );
        }
    }
    for (field, value) in [
        (
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        ),
        (
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        ),
    ] {
        if let Some(v) = value {
            if v != "Cluster" && v != "Local" {
                p.add(field, format!("{v:?} is not one of Cluster, Local"));
            }
        }
    }
    if let Some(sel) = &spec.selector {
        for key in sel.keys() {
            if key.is_empty() {
                p.add("spec.selector", "label keys must not be empty");
            }
        }
    }
    let ingress = o
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        if let Some(v) = ing.ip.as_deref() {
            ip(v, &format!("status.loadBalancer.ingress[{i}].ip"), p);
        }
    }
}

fn endpoint_slice(o: &EndpointSlice, p: &mut Problems) {
    metadata(&o.metadata, p);
    let service = o
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL));
    if service.is_none_or(|s| s.is_empty()) {
        p.add(
            format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            "missing: the slice belongs to no service",
        );
    }
    let family = o.address_type.as_str();
    if !matches!(family, "IPv4" | "IPv6" | "FQDN") {
        p.add(
            "addressType",
            format!("{family:?} is not one of IPv4, IPv6, FQDN"),
        );
    }
    for (i, ep) in o.endpoints.iter().enumerate() {
        if ep.addresses.is_empty() {
            p.add(format!("endpoints[{i}].addresses"), "must not be empty");
        }
        for (j, addr) in ep.addresses.iter().enumerate() {
            let at = format!("endpoints[{i}].addresses[{j}]");
            let parsed = addr.parse::<IpAddr>();
            match (family, parsed) {
                ("IPv4", Ok(IpAddr::V4(_))) | ("IPv6", Ok(IpAddr::V6(_))) | ("FQDN", _) => {}
                ("IPv4" | "IPv6", _) => p.add(at, format!("{addr:?} is not an {family} address")),
                _ => {}
            }
        }
    }
    for (i, port) in o.ports.iter().flatten().enumerate() {
        if let Some(n) = port.port {
            port_number(n, &format!("ports[{i}].port"), p);
        }
        protocol(port.protocol.as_deref(), &format!("ports[{i}].protocol"), p);
    }
}

fn policy_ports(ports: &[NetworkPolicyPort], field: &str, p: &mut Problems) {
    for (i, port) in ports.iter().enumerate() {
        let at = format!("{field}.ports[{i}]");
        protocol(port.protocol.as_deref(), &format!("{at}.protocol"), p);
        if let Some(v) = &port.port {
            int_or_port_name(v, &format!("{at}.port"), p);
        }
        if let Some(end) = port.end_port {
            match &port.port {
                Some(IntOrString::Int(start)) => {
                    port_number(end, &format!("{at}.endPort"), p);
                    if end < *start {
                        p.add(
                            format!("{at}.endPort"),
                            format!("{end} is below port {start}"),
                        );
                    }
                }
                _ => p.add(format!("{at}.endPort"), "needs a numeric port"),
            }
        }
    }
}

fn policy_peers(peers: &[NetworkPolicyPeer], field: &str, p: &mut Problems) {
    for (i, peer) in peers.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if let Some(sel) = &peer.pod_selector {
            label_selector(sel, &format!("{at}.podSelector"), p);
        }
        if let Some(sel) = &peer.namespace_selector {
            label_selector(sel, &format!("{at}.namespaceSelector"), p);
        }
        if let Some(block) = &peer.ip_block {
            if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
                p.add(
                    &at,
                    "ipBlock cannot be combined with podSelector or namespaceSelector",
                );
            }
            match ferry_api::cidr::Cidr::parse(&block.cidr) {
                Err(e) => p.add(format!("{at}.ipBlock.cidr"), e),
                Ok(cidr) => {
                    for (j, ex) in block.except.iter().flatten().enumerate() {
                        match ferry_api::cidr::Cidr::parse(ex) {
                            Err(e) => p.add(format!("{at}.ipBlock.except[{j}]"), e),
                            Ok(inner) if !cidr.contains_cidr(&inner) => p.add(
                                format!("{at}.ipBlock.except[{j}]"),
                                format!("{ex} is not inside {}", block.cidr),
                            ),
                            Ok(_) => {}
                        }
                    }
                }
            }
        }
        if peer.pod_selector.is_none()
            && peer.namespace_selector.is_none()
            && peer.ip_block.is_none()
        {
            p.add(
                &at,
                "a peer needs podSelector, namespaceSelector or ipBlock",
            );
        }
    }
}

fn network_policy(o: &NetworkPolicy, p: &mut Problems) {
    metadata(&o.metadata, p);
    let Some(spec) = &o.spec else {
        p.add("spec", "missing");
        return;
    };
    if let Some(sel) = &spec.pod_selector {
        label_selector(sel, "spec.podSelector", p);
    }
    for (i, t) in spec.policy_types.iter().flatten().enumerate() {
        if t != "Ingress" && t != "Egress" {
            p.add(
                format!("spec.policyTypes[{i}]"),
                format!("{t:?} is not one of Ingress, Egress"),
            );
        }
    }
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        policy_peers(
            rule.from.as_deref().unwrap_or_default(),
            &format!("spec.ingress[{i}].from"),
            p,
        );
        policy_ports(
            rule.ports.as_deref().unwrap_or_default(),
            &format!("spec.ingress[{i}]"),
            p,
        );
    }
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        policy_peers(
            rule.to.as_deref().unwrap_or_default(),
            &format!("spec.egress[{i}].to"),
            p,
        );
        policy_ports(
            rule.ports.as_deref().unwrap_or_default(),
            &format!("spec.egress[{i}]"),
            p,
        );
    }
}
