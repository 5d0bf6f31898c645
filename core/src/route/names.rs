//! Service names: the DNS search path of a pod, the cluster domain's
//! fully qualified names, and what a name stands for (shared by the
//! proxy's DNS server, its outbound path for names, and `ferryctl route`).

use std::net::IpAddr;

use ferry_api::model::{Service, ServiceType};

use crate::state::ProxyState;

/// Resolves a DNS name the way a pod in `namespace` would:
/// `name.ns.svc.<domain>` (any domain suffix after `.svc.` accepted as long
/// as the whole name equals the service's own hostname), `name.ns.svc`,
/// `name.ns`, `name` (in `namespace`). Case-insensitive; a trailing dot is
/// accepted. Returns the service.
pub fn service_by_name<'s>(
    state: &'s ProxyState,
    name: &str,
    namespace: &str,
) -> Option<&'s Service> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let lowered;
    let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        lowered = name.to_ascii_lowercase();
        lowered.as_str()
    } else {
        name
    };
    let mut labels = name.splitn(4, '.');
    let service_name = labels.next()?;
    let (namespace, fqdn) = match (labels.next(), labels.next(), labels.next()) {
        (None, _, _) => (namespace, false),
        (Some(ns), None, _) | (Some(ns), Some("svc"), None) => (ns, false),
        (Some(ns), Some("svc"), Some(domain)) if !domain.is_empty() => (ns, true),
        _ => return None,
    };
    if service_name.is_empty() || namespace.is_empty() {
        return None;
    }
    let service = state.service(&format!("{namespace}/{service_name}"))?;
    if fqdn && !service.hostname.eq_ignore_ascii_case(name) {
        return None;
    }
    Some(service)
}

/// The addresses a headless service's name stands for: its ready
/// endpoints, sorted and without repeats (what DNS answers; a client by
/// name dials the first).
pub fn headless_addresses(service: &Service) -> Vec<IpAddr> {
    let mut ready: Vec<IpAddr> = service
        .endpoints
        .iter()
        .filter(|e| e.ready)
        .map(|e| e.address)
        .collect();
    ready.sort();
    ready.dedup();
    ready
}

/// What a service's name stands for: the one rule that DNS, the proxy's
/// own name resolution (SOCKS5 by name) and `ferryctl route` all follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameTarget<'s> {
    /// An ExternalName service: its external name (`None` when the
    /// object has none, which validation refuses).
    External(Option<&'s str>),
    /// A service with cluster IPs: those.
    ClusterIps(&'s [IpAddr]),
    /// A service without cluster IPs (headless, or none allocated): its
    /// ready endpoints' addresses ([`headless_addresses`]).
    Pods(Vec<IpAddr>),
}

/// What `service`'s name stands for (see [`NameTarget`]).
pub fn name_target(service: &Service) -> NameTarget<'_> {
    if service.service_type == ServiceType::ExternalName || service.external_name.is_some() {
        return NameTarget::External(service.external_name.as_deref());
    }
    if !service.cluster_ips.is_empty() {
        return NameTarget::ClusterIps(&service.cluster_ips);
    }
    NameTarget::Pods(headless_addresses(service))
}

/// What the mesh knows about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameAnswer {
    Addresses(Vec<IpAddr>),
    Alias(String),
    /// Under `svc.<domain>` but no such service.
    NotFound,
    /// Not a service name: for the upstream resolver.
    NotOurs,
}

/// Resolves a fully qualified name (without the trailing dot, any case).
pub fn resolve_fqdn(state: &ProxyState, name: &str, domain: &str) -> NameAnswer {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let Some(rest) = name.strip_suffix(&format!(".svc.{domain}")) else {
        return NameAnswer::NotOurs;
    };
    let Some((service, namespace)) = rest.rsplit_once('.') else {
        return NameAnswer::NotFound;
    };
    // `<service>.<namespace>`: a pod hostname would add one more label; not served.
    if service.contains('.') {
        return NameAnswer::NotFound;
    }
    let Some(svc) = state.service(&format!("{namespace}/{service}")) else {
        return NameAnswer::NotFound;
    };
    match name_target(svc) {
        NameTarget::External(Some(external)) => NameAnswer::Alias(external.to_string()),
        NameTarget::External(None) => NameAnswer::NotFound,
        NameTarget::ClusterIps(ips) => NameAnswer::Addresses(ips.to_vec()),
        NameTarget::Pods(addresses) => NameAnswer::Addresses(addresses),
    }
}
