#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (build dir build-fuzz) and runs each
# for SECONDS (default 600; CI passes 60), starting from the checked-in seed
# corpus in fuzz/corpus/<target>/. New inputs go to build-fuzz/corpus/<target>/
# (kept between runs), crashes to build-fuzz/artifacts/. Prints the executions
# per target; exits non-zero if any target found a failure.
#
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
build=build-fuzz
targets=(line_splitter level record_batcher config_validation command_line)

cmake -S . -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMODKIT_FUZZ=ON -DMODKIT_BUILD_TESTS=OFF -DMODKIT_BUILD_TOOLS=OFF >/dev/null
cmake --build "$build" -j2 --target $(printf 'modkit_%s_fuzz ' "${targets[@]}")

mkdir -p "$build/artifacts"
summary=()
failed=0
for target in "${targets[@]}"; do
  binary="$build/fuzz/modkit_${target}_fuzz"
  corpus="$build/corpus/$target"
  log="$build/fuzz-$target.log"
  mkdir -p "$corpus"
  echo "=== $target: ${seconds} s"
  status=0
  "$binary" "$corpus" "fuzz/corpus/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len=8192 -print_final_stats=1 -artifact_prefix="$build/artifacts/$target-" >"$log" 2>&1 || status=$?
  executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ "$status" -ne 0 ]; then
    failed=1
    grep -E 'invariant violated|ERROR:|SUMMARY:' "$log" | head -5 || true
    summary+=("$(printf '%-18s FAILED (exit %d) after %s executions, see %s' "$target" "$status" "${executions:-?}" "$log")")
  else
    summary+=("$(printf '%-18s %12s executions in %s s, corpus %s inputs' "$target" "${executions:-?}" "$seconds" \
      "$(ls "$corpus" | wc -l)")")
  fi
done
echo
echo "=== fuzz summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
