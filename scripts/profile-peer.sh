#!/usr/bin/env bash
# Profiles Ferry's two node proxies on the side-by-side benchmark's path
# (../shared/bench/peer: run peer-bench.sh once first, it writes the
# configs, the 2 GiB file and the echo server into $PEER_WORK), inside a
# private network namespace of its own, and stops everything it started.
#
#   PEER_WORK=$HOME/peer-work scripts/profile-peer.sh
#
#   MODE  perf    perf record -g of both proxies ($OUT/perf.data)
#         stat    perf stat: page faults and context switches per GB
#         strace  strace -c per proxy ($OUT/strace-a.txt, strace-b.txt)
#         none    figures only
#   LOAD  dl      N curl downloads of the 2 GiB file through node-a (default)
#         cps     benchclient.py cps for SECS seconds (new connections)
#         lat     benchclient.py latency (64 B request/response)
#   BIN   folder of the binaries (default target/<host triple>/release, as
#         scripts/release.sh builds them); WRAP: a command
#         to run the proxies under. Prints GB/s per download, the proxies'
#         CPU ticks and CPU seconds per GB, their run-queue wait, their
#         context switches (voluntary and involuntary) and their RSS.
set -euo pipefail
PEER=${PEER_WORK:?set PEER_WORK to the folder of the peer benchmark}
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/$(rustc -vV | sed -n 's/^host: //p')/release}
MODE=${MODE:-perf}
WRAP=${WRAP:-}
N=${N:-3}
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/target/profile}
if [ "${INNER:-}" != 1 ]; then exec unshare -n -- env INNER=1 bash "$0" "$@"; fi
mkdir -p "$OUT"
ip link set lo up
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
RUN=$PEER/run
nginx -c "$PEER/configs/nginx.conf" >/dev/null 2>&1 & PIDS+=($!)
"$RUN/echo-server" 0.0.0.0 9000 >/dev/null 2>&1 & PIDS+=($!)
rm -rf "$RUN/prof-pki"; "$BIN/ferry-certs" init --out "$RUN/prof-pki" --node node-a --node node-b >/dev/null
export FERRY_ACCESS_LOG_RATE=0
RUST_LOG=warn "$BIN/ferry-control-plane" --manifests "$PEER/configs/ferry" --listen 127.0.0.1:15010 --tls-dir "$RUN/prof-pki" --hbone-port 15018 >"$OUT/cp.log" 2>&1 & PIDS+=($!)
RUST_LOG=warn $WRAP "$BIN/ferry-proxy" --node node-a --control-plane https://127.0.0.1:15010 --certs "$RUN/prof-pki" --admin 127.77.0.1:15000 --socks5 127.77.0.1:1080 --hbone 127.77.0.1:15018 >"$OUT/a.log" 2>&1 & A=$!; PIDS+=($!)
RUST_LOG=warn $WRAP "$BIN/ferry-proxy" --node node-b --control-plane https://127.0.0.1:15010 --certs "$RUN/prof-pki" --admin 127.77.0.2:15000 --socks5 127.77.0.2:1080 --hbone 127.77.0.2:15018 >"$OUT/b.log" 2>&1 & B=$!; PIDS+=($!)
for i in $(seq 100); do curl -sf http://127.77.0.2:15000/config_dump | grep -q '"identity": "spiffe://' && curl -sf http://127.77.0.1:15000/config_dump | grep -q '"identity": "spiffe://' && break; sleep 0.1; done
URL=http://127.77.2.10:8080/zero2g
curl -s -o /dev/null --interface 127.77.1.10 --socks5 127.77.0.1:1080 -r 0-10000000 $URL
case $MODE in
  perf) perf record -F 999 -g -p $A,$B -o "$OUT/perf.data" >/dev/null 2>&1 & P=$!;;
  strace) strace -c -f -p $A -o "$OUT/strace-a.txt" & P=$!; strace -c -f -p $B -o "$OUT/strace-b.txt" & P2=$!;;
  stat) perf stat -e page-faults,context-switches,cpu-migrations -p $A,$B -o "$OUT/stat.txt" & P=$!;;
  *) P=;;
esac
sleep 0.5
t0=$(awk '{s+=$14+$15} END {print s}' /proc/$A/stat /proc/$B/stat)
w0a=$(cut -d" " -f2 /proc/$A/schedstat); w0b=$(cut -d" " -f2 /proc/$B/schedstat)
# Context switches of every thread of both proxies: voluntary (it slept) and not.
switches() { cat /proc/$A/task/*/status /proc/$B/task/*/status | awk '/^voluntary_ctxt/ {v+=$2} /^nonvoluntary_ctxt/ {n+=$2} END {print v, n}'; }
s0=$(switches)
if [ "${LOAD:-dl}" = cps ]; then python3 $PEER/benchclient.py cps --bind 127.77.1.10 --socks 127.77.0.1:1080 --target 127.77.2.10:9000 --seconds ${SECS:-5};
elif [ "${LOAD:-dl}" = lat ]; then python3 $PEER/benchclient.py latency --bind 127.77.1.10 --socks 127.77.0.1:1080 --target 127.77.2.10:9000;
else for i in $(seq $N); do curl -s -o /dev/null -w '%{speed_download}\n' --interface 127.77.1.10 --socks5 127.77.0.1:1080 $URL; done; fi
[ -n "$P" ] && { kill -INT $P; wait $P || true; }
[ -n "${P2:-}" ] && { kill -INT $P2; wait $P2 || true; }
t1=$(awk '{s+=$14+$15} END {print s}' /proc/$A/stat /proc/$B/stat)
w1a=$(cut -d" " -f2 /proc/$A/schedstat); w1b=$(cut -d" " -f2 /proc/$B/schedstat)
s1=$(switches)
echo "$s0 $s1" | awk '{printf "context switches: voluntary %d, involuntary %d\n", $3 - $1, $4 - $2}'
awk -v t=$((t1 - t0)) -v wa=$((w1a - w0a)) -v wb=$((w1b - w0b)) -v n="$N" -v load="${LOAD:-dl}" 'BEGIN { printf "cpu-ticks %d", t; if (load == "dl") printf " cpu-s/GB %.3f", t / 100 / (n * 2.147483648); printf " runqueue-wait-ms a %d b %d", wa / 1e6, wb / 1e6; print "" }'
grep -E 'VmRSS' /proc/$A/status /proc/$B/status
[ "$MODE" != stat ] || awk -v n=$N '/page-faults|context-switches|cpu-migrations/ {gsub(",","",$1); printf "%s/GB %.3g  ", $2, $1/(n*2.147483648)} END {print ""}' "$OUT/stat.txt"
