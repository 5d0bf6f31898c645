//! Network namespaces for end-to-end tests: the lab's guards
//! ([`ferryctl::lab::netns`]), and what a test does without root.

pub use ferryctl::lab::netns::{is_root, run, Netns};

/// For tests that need root: `true` to go on. Without root the test fails
/// when `FERRY_E2E=required`, and is skipped with a printed reason otherwise.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("FERRY_E2E").is_ok_and(|v| v == "required") {
        panic!("{test}: needs root (network namespaces, iptables) and FERRY_E2E=required is set");
    }
    eprintln!("skipping {test}: needs root (network namespaces, iptables); set FERRY_E2E=required to make this a failure");
    false
}
