//! Ferry's control plane.
//!
//! Data flows one way: a [`source`] (a manifest folder, or the Kubernetes
//! API) reports objects checked by [`source::validate`]; the [`translate::Translator`] turns them
//! into model resources, incrementally; the [`push`] layer keeps the
//! versioned configuration and streams per-node deltas to every proxy.

pub mod app;
pub mod authn;
pub mod ca;
pub mod config;
pub mod metrics;
pub mod push;
pub mod source;
pub mod status;
pub mod translate;
