#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test (unit,
# integration and end-to-end) against freshly built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the build and the end-to-end tests need.
scripts/deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# End-to-end tests drive the real binaries: build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
# The Helm chart: lint, render, schema validation for Kubernetes 1.29-1.33, exact RBAC.
scripts/chart-test.sh
# A short coverage-guided run of every fuzz target (docs/reliability.md has
# the longer runs); FUZZ_SECONDS=0 skips it.
if [ "${FUZZ_SECONDS:-10}" != 0 ]; then
  scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
fi
