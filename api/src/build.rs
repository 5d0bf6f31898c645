//! What the binaries were built from, for `--version`, logs and metrics.

/// The release version (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit built (`unknown` when built outside a checkout without
/// `FERRY_GIT_COMMIT`).
pub const GIT_COMMIT: &str = env!("FERRY_GIT_COMMIT");

/// `--version` of every binary: `0.1.0 (commit 0123abcd...)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FERRY_GIT_COMMIT"),
    ")"
);

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_names_the_commit() {
        assert!(super::LONG_VERSION.starts_with(super::VERSION));
        assert!(super::LONG_VERSION.contains(super::GIT_COMMIT));
        assert!(!super::GIT_COMMIT.is_empty());
    }
}
