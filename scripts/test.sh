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
# The Helm chart: lint, render, schema validation for Kubernetes 1.29-1.33,
# exact RBAC, flags the binaries accept. Before the tests: it makes the venv
# whose renderer the chart-run test (tests/tests/image_lab.rs) uses.
scripts/chart-test.sh
cargo test --workspace --locked
# A short coverage-guided run of every fuzz target (docs/reliability.md has
# the longer runs); FUZZ_SECONDS=0 skips it.
if [ "${FUZZ_SECONDS:-10}" != 0 ]; then
  scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
fi
