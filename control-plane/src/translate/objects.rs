//! Pure translation rules: one Kubernetes object (plus what it refers to) in,
//! one model resource out. The incremental bookkeeping lives in
//! [`super::Translator`]; these functions hold the Kubernetes semantics.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use std::sync::Arc;

use ferry_api::model::{
    self, Endpoint, Interner, LabelLookup, Labels, Name, Protocol, ServicePort, ServiceType,
    TargetPort, TrafficPolicy,
};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Nodes by name.
pub type Nodes = std::collections::HashMap<String, Box<core::Node>>;

/// A node's zone, for topology-aware routing.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A node's zone label (`None` when absent or empty).
pub fn node_zone(node: &core::Node) -> Option<&str> {
    node.metadata
        .labels
        .as_ref()?
        .get(ZONE_LABEL)
        .map(String::as_str)
        .filter(|z| !z.is_empty())
}

/// Label (on a pod or its namespace) that puts pods in or out of the mesh:
/// `enabled` or `disabled`. The pod's label wins over its namespace's.
pub const MESH_LABEL: &str = "ferry.dev/mesh";

/// Settings that shape translation.
#[derive(Debug, Clone)]
pub struct TranslateOptions {
    /// Cluster DNS domain, for service hostnames.
    pub cluster_domain: String,
    /// Whether pods without a mesh label (on them or their namespace) are in the mesh.
    pub mesh_by_default: bool,
    /// Port of every node proxy's HBONE listener.
    pub hbone_port: u16,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            mesh_by_default: true,
            hbone_port: model::HBONE_PORT,
        }
    }
}

fn mesh_label(labels: Option<&impl LabelLookup>) -> Option<bool> {
    match labels?.label(MESH_LABEL)? {
        "enabled" => Some(true),
        "disabled" => Some(false),
        _ => None,
    }
}

/// Whether a pod with these labels, in a namespace with these labels, is in the mesh.
pub fn in_mesh(
    pod_labels: &Labels,
    namespace_labels: Option<&BTreeMap<String, String>>,
    options: &TranslateOptions,
) -> bool {
    mesh_label(Some(pod_labels))
        .or_else(|| mesh_label(namespace_labels))
        .unwrap_or(options.mesh_by_default)
}

fn protocol(value: Option<&str>) -> Protocol {
    value.and_then(Protocol::from_k8s).unwrap_or_default()
}

/// Port numbers come validated; anything else is treated as absent.
fn port(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p != 0)
}

/// A pod as a workload; `None` for pods that have finished (Succeeded or
/// Failed), which are no longer anyone's backend.
pub fn workload(
    pod: &core::Pod,
    namespace_labels: Option<&BTreeMap<String, String>>,
    options: &TranslateOptions,
    interner: &mut Interner,
) -> Option<model::Workload> {
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    let spec = pod.spec.as_ref();
    let labels: Labels = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut addresses: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|a| a.ip.parse().ok())
        .collect();
    if addresses.is_empty() {
        addresses.extend(status.and_then(|s| s.pod_ip.as_deref()?.parse::<IpAddr>().ok()));
    }
    let ports: Vec<model::NamedPort> = spec
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(model::NamedPort {
                name: p.name.as_deref().filter(|n| !n.is_empty())?.into(),
                port: port(p.container_port)?,
                protocol: protocol(p.protocol.as_deref()),
            })
        })
        .collect();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let mesh = !host_network(pod) && in_mesh(&labels, namespace_labels, options);
    let profile = model::Profile {
        namespace: pod
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default")
            .into(),
        service_account: spec
            .and_then(|s| s.service_account_name.as_deref())
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .into(),
        labels,
        ports: ports.into(),
        // Host-network pods share the node's address: nothing to capture.
        mesh,
        controller: controller(pod).map(Name::from),
    };
    Some(model::Workload {
        key: model::Workload::key_of(
            &profile.namespace,
            pod.metadata.name.as_deref().unwrap_or_default(),
        ),
        node: interner.optional(
            spec.and_then(|s| s.node_name.as_deref())
                .unwrap_or_default(),
        ),
        addresses: addresses.into(),
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        profile: interner.profile(profile),
    })
}

