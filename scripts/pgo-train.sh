#!/usr/bin/env bash
# Records the proxy's execution profile for profile-guided optimization
# (PGO) and writes it to proxy/pgo/ferry-proxy.profdata, which
# scripts/release.sh builds the release proxy with. Re-run it after changes
# to the data path or a dependency update (a profile that no longer matches
# a function is ignored for that function, so a stale one costs speed, not
# correctness), and commit the result.
#
# The workload is scripts/profile-peer.sh's, in a private network
# namespace: 2 GiB downloads, new connections, 64-byte request/response,
# through SOCKS5 -> node-a -> HBONE -> node-b. Needs root, the peer
# benchmark set up (PEER_WORK, see ../shared/bench/peer/README.md) and
# rustup's llvm-tools component (llvm-profdata of the compiler's LLVM).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/build.sh
: "${PEER_WORK:?set PEER_WORK to the folder of the peer benchmark}"

host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
[ -x "$profdata" ] || rustup component add llvm-tools
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT

# The control plane and certificate tool as they ship; the proxy
# instrumented, in a target folder of its own (its flags differ).
# The same build as scripts/release.sh's, so each reuses the other's.
build_tools
build_proxy_with target/pgo-gen "-Cprofile-generate=$raw"
bin=target/pgo-gen/$host/release
cp "target/$host/release/ferry-control-plane" "target/$host/release/ferry-certs" "$bin/"

# Each run's proxies end with SIGTERM and write their counts on the way
# out (the files of one binary merge into one).
for load in dl cps lat; do
  BIN=$PWD/$bin MODE=none LOAD=$load N=2 SECS=5 OUT=$PWD/target/pgo-gen/out scripts/profile-peer.sh
done
ls "$raw"/*.profraw >/dev/null
# Not --sparse: the functions that never ran stay in with a count of zero,
# which is what tells the compiler they are cold (optimized for size and
# placed apart). A sparse profile leaves them out, and the compiler then
# treats them as unknown: 2 MB more code (docs/benchmarks.md).
"$profdata" merge -o proxy/pgo/ferry-proxy.profdata "$raw"
echo "wrote proxy/pgo/ferry-proxy.profdata ($(du -k proxy/pgo/ferry-proxy.profdata | cut -f1) KiB); build with scripts/release.sh" >&2
