#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks for building and testing
# Ferry (when run as root; otherwise says what is missing): make (jemalloc
# is built from source with the proxy), libc6-dev (static glibc), iproute2,
# iptables and nftables, curl, ping, python3 with venv (the lab's pods and
# the chart tests), g++ (libFuzzer, built with the fuzz targets),
# prometheus (promtool evaluates the chart's alert expressions; the lab can
# run a Prometheus; the package's service is not started where systemd does
# not run, and the lab starts its own inside a namespace).
set -euo pipefail

need=()
for tool in curl:curl ip:iproute2 iptables:iptables nft:nftables ping:iputils-ping python3:python3 g++:g++ promtool:prometheus make:make; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
# The chart tests run the Helm SDK and kubernetes-validate from a venv.
if command -v python3 >/dev/null 2>&1; then
  python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
else
  need+=(python3-venv)
fi
# The binaries are linked statically against glibc (.cargo/config.toml):
# libc.a and the static-pie start file come with libc6-dev.
[ -e "/usr/lib/$(uname -m)-linux-gnu/libc.a" ] || need+=(libc6-dev)
[ ${#need[@]} -gt 0 ] || exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${need[*]} (install them as root, e.g. apt-get install ${need[*]})" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Installing starts no service (prometheus would listen on the host's
# network where systemd runs): policy-rc.d refuses, for this install only.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