/// The workload a pod belongs to, as Istio's telemetry names it: the
/// controller in its owner references, with a ReplicaSet made by a
/// Deployment named after the Deployment (the ReplicaSet's name less the
/// pod's `pod-template-hash`) and a Job made by a CronJob after the
/// CronJob (less the Job's 8-10 digit schedule suffix).
pub fn controller(pod: &core::Pod) -> Option<String> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let name = owner.name.as_str();
    let strip = |suffix: &str| {
        name.strip_suffix(suffix)
            .and_then(|n| n.strip_suffix('-'))
            .filter(|n| !n.is_empty())
    };
    let derived = match owner.kind.as_str() {
        "ReplicaSet" => pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"))
            .and_then(|hash| strip(hash)),
        "Job" => name
            .rsplit_once('-')
            // A CronJob names its Jobs after the scheduled minute (8 to 10
            // digits); another Job keeps its name.
            .filter(|(_, n)| (8..=10).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
            .map(|(base, _)| base)
            .filter(|base| !base.is_empty()),
        _ => None,
    };
    Some(derived.unwrap_or(name).to_string())
}

/// Whether the pod uses the node's network (and so is never in the mesh).
pub fn host_network(pod: &core::Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// A node and the address of its proxy's HBONE listener (the first
/// InternalIP, else the first ExternalIP).
pub fn node(node: &core::Node, options: &TranslateOptions) -> model::Node {
    let addresses: Vec<model::NodeAddress> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .map(|a| model::NodeAddress {
            kind: a.type_.clone(),
            address: a.address.clone(),
        })
        .collect();
    let first_ip = |kind: &str| {
        addresses
            .iter()
            .filter(|a| a.kind == kind)
            .find_map(|a| a.address.parse::<IpAddr>().ok())
    };
    let hbone = first_ip("InternalIP")
        .or_else(|| first_ip("ExternalIP"))
        .map(|ip| SocketAddr::new(ip, options.hbone_port));
    model::Node {
        name: node.metadata.name.clone().unwrap_or_default(),
        addresses,
        hbone,
        zone: node_zone(node).map(str::to_owned),
    }
}

/// Whether a service selector (equality-based, non-empty) matches these labels.
pub fn selector_matches(selector: &BTreeMap<String, String>, labels: &Labels) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The service's selector when it selects pods (empty selectors select nothing).
pub fn service_selector(service: &core::Service) -> Option<&BTreeMap<String, String>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

fn service_ports(spec: &core::ServiceSpec) -> Vec<ServicePort> {
    spec.ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let number = port(p.port)?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(number),
                Some(IntOrString::Int(n)) => TargetPort::Number(port(*n)?),
                Some(IntOrString::String(s)) => match s.parse::<i32>() {
                    Ok(n) => TargetPort::Number(port(n)?),
                    Err(_) => TargetPort::Name(s.clone()),
                },
            };
            Some(ServicePort {
                name: p.name.clone().unwrap_or_default(),
                port: number,
                protocol: protocol(p.protocol.as_deref()),
                target_port,
                node_port: p.node_port.and_then(port),
            })
        })
        .collect()
}

fn traffic_policy(value: Option<&str>) -> TrafficPolicy {
    match value {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    }
}

/// Where a service's endpoints come from.
#[derive(Debug)]
pub enum Backends<'a> {
    /// EndpointSlices labelled with the service's name, sorted by name.
    Slices(Vec<&'a EndpointSlice>),
    /// Workloads selected by the service's selector, sorted by name, and
    /// the nodes by name (for their zones).
    Workloads(Vec<&'a model::Workload>, &'a Nodes),
    None,
}

/// `spec.trafficDistribution` values that ask for hints, and which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Distribution {
    /// `PreferClose` (the older name) or `PreferSameZone`: zone hints.
    SameZone,
    /// `PreferSameNode`: node hints, and zone hints for proxies that only
    /// read those.
    SameNode,
}

