#!/usr/bin/env bash
# Fuzz every target (or the named ones) for SECONDS each, on stable
# (RUSTC_BOOTSTRAP=1), starting from the committed seeds; new inputs go to
# fuzz/corpus/TARGET, crashes to fuzz/artifacts/TARGET. Prints one summary
# line per target (runs from libFuzzer's last "Done N runs" line) and exits
# 1 if any target crashed, 2 if cargo-fuzz is missing.
#
# Usage: fuzz/run.sh SECONDS [TARGET...]
set -uo pipefail

usage() {
  echo "usage: $0 SECONDS [TARGET...]" >&2
  exit 2
}
[ $# -ge 1 ] || usage
seconds=$1
shift
case $seconds in '' | *[!0-9]*) usage ;; esac

cd "$(dirname "$0")/.." || exit 2
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is not installed; install it with:" >&2
  echo "  cargo install cargo-fuzz --locked" >&2
  exit 2
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
known=$(cargo fuzz list)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$known" || { echo "fuzz: no target $t (have: $(echo $known))" >&2; exit 2; }
done

# One build for all targets; `cargo fuzz run` then finds them up to date.
echo "fuzz: building ${targets[*]}"
if [ $# -gt 0 ]; then
  for t in "${targets[@]}"; do cargo fuzz build "$t" || exit 1; done
else
  cargo fuzz build || exit 1
fi

logs=fuzz/target/run-logs
mkdir -p "$logs"
summary=()
failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
  log="$logs/$t.log"
  echo "fuzz: $t for ${seconds}s (log: $log)"
  # -timeout: one input running this long is a hang, reported like a crash.
  cargo fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -timeout=25 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  [ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE.*/\1/p' "$log" | tail -1)
  [ -n "$runs" ] || runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  if [ $rc -eq 0 ]; then
    summary+=("$(printf '%-14s %10s runs  %5s corpus  ok' "$t" "${runs:-?}" "$corpus")")
  else
    artifact=$(sed -n 's/.*Test unit written to \(.*\)/\1/p' "$log" | tail -1)
    summary+=("$(printf '%-14s %10s runs  %5s corpus  FAILED (exit %s) %s' "$t" "${runs:-?}" "$corpus" "$rc" "$artifact")")
    failed+=("$t")
    echo "fuzz: $t FAILED (exit $rc); the end of its log:" >&2
    tail -40 "$log" >&2
  fi
done

echo "fuzz: ${seconds}s per target"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashed: ${failed[*]} (reproduce: cargo fuzz run TARGET fuzz/artifacts/TARGET/FILE)" >&2
  exit 1
fi
