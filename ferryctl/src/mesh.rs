//! The state a node proxy would hold for a folder of manifests: the
//! control plane's translation fed into the proxy's own store.

use std::sync::Arc;

use ferry_control_plane::source::manifests::ManifestSource;
use ferry_control_plane::translate::{TranslateOptions, Translator};
use ferry_core::state::{ConfigStore, ProxyState};

/// Builds the state a proxy would hold for this folder; problems with
/// its documents are printed as warnings (they keep out only the objects
/// they name).
pub fn proxy_state(dir: &std::path::Path) -> Result<Arc<ProxyState>, String> {
    let (state, problems) = proxy_state_checked(dir)?;
    for p in problems {
        eprintln!("warning: {p}");
    }
    Ok(state)
}

/// [`proxy_state`], returning the problems instead of printing them: a
/// document the manifest source refused, a resource the proxy's store
/// rejected.
pub fn proxy_state_checked(
    dir: &std::path::Path,
) -> Result<(Arc<ProxyState>, Vec<String>), String> {
    if !dir.is_dir() {
        return Err(format!(
            "--manifests {}: not a readable folder",
            dir.display()
        ));
    }
    let mut source = ManifestSource::new(dir);
    let (events, _) = source.rescan().map_err(|e| e.to_string())?;
    let mut problems: Vec<String> = source.problems().iter().map(|p| p.to_string()).collect();
    let mut translator = Translator::new(TranslateOptions::default());
    translator.apply(events);
    let resources = translator
        .published()
        .values()
        .map(|p| p.resource())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a translated resource does not decode: {e}"))?;
    let (state, report) = hold(1, resources, ferry_api::identity::DEFAULT_TRUST_DOMAIN);
    problems.extend(report.rejected.iter().map(|e| e.to_string()));
    Ok((state, problems))
}

/// What a proxy holds once it has applied `resources` (at `revision`),
/// with the proxy's own store, and what the store refused.
pub fn hold(
    revision: u64,
    resources: Vec<ferry_api::proto::Resource>,
    trust_domain: &str,
) -> (Arc<ProxyState>, ferry_core::state::ApplyReport) {
    let store = ConfigStore::for_trust_domain(trust_domain);
    let report = store.apply(ferry_api::proto::DeltaResponse {
        nonce: "ferryctl".into(),
        revision,
        resources,
        removed: Vec::new(),
    });
    (store.snapshot(), report)
}
