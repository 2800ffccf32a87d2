#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (libFuzzer, coverage-guided, through cargo-fuzz on the stable
# toolchain: `--sanitizer none`, safe Rust needs no AddressSanitizer) for SECONDS each (default 60),
# from the committed corpus, with a seed that is printed so a failure can be replayed:
#   SEED=1234 SECONDS_PER_TARGET=600 bash e2e/fuzz.sh [TARGET...]
# New inputs go to target/fuzz/corpus/TARGET (fuzz/corpus stays as committed; `cargo fuzz cmin`
# folds new ones in). A failing input is written to fuzz/artifacts/TARGET/ and replays with
#   cargo fuzz run --sanitizer none TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=e2e/tools.sh
. e2e/tools.sh
ensure_cargo_fuzz
seconds=${SECONDS_PER_TARGET:-60}
seed=${SEED:-$(( $(date +%s) % 1000000 + 1 ))}
case "$seconds" in '' | *[!0-9]*) echo "fuzz: SECONDS_PER_TARGET must be a whole number of seconds, not '$seconds'" >&2; exit 2 ;; esac
case "$seed" in '' | *[!0-9]*) echo "fuzz: SEED must be a whole number, not '$seed'" >&2; exit 2 ;; esac
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <("$CARGO_FUZZ" list --fuzz-dir fuzz)
# A run that fuzzes nothing must not pass: no targets found, or (below) a target that ran no input.
if [ ${#targets[@]} -eq 0 ] || [ -z "${targets[0]}" ]; then
  echo "fuzz: no fuzz targets found in fuzz/ (cargo fuzz list printed none)" >&2
  exit 1
fi
echo "fuzz: seed $seed, ${seconds} s per target: ${targets[*]}"
for t in "${targets[@]}"; do
  mkdir -p "target/fuzz/corpus/$t" "fuzz/corpus/$t"
  start=$(date +%s)
  log=target/fuzz/$t.log
  # -timeout: one input running longer than 30 s is a hang (the harness's own limit is 10 s per call).
  if "$CARGO_FUZZ" run --fuzz-dir fuzz --sanitizer none --codegen-units 16 "$t" "target/fuzz/corpus/$t" "fuzz/corpus/$t" -- \
    -seed="$seed" -max_total_time="$seconds" -timeout=30 -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^(INFO: Seed|stat::number_of_executed_units|stat::new_units_added)' "$log" || true
    runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\)$/\1/p' "$log" | tail -1)
    if [ -z "$runs" ] || [ "$runs" -eq 0 ]; then
      tail -n 40 "$log" >&2
      echo "fuzz: $t ran no input (libFuzzer reported ${runs:-no} executed units; whole log: $log)" >&2
      exit 1
    fi
  else
    tail -n 80 "$log" >&2
    echo "fuzz: $t failed (seed $seed; whole log: $log); the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  echo "fuzz: $t ran $(( $(date +%s) - start )) s without a failure"
done
