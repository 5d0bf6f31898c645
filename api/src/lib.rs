//! Ferry's shared language: the configuration model and the delta config
//! protocol spoken between the control plane and the node proxies.
//!
//! - [`proto`]: the wire types and the gRPC service, generated from
//!   `proto/ferry/v1/config.proto` (compiled by protox, no system `protoc`).
//! - [`model`]: the validated domain types both sides work with: IP addresses
//!   parsed, enums checked, ports in range.
//! - [`resource`]: resource keys, content versions and the conversion between
//!   the wire form and the model. A proxy rejects (NACKs) a resource whose
//!   wire form does not convert, naming the resource and the field.

pub mod build;
pub mod cidr;
pub mod identity;
pub mod model;
pub mod resource;

/// Generated protocol types and the `ConfigDiscovery` gRPC service.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod proto {
    tonic::include_proto!("ferry.v1");
}

/// The `ConfigDiscovery` service as the control plane serves it: its
/// responses are [`proto::DeltaResponseEncoded`], whose resources are
/// encoded once and sent to every proxy as they are.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod proto_server {
    include!(concat!(env!("OUT_DIR"), "/server/ferry.v1.rs"));
}

pub use resource::{KeyView, Kind, ResourceBody, ResourceError, ResourceKey, VersionedResource};
