//! The manifest decoder: arbitrary text as a multi-document YAML file, split,
//! parsed, typed and validated as the control plane does. Every problem
//! must name its document; nothing may panic.
#![no_main]

use ferry_control_plane::source::manifests::parse_manifest;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = parse_manifest(std::path::Path::new("fuzz.yaml"), &text);
    for problem in &parsed.problems {
        assert!(problem.document >= 1 && problem.line >= 1, "{problem}");
    }
});
