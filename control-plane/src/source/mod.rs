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
