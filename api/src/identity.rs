//! Workload identity: SPIFFE IDs `spiffe://<trust domain>/ns/<ns>/sa/<sa>`,
//! node identities `spiffe://<trust domain>/ferry/node/<name>`, and the TLS
//! server name (SNI) a client uses to ask a node proxy for the certificate
//! of one of its workloads.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// SNI suffix that marks a workload identity request (`<sa>.<ns>.id.ferry`).
const SNI_SUFFIX: &str = ".id.ferry";

/// A workload's SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a workload identity: {reason}")]
pub struct IdentityError {
    pub input: String,
    pub reason: &'static str,
}

impl Identity {
    pub fn new(
        trust_domain: impl AsRef<str>,
        namespace: impl AsRef<str>,
        service_account: impl AsRef<str>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.as_ref().to_string(),
            namespace: namespace.as_ref().to_string(),
            service_account: service_account.as_ref().to_string(),
        }
    }

    /// The TLS server name under which a node proxy serves this identity's
    /// certificate. Service account names may contain dots, namespaces may
    /// not, so the name is decoded from the right.
    pub fn server_name(&self) -> String {
        format!("{}.{}{SNI_SUFFIX}", self.service_account, self.namespace)
    }

    /// Decodes [`Identity::server_name`].
    pub fn from_server_name(name: &str, trust_domain: &str) -> Option<Self> {
        let rest = name.strip_suffix(SNI_SUFFIX)?;
        let (sa, ns) = rest.rsplit_once('.')?;
        (!sa.is_empty() && !ns.is_empty()).then(|| Self::new(trust_domain, ns, sa))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

impl FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| IdentityError {
            input: s.to_string(),
            reason,
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| fail("not a spiffe:// URI"))?;
        let (td, path) = rest.split_once('/').ok_or_else(|| fail("no path"))?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] if segment_ok(td) && segment_ok(ns) && segment_ok(sa) => {
                Ok(Self::new(td, *ns, *sa))
            }
            _ => Err(fail(
                "the path must be /ns/<namespace>/sa/<service account>",
            )),
        }
    }
}

/// A node proxy's identity, as carried by its node credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    pub trust_domain: String,
    pub node: String,
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ferry/node/{}", self.trust_domain, self.node)
    }
}

impl FromStr for NodeIdentity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| IdentityError {
            input: s.to_string(),
            reason,
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| fail("not a spiffe:// URI"))?;
        let (td, path) = rest.split_once('/').ok_or_else(|| fail("no path"))?;
        match path.split('/').collect::<Vec<_>>().as_slice() {
            ["ferry", "node", node] if segment_ok(td) && segment_ok(node) => Ok(Self {
                trust_domain: td.to_string(),
                node: node.to_string(),
            }),
            _ => Err(fail("the path must be /ferry/node/<name>")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_round_trip() {
        let id: Identity = "spiffe://cluster.local/ns/shop/sa/backend".parse().unwrap();
        assert_eq!(id, Identity::new("cluster.local", "shop", "backend"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/backend");
        let node: NodeIdentity = "spiffe://td/ferry/node/node-a".parse().unwrap();
        assert_eq!(node.node, "node-a");
        assert_eq!(node.to_string(), "spiffe://td/ferry/node/node-a");
    }

    #[test]
    fn malformed_ids_are_refused_with_a_reason() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe:///ns/a/sa/b",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
        assert_eq!(
            "spiffe://td/ns/a".parse::<Identity>().unwrap_err().to_string(),
            "\"spiffe://td/ns/a\" is not a workload identity: the path must be /ns/<namespace>/sa/<service account>"
        );
        assert!("spiffe://td/ns/a/sa/b".parse::<NodeIdentity>().is_err());
    }

    #[test]
    fn server_names_decode_from_the_right() {
        let id = Identity::new("td", "shop", "svc.with.dots");
        let sni = id.server_name();
        assert_eq!(sni, "svc.with.dots.shop.id.ferry");
        assert_eq!(Identity::from_server_name(&sni, "td"), Some(id));
        assert_eq!(
            Identity::from_server_name("backend.shop.example.com", "td"),
            None
        );
        assert_eq!(Identity::from_server_name("shop.id.ferry", "td"), None);
    }
}
