//! Service names: the DNS search path of a pod, the cluster domain's
//! fully qualified names, and what a name stands for (shared by the
//! proxy's DNS server, its outbound path for names, and `ferryctl route`).

use std::net::IpAddr;

use ferry_api::model::Service;

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
    if let Some(external) = &svc.external_name {
        return NameAnswer::Alias(external.clone());
    }
    if !svc.cluster_ips.is_empty() {
        return NameAnswer::Addresses(svc.cluster_ips.clone());
    }
    NameAnswer::Addresses(headless_addresses(svc))
}
