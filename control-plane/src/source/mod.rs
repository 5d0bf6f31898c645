//! Sources of Kubernetes objects. Each source turns what it watches into
//! [`SourceEvent`]s of typed objects (k8s-openapi types) that passed
//! [`validate`], so every source feeds the same store and translation.

pub mod defaults;
pub mod kube;
pub mod manifests;
pub mod validate;

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

/// The object kinds the control plane consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
}

impl ObjectKind {
    /// Resolves `apiVersion` + `kind`; `None` for kinds Ferry ignores.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Self> {
        match (api_version, kind) {
            ("v1", "Namespace") => Some(Self::Namespace),
            ("v1", "Node") => Some(Self::Node),
            ("v1", "Pod") => Some(Self::Pod),
            ("v1", "Service") => Some(Self::Service),
            ("discovery.k8s.io/v1", "EndpointSlice") => Some(Self::EndpointSlice),
            ("networking.k8s.io/v1", "NetworkPolicy") => Some(Self::NetworkPolicy),
            _ => None,
        }
    }

    /// Every kind Ferry reads.
    pub const ALL: [Self; 6] = [
        Self::Namespace,
        Self::Node,
        Self::Pod,
        Self::Service,
        Self::EndpointSlice,
        Self::NetworkPolicy,
    ];

    /// The kind Ferry reads under this name (`exact`, or in any case),
    /// whatever its `apiVersion`.
    pub fn from_kind(kind: &str, exact: bool) -> Option<Self> {
        Self::ALL.into_iter().find(|k| {
            if exact {
                k.as_str() == kind
            } else {
                k.as_str().eq_ignore_ascii_case(kind)
            }
        })
    }

    /// Namespaced kinds default to the `default` namespace.
    pub fn is_namespaced(self) -> bool {
        !matches!(self, Self::Namespace | Self::Node)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::Node => "Node",
            Self::Pod => "Pod",
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::NetworkPolicy => "NetworkPolicy",
        }
    }
}

/// Identity of a Kubernetes object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: ObjectKind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// A typed Kubernetes object. Boxed: the k8s-openapi types are large inline
/// (a Pod is over 2 KiB), and events are moved and queued by the hundred
/// thousand on a big cluster's initial load.
#[derive(Debug, Clone, PartialEq)]
pub enum K8sObject {
    Namespace(Box<Namespace>),
    Node(Box<Node>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    NetworkPolicy(Box<NetworkPolicy>),
}

impl K8sObject {
    /// The object's identity; namespaced objects without a namespace are in `default`.
    pub fn object_ref(&self) -> ObjectRef {
        let (kind, meta) = match self {
            K8sObject::Namespace(o) => (ObjectKind::Namespace, &o.metadata),
            K8sObject::Node(o) => (ObjectKind::Node, &o.metadata),
            K8sObject::Pod(o) => (ObjectKind::Pod, &o.metadata),
            K8sObject::Service(o) => (ObjectKind::Service, &o.metadata),
            K8sObject::EndpointSlice(o) => (ObjectKind::EndpointSlice, &o.metadata),
            K8sObject::NetworkPolicy(o) => (ObjectKind::NetworkPolicy, &o.metadata),
        };
        let namespace = if kind.is_namespaced() {
            meta.namespace.clone().unwrap_or_else(|| "default".into())
        } else {
            String::new()
        };
        ObjectRef::new(kind, namespace, meta.name.clone().unwrap_or_default())
    }
}

/// An object as a source keeps it between scans: its trimmed form as
/// JSON. A typed Kubernetes object carries every optional field of its
/// type inline (a trimmed pod is about 5 KiB: `Pod` is 2 KiB and each
/// `Container` 2 KiB, nearly all empty); its JSON names only the fields
/// set (a few hundred bytes). Typed again only when it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    kind: ObjectKind,
    json: Box<[u8]>,
}

impl StoredObject {
    pub fn new(object: &K8sObject) -> Result<Self, serde_json::Error> {
        let (kind, json) = match object {
            K8sObject::Namespace(o) => (ObjectKind::Namespace, serde_json::to_vec(o)?),
            K8sObject::Node(o) => (ObjectKind::Node, serde_json::to_vec(o)?),
            K8sObject::Pod(o) => (ObjectKind::Pod, serde_json::to_vec(o)?),
            K8sObject::Service(o) => (ObjectKind::Service, serde_json::to_vec(o)?),
            K8sObject::EndpointSlice(o) => (ObjectKind::EndpointSlice, serde_json::to_vec(o)?),
            K8sObject::NetworkPolicy(o) => (ObjectKind::NetworkPolicy, serde_json::to_vec(o)?),
        };
        Ok(Self {
            kind,
            json: json.into_boxed_slice(),
        })
    }

    /// The typed object again.
    pub fn object(&self) -> Result<K8sObject, serde_json::Error> {
        let json = &self.json;
        Ok(match self.kind {
            ObjectKind::Namespace => K8sObject::from(serde_json::from_slice::<Namespace>(json)?),
            ObjectKind::Node => K8sObject::from(serde_json::from_slice::<Node>(json)?),
            ObjectKind::Pod => K8sObject::from(serde_json::from_slice::<Pod>(json)?),
            ObjectKind::Service => K8sObject::from(serde_json::from_slice::<Service>(json)?),
            ObjectKind::EndpointSlice => {
                K8sObject::from(serde_json::from_slice::<EndpointSlice>(json)?)
            }
            ObjectKind::NetworkPolicy => {
                K8sObject::from(serde_json::from_slice::<NetworkPolicy>(json)?)
            }
        })
    }

    /// Bytes kept.
    pub fn size(&self) -> usize {
        self.json.len()
    }
}

/// A change reported by a source.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// The object was created or changed (it passed validation).
    Apply(K8sObject),
    /// The object is gone.
    Delete(ObjectRef),
}

macro_rules! object_from {
    ($($kind:ident),*) => {$(
        impl From<$kind> for K8sObject {
            fn from(object: $kind) -> Self {
                K8sObject::$kind(Box::new(object))
            }
        }
    )*};
}

object_from!(Namespace, Node, Pod, Service, EndpointSlice, NetworkPolicy);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_object_reads_back_as_it_was_and_is_compact() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-a", "containers": [
                {"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}
            ]},
            "status": {"phase": "Running", "podIP": "10.0.0.5",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let object = K8sObject::from(pod);
        let stored = StoredObject::new(&object).unwrap();
        assert_eq!(stored.object().unwrap(), object);
        assert_eq!(StoredObject::new(&object).unwrap(), stored);
        // The typed pod carries every optional field of its types inline.
        assert!(
            stored.size() < std::mem::size_of::<Pod>() / 4,
            "{} bytes",
            stored.size()
        );
    }
}
