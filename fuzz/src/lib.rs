//! Shared pieces of the fuzz targets: the state a node proxy holds for the
//! example cluster (deploy/examples), built once, the way the proxy gets
//! it (the control plane's translation applied to the proxy's store).
//!
//! The targets (`fuzz_targets/`) are libFuzzer binaries built on stable
//! Rust with SanitizerCoverage (`scripts/fuzz.sh` sets the flags); built
//! without them (`cargo build --workspace`) they still link and run, so
//! the workspace stays one build.

use std::sync::{Arc, OnceLock};

use ferry_control_plane::source::manifests::parse_manifest;
use ferry_control_plane::source::SourceEvent;
use ferry_control_plane::translate::{TranslateOptions, Translator};
use ferry_core::state::{ConfigStore, ProxyState};

/// The example cluster's manifests, compiled in.
pub const EXAMPLES: [(&str, &str); 4] = [
    (
        "00-cluster.yaml",
        include_str!("../../deploy/examples/00-cluster.yaml"),
    ),
    (
        "10-pods.yaml",
        include_str!("../../deploy/examples/10-pods.yaml"),
    ),
    (
        "20-services.yaml",
        include_str!("../../deploy/examples/20-services.yaml"),
    ),
    (
        "30-policy.yaml",
        include_str!("../../deploy/examples/30-policy.yaml"),
    ),
];

/// What the control plane publishes for the example cluster.
pub fn example_resources() -> Vec<ferry_api::proto::Resource> {
    let events: Vec<SourceEvent> = EXAMPLES
        .iter()
        .flat_map(|(file, text)| parse_manifest(std::path::Path::new(file), text).objects)
        .map(SourceEvent::Apply)
        .collect();
    let mut translator = Translator::new(TranslateOptions::default());
    translator.apply(events);
    translator
        .published()
        .values()
        // Encoded by this same build a moment ago: only a broken build
        // would not decode, and then there is nothing to fuzz with.
        .filter_map(|p| p.resource().ok())
        .collect()
}

/// A store holding the example cluster, as a proxy would.
pub fn example_store() -> Arc<ConfigStore> {
    let store = ConfigStore::new();
    store.apply(ferry_api::proto::DeltaResponse {
        nonce: "fuzz".into(),
        revision: 1,
        resources: example_resources(),
        removed: Vec::new(),
    });
    store
}

/// The example cluster's proxy state, built once per process.
pub fn example_state() -> Arc<ProxyState> {
    static STATE: OnceLock<Arc<ProxyState>> = OnceLock::new();
    STATE.get_or_init(|| example_store().snapshot()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// The delta seed is the example cluster as the control plane sends
    /// it (`FERRY_FUZZ_WRITE_SEEDS=1` rewrites it), and it applies cleanly.
    #[test]
    fn the_delta_seed_is_the_example_cluster() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/delta/examples");
        let response = ferry_api::proto::DeltaResponse {
            nonce: "seed".into(),
            revision: 1,
            resources: example_resources(),
            removed: Vec::new(),
        };
        if std::env::var_os("FERRY_FUZZ_WRITE_SEEDS").is_some() {
            std::fs::write(path, response.encode_to_vec()).unwrap();
        }
        let seed = std::fs::read(path).unwrap();
        let decoded = ferry_api::proto::DeltaResponse::decode(seed.as_slice()).unwrap();
        assert_eq!(decoded.resources.len(), response.resources.len());
        let store = ConfigStore::new();
        let report = store.apply(decoded);
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        assert!(report.applied > 10, "{report:?}");
        assert!(example_state().is_configured());
    }
}
