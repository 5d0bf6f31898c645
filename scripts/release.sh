#!/usr/bin/env bash
# Builds the release binaries the image ships (ferry-proxy,
# ferry-control-plane, ferryctl, ferry-certs) into
# target/<host triple>/release. Extra arguments go to both cargo runs
# (e.g. --timings).
#
# The proxy gets a cargo run of its own. cargo unifies each dependency's
# features over everything one run builds, and the Kubernetes client of the
# control plane and ferryctl turns on `tracing`'s `log` feature: built
# beside them, every log and span call site in the proxy, and in h2, hyper,
# tonic and hickory under it, also carries the code that would hand the
# record to the `log` crate, which the proxy never uses. That is 0.67 MB of
# code and 0.4-0.5 MiB of resident memory per proxy (docs/benchmarks.md,
# idle memory). The proxy is built last, so its binary is the one left in
# the folder; a later `cargo build --release` of the whole workspace
# replaces it with the larger one.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --bins -p ferry-control-plane -p ferryctl -p ferry-certs "$@"
cargo build --release --locked --bins -p ferry-proxy "$@"
echo "release binaries: target/$(rustc -vV | sed -n 's/^host: //p')/release" >&2
