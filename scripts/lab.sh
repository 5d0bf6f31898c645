#!/usr/bin/env bash
# Brings up the local mesh: the example cluster (deploy/examples, or the
# folder given with --manifests) as network namespaces, one per node and per
# pod, with the control plane (mesh CA, mTLS), one proxy per node
# (transparent capture, DNS, HBONE) and the example applications. It sends
# real traffic through the mesh and prints what it saw, then stays up until
# Ctrl-C; `--check` exits instead (non-zero on any failure). Needs root;
# installs what it needs (iproute2, iptables, curl, python3) when missing.
# Everything it makes is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/lab.sh needs root (network namespaces, iptables): run it as root or with sudo;" >&2
  echo "scripts/local-mesh.sh runs a loopback mesh without root." >&2
  exit 2
fi
scripts/deps.sh
cargo build --quiet --workspace --bins
# .cargo/config.toml builds for the host triple by name: binaries are under it.
exec "target/$(rustc -vV | sed -n 's/^host: //p')/debug/ferryctl" lab up "$@"
