#!/usr/bin/env bash
# Builds the release binaries the image ships (ferry-proxy,
# ferry-control-plane, ferryctl, ferry-certs) into
# target/<host triple>/release. Extra arguments go to every cargo run
# (e.g. --timings).
#
# The proxy gets a cargo run of its own. cargo unifies each dependency's
# features over everything one run builds, and the Kubernetes client of the
# control plane and ferryctl turns on `tracing`'s `log` feature: built
# beside them, every log and span call site in the proxy, and in h2, hyper,
# tonic and hickory under it, also carries the code that would hand the
# record to the `log` crate, which the proxy never uses. That is 0.67 MB of
# code and 0.4-0.5 MiB of resident memory per proxy (docs/benchmarks.md,
# idle memory).
#
# The proxy is also built with its execution profile
# (proxy/pgo/ferry-proxy.profdata, recorded by scripts/pgo-train.sh): the
# compiler then lays out the code the proxy runs apart from the code it
# does not, and optimizes the paths by how often they run. That build has
# other compiler flags, so it uses a target folder of its own
# (target/pgo-use) and its binary is copied into the release folder (the
# plain proxy is built only without a profile).
# FERRY_PGO=0 builds without the profile.
#
# The proxy is built last, so its binary is the one left in the folder; a
# later `cargo build --release` of the whole workspace replaces it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/build.sh
host=$(rustc -vV | sed -n 's/^host: //p')
out=${CARGO_TARGET_DIR:-target}/$host/release

build_tools "$@"

profile=$PWD/proxy/pgo/ferry-proxy.profdata
if [ "${FERRY_PGO:-1}" = 0 ] || [ ! -f "$profile" ]; then
  build_proxy "$@"
else
  # cargo does not watch the file a flag names: a copy named by its hash
  # puts the profile's content into the flags, so a new profile rebuilds.
  mkdir -p target/pgo-use
  sum=$(sha256sum "$profile" | cut -c1-16)
  [ -f "target/pgo-use/$sum.profdata" ] || cp "$profile" "target/pgo-use/$sum.profdata"
  profile=$PWD/target/pgo-use/$sum.profdata
  build_proxy_with target/pgo-use "-Cprofile-use=$profile" "$@" \
    || { echo "release.sh: the build with proxy/pgo/ferry-proxy.profdata failed; record a new profile (scripts/pgo-train.sh) or set FERRY_PGO=0" >&2; exit 1; }
  # A new file, not a write through cargo's hard link to its own copy.
  cp --remove-destination "target/pgo-use/$host/release/ferry-proxy" "$out/ferry-proxy"
  echo "release.sh: ferry-proxy built with its execution profile" >&2
fi
echo "release binaries: $out" >&2
