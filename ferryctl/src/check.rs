//! `ferryctl check`: a folder validated as the control plane would.

use std::path::PathBuf;
use std::process::ExitCode;

use ferry_control_plane::source::manifests::ManifestSource;
use ferry_control_plane::translate::{TranslateOptions, Translator};

pub fn run(dir: PathBuf) -> ExitCode {
    if !dir.is_dir() {
        eprintln!(
            "ferryctl: --manifests {}: not a readable folder",
            dir.display()
        );
        return ExitCode::from(2);
    }
    let mut source = ManifestSource::new(&dir);
    let events = match source.rescan() {
        Ok((events, _)) => events,
        Err(e) => {
            eprintln!("ferryctl: {e}");
            return ExitCode::from(2);
        }
    };
    let objects = events.len();
    let mut translator = Translator::new(TranslateOptions::default());
    let changes = translator.apply(events);
    let problems = source.problems();
    for p in &problems {
        println!("{p}");
    }
    // Nothing is skipped silently: kinds Ferry does not read are named.
    let ignored = source.ignored();
    if !ignored.is_empty() {
        let kinds: Vec<String> = ignored
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        eprintln!("not read by Ferry (ignored): {}", kinds.join(", "));
    }
    if problems.is_empty() {
        eprintln!(
            "ok: {objects} objects, {} resources ({} policies)",
            changes.len(),
            translator.policy_count()
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("{} problem(s)", problems.len());
        ExitCode::FAILURE
    }
}
