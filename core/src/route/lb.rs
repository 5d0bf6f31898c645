//! Choosing among eligible endpoints: round robin per service and
//! `sessionAffinity: ClientIP` with its timeout.
//!

//! The maps are keyed by (namespace, name[, client]) and looked up with
//! borrowed parts through `dyn KeyParts`, so a lookup allocates nothing.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use ferry_api::model::{Endpoint, Service, TrafficPolicy};

use super::endpoints::{eligible_for, no_endpoints, Eligible, Locality};

trait KeyParts {
    fn parts(&self) -> (&str, &str, Option<IpAddr>);
}

/// A service, and for affinity the client, as a map key.
#[derive(Debug)]
struct BalanceKey {
    namespace: Box<str>,
    name: Box<str>,
    client: Option<IpAddr>,
}

/// A borrowed [`BalanceKey`].
struct KeyRef<'a> {
    namespace: &'a str,
    name: &'a str,
    client: Option<IpAddr>,
}

impl KeyRef<'_> {
    fn owned(&self) -> BalanceKey {
        BalanceKey {
            namespace: self.namespace.into(),
            name: self.name.into(),
            client: self.client,
        }
    }
}

impl KeyParts for BalanceKey {
    fn parts(&self) -> (&str, &str, Option<IpAddr>) {
        (&self.namespace, &self.name, self.client)
    }
}

impl KeyParts for KeyRef<'_> {
    fn parts(&self) -> (&str, &str, Option<IpAddr>) {
        (self.namespace, self.name, self.client)
    }
}

impl<'a> Borrow<dyn KeyParts + 'a> for BalanceKey {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

impl Hash for dyn KeyParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyParts + '_ {}

// Must hash and compare exactly as `dyn KeyParts` does.
impl Hash for BalanceKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for BalanceKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for BalanceKey {}

/// A client's affinity to an endpoint: its address and target port (two
/// slices may list one address with two ports, two endpoints).
#[derive(Debug, Clone, Copy)]
struct Sticky {
    address: SocketAddr,
    last_used: Instant,
    timeout: Duration,
}

impl Sticky {
    fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_used) < self.timeout
    }
}

/// The two ends of a connection being balanced: the client (for ClientIP
/// affinity) and the address it dialled (its family picks the endpoints of
/// a dual-stack service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    pub client: IpAddr,
    pub destination: IpAddr,
}

/// Round robin per service (key `ns/name`) and `sessionAffinity: ClientIP`
/// with its timeout ([`Service::client_ip_affinity`] seconds). Sharded maps,
/// no global lock; nothing is allocated once the service has its counter and
/// the client its affinity entry.
#[derive(Debug, Default)]
pub struct LoadBalancer {
    /// Next round-robin position per service.
    next: DashMap<BalanceKey, AtomicUsize>,
    /// Affinity per (service, client).
    sticky: DashMap<BalanceKey, Sticky>,
}

impl LoadBalancer {
    /// An empty balancer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Picks an endpoint; `Err(reason)` when none is eligible ("no ready
    /// endpoints for shop/backend:80: ..."). The returned address is the
    /// endpoint's address with its resolved target port. With affinity: the
    /// client's endpoint is reused while it is still eligible and the entry
    /// is younger than the timeout (its time is refreshed on use); otherwise
    /// one is picked by round robin and remembered.
    pub fn pick<'s, 'a>(
        &self,
        service: &'s Service,
        port: usize,
        policy: TrafficPolicy,
        at: impl Into<Locality<'a>>,
        ends: Ends,
        now: Instant,
    ) -> Result<(&'s Endpoint, SocketAddr), String> {
        let at = at.into();
        let Ends {
            client,
            destination,
        } = ends;
        let set = eligible_for(service, port, policy, at, destination);
        let endpoint = match service.client_ip_affinity {
            None => self.round_robin(service, set),
            Some(seconds) => self.affine(
                service,
                set,
                client,
                now,
                Duration::from_secs(u64::from(seconds)),
            ),
        };
        let endpoint = endpoint.ok_or_else(|| no_endpoints(service, port, policy, at))?;
        // Eligible endpoints serve the port.
        let target = endpoint
            .ports
            .get(port)
            .copied()
            .flatten()
            .ok_or_else(|| no_endpoints(service, port, policy, at))?;
        Ok((endpoint, SocketAddr::new(endpoint.address, target)))
    }

    fn round_robin<'s>(&self, service: &Service, set: Eligible<'s>) -> Option<&'s Endpoint> {
        if set.is_empty() {
            return None;
        }
        let key = KeyRef {
            namespace: &service.namespace,
            name: &service.name,
            client: None,
        };
        let existing = self
            .next
            .get(&key as &dyn KeyParts)
            .map(|counter| counter.fetch_add(1, Ordering::Relaxed));
        let n = match existing {
            Some(n) => n,
            None => self
                .next
                .entry(key.owned())
                .or_insert_with(|| AtomicUsize::new(0))
                .fetch_add(1, Ordering::Relaxed),
        };
        set.get(n % set.len())
    }

    /// Round robin with ClientIP affinity.
    fn affine<'s>(
        &self,
        service: &Service,
        set: Eligible<'s>,
        client: IpAddr,
        now: Instant,
        timeout: Duration,
    ) -> Option<&'s Endpoint> {
        let reuse_or_move = |sticky: &mut Sticky| {
            let kept = set
                .find_target(sticky.address)
                .filter(|_| sticky.fresh(now));
            let endpoint = match kept {
                Some(endpoint) => endpoint,
                None => self.round_robin(service, set)?,
            };
            *sticky = Sticky {
                address: set.target(endpoint)?,
                last_used: now,
                timeout,
            };
            Some(endpoint)
        };
        let key = KeyRef {
            namespace: &service.namespace,
            name: &service.name,
            client: Some(client),
        };
        if let Some(mut sticky) = self.sticky.get_mut(&key as &dyn KeyParts) {
            return reuse_or_move(&mut sticky);
        }
        // First connection of this client to this service (or its entry was
        // swept): another connection may be racing to create it.
        match self.sticky.entry(key.owned()) {
            MapEntry::Occupied(mut entry) => reuse_or_move(entry.get_mut()),
            MapEntry::Vacant(entry) => {
                let endpoint = self.round_robin(service, set)?;
                entry.insert(Sticky {
                    address: set.target(endpoint)?,
                    last_used: now,
                    timeout,
                });
                Some(endpoint)
            }
        }
    }

    /// Drops affinity entries older than their timeout; returns how many
    /// remain.
    pub fn sweep(&self, now: Instant) -> usize {
        self.sticky.retain(|_, sticky| sticky.fresh(now));
        self.sticky.len()
    }
}