fn distribution(value: Option<&str>) -> Option<Distribution> {
    match value? {
        "PreferClose" | "PreferSameZone" => Some(Distribution::SameZone),
        "PreferSameNode" => Some(Distribution::SameNode),
        _ => None,
    }
}

/// A Service with its endpoints.
pub fn service(
    svc: &core::Service,
    backends: Backends<'_>,
    options: &TranslateOptions,
) -> model::Service {
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    let default_spec = core::ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);
    let service_type = match spec.type_.as_deref() {
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        _ => ServiceType::ClusterIP,
    };
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let mut cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if cluster_ips.is_empty() {
        cluster_ips.extend(
            spec.cluster_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    let load_balancer_ips = if service_type == ServiceType::LoadBalancer {
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect()
    } else {
        Vec::new()
    };
    let client_ip_affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(model::DEFAULT_AFFINITY_TIMEOUT_SECONDS)
    });
    let ports = service_ports(spec);
    // A single-stack service gets only endpoints of its family; a
    // dual-stack one all of them (routing then picks per family). The
    // families are `ipFamilies`, else those of the cluster IPs; a service
    // with neither (headless, written without `ipFamilies`) keeps every
    // address.
    let mut families: Vec<bool> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(true),
            "IPv6" => Some(false),
            _ => None,
        })
        .collect();
    if families.is_empty() {
        families = cluster_ips.iter().map(IpAddr::is_ipv4).collect();
    }
    let mut endpoints = match (service_type, backends) {
        (ServiceType::ExternalName, _) | (_, Backends::None) => Vec::new(),
        (_, Backends::Slices(slices)) => slice_endpoints(&ports, &slices),
        (_, Backends::Workloads(workloads, zone)) => workload_endpoints(
            &ports,
            &workloads,
            zone,
            spec.publish_not_ready_addresses == Some(true),
            distribution(spec.traffic_distribution.as_deref()),
        ),
    };
    if !families.is_empty() {
        endpoints.retain(|e| families.contains(&e.address.is_ipv4()));
    }
    model::Service {
        hostname: format!("{name}.{namespace}.svc.{}", options.cluster_domain).into(),
        service_type,
        cluster_ips: if headless || service_type == ServiceType::ExternalName {
            Vec::new()
        } else {
            cluster_ips
        },
        headless,
        ports,
        load_balancer_ips,
        external_ips: spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect(),
        external_name: (service_type == ServiceType::ExternalName)
            .then(|| spec.external_name.clone())
            .flatten(),
        client_ip_affinity,
        internal_traffic_policy: traffic_policy(spec.internal_traffic_policy.as_deref()),
        external_traffic_policy: traffic_policy(spec.external_traffic_policy.as_deref()),
        endpoints,
        selector: service_selector(svc).is_some(),
        traffic_distribution: spec.traffic_distribution.clone().filter(|t| !t.is_empty()),
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// Endpoints from the pods a selector picked, as the EndpointSlice controller
/// would write them: ready = Ready and not terminating, serving = Ready;
/// with `publishNotReadyAddresses`, every endpoint is ready (serving and
/// terminating still say what the pod is), so DNS and routing include
/// pods that are not ready, as the API documents. The zone is the pod's
/// node's; with a `trafficDistribution`, each ready endpoint is hinted for
/// its own zone (and, for `PreferSameNode`, its own node), as the
/// controller hints them.
fn workload_endpoints(
    ports: &[ServicePort],
    workloads: &[&model::Workload],
    nodes: &Nodes,
    publish_not_ready: bool,
    distribution: Option<Distribution>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for w in workloads {
        let resolved: Vec<Option<u16>> = ports
            .iter()
            .map(|p| match &p.target_port {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(name) => w.named_port(name, p.protocol),
            })
            .collect();
        let zone = w
            .node
            .as_deref()
            .and_then(|n| node_zone(nodes.get(n)?))
            .map(Name::from);
        let ready = publish_not_ready || (w.ready && !w.terminating);
        let none: Arc<[Name]> = Arc::from([]);
        let (zone_hints, node_hints) = match (distribution, ready) {
            (Some(d), true) => (
                zone.iter().cloned().collect(),
                match d {
                    Distribution::SameNode => w.node.iter().cloned().collect(),
                    Distribution::SameZone => none.clone(),
                },
            ),
            _ => (none.clone(), none),
        };
        let resolved: Arc<[Option<u16>]> = resolved.into();
        let key = w.key.clone();
        for address in &w.addresses {
            out.push(Endpoint {
                workload: Some(key.clone()),
                address: *address,
                ready,
                serving: w.ready,
                terminating: w.terminating,
                placement: Arc::new(ferry_api::model::Placement {
                    node: w.node.clone(),
                    ports: resolved.clone(),
                    hostname: None,
                    zone: zone.clone(),
                    zone_hints: zone_hints.clone(),
                    node_hints: node_hints.clone(),
                }),
            });
        }
    }
    out
}

/// Endpoints from EndpointSlices. A service port maps to the slice port with
/// the same name and protocol; absent conditions take the API's defaults
/// (ready: true, serving: true, terminating: false). Only an endpoint's
/// first address counts (the API defines no meaning for the others, and
/// kube-proxy ignores them). FQDN slices carry no IP and are skipped. A
/// network endpoint is an address and port: the same address and target
/// port listed again for a service port (in another slice, or twice in
/// one) is used once, the first listing winning, while the same address
/// with another port is another endpoint.
fn slice_endpoints(ports: &[ServicePort], slices: &[&EndpointSlice]) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    // (service port index, address, target port) already listed.
    let mut seen = std::collections::HashSet::new();
    let mut listed = std::collections::HashSet::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        let slice_ports = slice.ports.as_deref().unwrap_or_default();
        let resolved: Vec<Option<u16>> = ports
            .iter()
            .map(|sp| {
                slice_ports
                    .iter()
                    .find(|p| {
                        p.name.as_deref().unwrap_or("") == sp.name
                            && protocol(p.protocol.as_deref()) == sp.protocol
                    })
                    .and_then(|p| p.port.and_then(port))
            })
            .collect();
        for ep in &slice.endpoints {
            let conditions = ep.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let workload = ep.target_ref.as_ref().and_then(|r| {
                if r.kind.as_deref() != Some("Pod") {
                    return None;
                }
                let ns = r
                    .namespace
                    .clone()
                    .or_else(|| slice.metadata.namespace.clone())
                    .unwrap_or_else(|| "default".into());
                Some(format!("{ns}/{}", r.name.as_deref()?))
            });
            let hints = ep.hints.as_ref();
            let zone_hints: Arc<[Name]> = hints
                .and_then(|h| h.for_zones.as_ref())
                .into_iter()
                .flatten()
                .map(|z| Name::from(z.name.as_str()))
                .collect();
            let node_hints: Arc<[Name]> = hints
                .and_then(|h| h.for_nodes.as_ref())
                .into_iter()
                .flatten()
                .map(|n| Name::from(n.name.as_str()))
                .collect();
            if let Some(Ok(address)) = ep.addresses.first().map(|a| a.parse::<IpAddr>()) {
                let mut endpoint_ports = resolved.clone();
                for (index, port) in endpoint_ports.iter_mut().enumerate() {
                    if let Some(number) = *port {
                        if !seen.insert((index, address, number)) {
                            *port = None;
                        }
                    }
                }
                if !listed.insert(address) && endpoint_ports.iter().all(Option::is_none) {
                    continue;
                }
                out.push(Endpoint {
                    workload: workload.as_deref().map(Name::from),
                    address,
                    ready,
                    serving,
                    terminating,
                    placement: Arc::new(ferry_api::model::Placement {
                        node: ep.node_name.as_deref().map(Name::from),
                        ports: endpoint_ports.into(),
                        hostname: ep.hostname.as_deref().map(Name::from),
                        zone: ep.zone.as_deref().filter(|z| !z.is_empty()).map(Name::from),
                        zone_hints,
                        node_hints,
                    }),
                });
            }
        }
    }
    out
}
