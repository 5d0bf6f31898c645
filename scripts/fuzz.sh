#!/usr/bin/env bash
# Coverage-guided fuzzing of Ferry's input handling, on stable Rust:
# libFuzzer (libfuzzer-sys) with SanitizerCoverage flags, built into its own
# target folder so the normal build is untouched.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Runs each target (default: all) for SECONDS (default 20), starting from
# the seeds in fuzz/corpus/<target> and a scratch copy of them (the checked-in
# corpus does not grow), and prints one line per target: executions, corpus
# entries, and the outcome. A crash or leak fails the run; its input is
# kept in target/fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(socks5 dns hbone_connect manifest delta)
host=$(rustc -vV | sed -n 's/^host: //p')

export CARGO_TARGET_DIR=target/fuzz
# Line tables only: a crash's backtrace names the code, the build stays short.
export CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
# Not the shipped binaries' link-time optimisation: it would make every
# fuzz build several times longer for no gain in coverage.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps the flags off build scripts and proc macros.
cargo build --release --locked -p ferry-fuzz --target "$host" --bins

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
printf '%-14s %12s %8s  %s\n' target executions corpus outcome
for t in "${targets[@]}"; do
  corpus="$scratch/$t"
  mkdir -p "$corpus" "target/fuzz/artifacts/$t"
  cp fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  log="$scratch/$t.log"
  set +e
  "target/fuzz/$host/release/$t" "$corpus" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="target/fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  entries=$(find "$corpus" -type f | wc -l)
  if [ "$rc" -eq 0 ]; then
    outcome=ok
  else
    outcome="FAILED (exit $rc): $(grep -m1 -E 'panicked|ERROR|deadly' "$log" || true)"
    failed=1
    tail -40 "$log" >&2
  fi
  printf '%-14s %12s %8s  %s\n' "$t" "${execs:-?}" "$entries" "$outcome"
done
exit "$failed"
