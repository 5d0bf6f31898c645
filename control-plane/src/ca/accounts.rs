//! Which service accounts have mesh pods on which node: what a node's proxy
//! may obtain certificates for. Follows the translated workloads.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ferry_api::proto::resource;
use ferry_api::Kind;

use crate::translate::Change;

type Account = (String, String);

#[derive(Debug, Default)]
struct AccountsInner {
    /// workload key -> (node, (namespace, service account))
    workloads: HashMap<String, (String, Account)>,
    /// node -> service account -> number of mesh pods
    nodes: HashMap<String, HashMap<Account, usize>>,
}

/// Which service accounts have mesh pods on which node.
#[derive(Debug, Default)]
pub struct NodeAccounts {
    inner: RwLock<AccountsInner>,
}

impl NodeAccounts {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Follows a batch of published changes.
    pub fn update(&self, changes: &[Change]) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for change in changes {
            let (key, entry) = match change {
                Change::Upsert(key, published) if key.kind == Kind::Workload => {
                    // Encoded once for the wire; a workload is a few
                    // hundred bytes to read back.
                    let decoded = published.resource().ok().and_then(|r| r.body);
                    let entry = match decoded {
                        Some(resource::Body::Workload(w)) if w.mesh && !w.node.is_empty() => {
                            Some((
                                w.node.clone(),
                                (w.namespace.clone(), w.service_account.clone()),
                            ))
                        }
                        _ => None,
                    };
                    (key, entry)
                }
                Change::Remove(key) if key.kind == Kind::Workload => (key, None),
                _ => continue,
            };
            if let Some((node, account)) = inner.workloads.remove(&*key.name) {
                if let Some(accounts) = inner.nodes.get_mut(&node) {
                    if let Some(n) = accounts.get_mut(&account) {
                        *n -= 1;
                        if *n == 0 {
                            accounts.remove(&account);
                        }
                    }
                    if accounts.is_empty() {
                        inner.nodes.remove(&node);
                    }
                }
            }
            if let Some((node, account)) = entry {
                *inner
                    .nodes
                    .entry(node.clone())
                    .or_default()
                    .entry(account.clone())
                    .or_default() += 1;
                inner
                    .workloads
                    .insert(key.name.to_string(), (node, account));
            }
        }
    }

    /// Whether a mesh pod with this service account runs on `node`.
    pub fn allows(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .nodes
            .get(node)
            .is_some_and(|a| a.contains_key(&(namespace.to_string(), service_account.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::{Published, Scope};
    use ferry_api::model::Workload;
    use ferry_api::{ResourceBody, VersionedResource};

    fn workload(name: &str, node: &str, sa: &str, mesh: bool) -> Change {
        let body = ResourceBody::Workload(Workload {
            key: Workload::key_of("shop", name),
            node: Some(node.into()),
            addresses: vec![].into(),
            ready: true,
            terminating: false,
            profile: Arc::new(ferry_api::model::Profile {
                namespace: "shop".into(),
                service_account: sa.into(),
                labels: Default::default(),
                ports: vec![].into(),
                mesh,
                controller: None,
            }),
        });
        Change::Upsert(
            body.key(),
            Published::new(&VersionedResource::encode(&body), Scope::AllNodes),
        )
    }

    #[test]
    fn accounts_follow_pods_across_nodes() {
        let accounts = NodeAccounts::default();
        accounts.update(&[
            workload("a", "n1", "backend", true),
            workload("b", "n1", "backend", true),
            workload("c", "n2", "web", false),
        ]);
        assert!(accounts.allows("n1", "shop", "backend"));
        assert!(!accounts.allows("n2", "shop", "backend"));
        assert!(
            !accounts.allows("n2", "shop", "web"),
            "pods outside the mesh get no certificate"
        );
        // One of two pods moves away: still allowed; both gone: refused.
        accounts.update(&[workload("a", "n2", "backend", true)]);
        assert!(accounts.allows("n1", "shop", "backend"));
        assert!(accounts.allows("n2", "shop", "backend"));
        let Change::Upsert(key, _) = workload("b", "n1", "backend", true) else {
            unreachable!()
        };
        accounts.update(&[Change::Remove(key)]);
        assert!(!accounts.allows("n1", "shop", "backend"));
    }
}
