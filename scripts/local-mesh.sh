#!/usr/bin/env bash
# Brings up a local Ferry mesh on this machine: a development PKI
# (ferry-certs), the control plane reading deploy/examples (or the folder
# given as $1) as mesh CA over mTLS, and one proxy per node of the example
# cluster (node-a, node-b), all on loopback. Each proxy authenticates with
# its node credential and obtains workload certificates for its pods. Edit
# the manifests while it runs and watch the proxies follow
# (http://127.0.0.1:15000/config_dump). Stays up until Ctrl-C; `--check`
# verifies that both proxies are in sync and hold their certificates, and
# exits (non-zero on failure). Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
manifests=deploy/examples
for arg in "$@"; do
  case "$arg" in
    --check) check=true ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) manifests=$arg ;;
  esac
done

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl not found: apt-get install curl" >&2; exit 1; }

cargo build --quiet --bins
# .cargo/config.toml builds for the host triple by name: binaries are under it.
bin=target/$(rustc -vV | sed -n 's/^host: //p')/debug
logs=$(mktemp -d -t ferry-local.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$bin/ferryctl" check --manifests "$manifests" || echo "(problems above: those objects are skipped)"

nodes=(node-a node-b)
pki="$logs/pki"
node_args=()
for n in "${nodes[@]}"; do node_args+=(--node "$n"); done
"$bin/ferry-certs" init --out "$pki" "${node_args[@]}" >/dev/null

"$bin/ferry-control-plane" --manifests "$manifests" --listen 127.0.0.1:15010 --tls-dir "$pki" \
  >"$logs/control-plane.log" 2>&1 &
pids+=($!)
for i in "${!nodes[@]}"; do
  "$bin/ferry-proxy" --node "${nodes[$i]}" --control-plane https://127.0.0.1:15010 --certs "$pki" \
    --admin "127.0.0.1:$((15000 + i))" --socks5 "127.0.0.1:$((15080 + i))" \
    --hbone "127.0.0.1:$((15008 + i * 10))" >"$logs/proxy-${nodes[$i]}.log" 2>&1 &
  pids+=($!)
done

ok=true
for i in "${!nodes[@]}"; do
  admin="127.0.0.1:$((15000 + i))"
  ready=false
  for _ in $(seq 1 100); do
    if curl -sf "http://$admin/healthz/ready" >/dev/null 2>&1; then ready=true; break; fi
    sleep 0.1
  done
  certs=0
  if $ready; then
    # Wait until the proxy holds certificates and their number is stable.
    last=-1
    for _ in $(seq 1 100); do
      certs=$(curl -sf "http://$admin/config_dump" | grep -c '"identity": "spiffe://' || true)
      [ "$certs" -gt 0 ] && [ "$certs" -eq "$last" ] && break
      last=$certs
      sleep 0.2
    done
  fi
  if $ready && [ "$certs" -gt 0 ]; then
    summary=$(curl -sf "http://$admin/config_dump" | grep -o '"summary": "[^"]*"' | cut -d'"' -f4)
    echo "proxy ${nodes[$i]}: ready: ${summary}; ${certs} workload certificate(s) (http://$admin/config_dump)"
  else
    echo "proxy ${nodes[$i]}: NOT ready or no certificates; log: $logs/proxy-${nodes[$i]}.log" >&2
    ok=false
  fi
done

if $check; then
  $ok || { cat "$logs"/*.log >&2; exit 1; }
  echo "local mesh: ok"
  exit 0
fi
$ok || exit 1
echo "control plane: 127.0.0.1:15010, manifests: $manifests, logs: $logs"
echo "Ctrl-C to stop."
wait
