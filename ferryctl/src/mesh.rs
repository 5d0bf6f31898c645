//! The state a node proxy would hold for a folder of manifests: the
//! control plane's translation fed into the proxy's own store.

use std::sync::Arc;

use ferry_control_plane::source::manifests::ManifestSource;
use ferry_control_plane::translate::{TranslateOptions, Translator};
use ferry_core::state::{ConfigStore, ProxyState};

/// Builds the state a proxy would hold for this folder.
pub fn proxy_state(dir: &std::path::Path) -> Result<Arc<ProxyState>, String> {
    if !dir.is_dir() {
        return Err(format!(
            "--manifests {}: not a readable folder",
            dir.display()
        ));
    }
    let mut source = ManifestSource::new(dir);
    let (events, _) = source.rescan().map_err(|e| e.to_string())?;
    for p in source.problems() {
        eprintln!("warning: {p}");
    }
    let mut translator = Translator::new(TranslateOptions::default());
    translator.apply(events);
    let response = ferry_api::proto::DeltaResponse {
        nonce: "ferryctl".into(),
        revision: 1,
        resources: translator
            .published()
            .values()
            .map(|p| (*p.resource).clone())
            .collect(),
        removed: Vec::new(),
    };
    let store = ConfigStore::new();
    let report = store.apply(response);
    for e in &report.rejected {
        eprintln!("warning: {e}");
    }
    Ok(store.snapshot())
}
