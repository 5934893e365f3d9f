#!/usr/bin/env bash
# Runs every benchmark program of a CMake build tree (issue 4), one after the
# other (never in parallel: they measure wall-clock time on a shared machine),
# writes each one's JSON to <build>/bench-results/, then prints a table of each
# figure, its ratio to the baseline measured in the same run, and the target.
#
#   bash scripts/bench.sh [build-dir]          (default: build-bench; `make bench`)
#
# Environment:
#   BENCH_FILTER   regex passed as --benchmark_filter (internal names carry
#                  suffixes, e.g. 'BM_LogThroughput/32/' or 'BM_Spawn/')
#   BENCH_ARGS     more Google Benchmark flags for every program
#   BENCH_TIMEOUT  seconds allowed per program (default 300)
#
# Benchmark programs are the executables whose name contains "bench" outside
# CMakeFiles/ (the helper child is modkit_spawn_helper). The summary is also
# written to <build>/bench-results/summary.md.
set -euo pipefail

build=${1:-build-bench}
if [[ ! -d $build ]]; then
  echo "bench.sh: no build tree at '$build' (run: make bench)" >&2
  exit 2
fi
results=$build/bench-results
mkdir -p "$results"
rm -f "$results"/*.json "$results"/*.log

mapfile -t programs < <(find "$build" -type f -perm -u+x -name '*bench*' ! -path '*/CMakeFiles/*' \
  ! -name '*.sh' ! -name '*.a' | sort)
if [[ ${#programs[@]} -eq 0 ]]; then
  echo "bench.sh: no benchmark program under '$build' (configure with -DMODKIT_BUILD_BENCH=ON)" >&2
  exit 2
fi

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$results/machine.txt"
cat "$results/machine.txt"

started=$(date +%s)
status=0
for program in "${programs[@]}"; do
  name=$(basename "$program")
  echo
  echo "=== $name ($(( $(date +%s) - started )) s elapsed, load $(cut -d' ' -f1 /proc/loadavg))"
  # Random interleaving spreads each benchmark's repetitions over the run, so
  # a burst of load from other users does not land on one side of a ratio.
  # shellcheck disable=SC2086
  if ! timeout "${BENCH_TIMEOUT:-300}" "$program" \
      --benchmark_out="$results/$name.json" --benchmark_out_format=json \
      --benchmark_enable_random_interleaving=true \
      --benchmark_display_aggregates_only=true \
      ${BENCH_FILTER:+--benchmark_filter="$BENCH_FILTER"} ${BENCH_ARGS:-} 2>&1 | tee "$results/$name.log"; then
    echo "bench.sh: $name failed or timed out" >&2
    status=1
  fi
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); total $(( $(date +%s) - started )) s" \
  | tee -a "$results/machine.txt"

if ! command -v python3 >/dev/null; then
  echo "bench.sh: python3 not found; raw results are in $results/*.json" >&2
  exit $status
fi

python3 - "$results" <<'PY' | tee "$results/summary.md"
import glob, json, os, sys

results = sys.argv[1]
runs = {}  # name -> list of iteration runs; name_median -> aggregate
medians = {}
for path in sorted(glob.glob(os.path.join(results, "*.json"))):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        continue  # a program that ran nothing (filtered out) or died
    for b in data.get("benchmarks", []):
        if b.get("error_occurred"):
            print(f"> error in {b['name']}: {b.get('error_message')}")
            continue
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                medians[b["run_name"]] = b
        else:
            runs.setdefault(b["run_name"], []).append(b)

SCALE = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}

def get(name, field="real_time"):
    """Median over repetitions when there were several, else the mean of runs."""
    entry = medians.get(name)
    if entry is None:
        entries = runs.get(name)
        if not entries:
            return None
        values = [e.get(field) for e in entries if e.get(field) is not None]
        if not values:
            return None
        value = sum(values) / len(values)
        unit = entries[0].get("time_unit")
    else:
        value = entry.get(field)
        unit = entry.get("time_unit")
        if value is None:
            return None
    if field in ("real_time", "cpu_time"):
        value *= SCALE[unit]
    return value

def best(name, field="real_time"):
    """The best repetition (least time, or most per second): on a shared
    machine the least disturbed run, for a second view of each ratio."""
    entries = [e for e in runs.get(name, []) if e.get(field) is not None]
    if not entries:
        return None
    values = [e[field] * (SCALE[e["time_unit"]] if field == "real_time" else 1.0) for e in entries]
    return max(values) if field.endswith("per_second") else min(values)

def fmt_time(seconds):
    if seconds is None:
        return "n/a"
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"

def fmt_rate(value, unit):
    if value is None:
        return "n/a"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"

rows = []
def row(figure, value, baseline, ratio, target, ok, best_ratio=None):
    verdict = "—" if ok is None else ("pass" if ok else "**miss**")
    rows.append((figure, value, baseline, "n/a" if ratio is None else f"{ratio:.2f}x",
                 "" if best_ratio is None else f"{best_ratio:.2f}x", target, verdict))

def ratio_of(a, b):
    return None if a is None or b is None or b == 0 else a / b

# Spawn.
modkit_spawn = get("BM_Spawn/modkit")
for peer, target, limit in (("posix_spawn", "<= 1.00x", 1.0), ("libuv", "< 1.00x", 1.0),
                            ("boost_process_v2", "< 1.00x", 1.0)):
    base = get(f"BM_Spawn/{peer}")
    r = ratio_of(modkit_spawn, base)
    ok = None if r is None else (r <= limit if peer == "posix_spawn" else r < limit)
    row(f"spawn: modkit / {peer}", fmt_time(modkit_spawn), fmt_time(base), r, target, ok,
        ratio_of(best("BM_Spawn/modkit"), best(f"BM_Spawn/{peer}")))
per_spawn = get("BM_Spawn/modkit", "threads_per_spawn")
row("threads started per spawn, steady state: modkit (counted)", "n/a" if per_spawn is None else f"{per_spawn:.2f}",
    "", None, "= 0", None if per_spawn is None else per_spawn == 0)
concurrent, concurrent_raw = get("BM_SpawnConcurrent/8/modkit"), get("BM_SpawnConcurrent/8/posix_spawn")
r = ratio_of(concurrent, concurrent_raw)
if concurrent is not None or concurrent_raw is not None:
    row("8 threads spawning at once: modkit (one backend) / posix_spawn", fmt_time(concurrent),
        fmt_time(concurrent_raw), r, "<= 1.20x", None if r is None else r <= 1.2,
        ratio_of(best("BM_SpawnConcurrent/8/modkit"), best("BM_SpawnConcurrent/8/posix_spawn")))
contained = get("BM_Spawn/modkit", "contained")
uncontained = get("BM_Spawn/modkit_uncontained")
r = ratio_of(modkit_spawn, uncontained)
row("spawn with containment / without: modkit" + ("" if contained else " (NOT contained: no writable cgroup)"),
    fmt_time(modkit_spawn), fmt_time(uncontained), r, "<= 1.20x", None if r is None or not contained else r <= 1.2,
    ratio_of(best("BM_Spawn/modkit"), best("BM_Spawn/modkit_uncontained")))
for impl in ("modkit", "posix_spawn", "libuv", "boost_process_v2"):
    large, small = get(f"BM_SpawnLargeParent/{impl}"), get(f"BM_Spawn/{impl}")
    r = ratio_of(large, small)
    if impl == "modkit":
        row("spawn, 1 GiB parent / small parent: modkit", fmt_time(large), fmt_time(small), r, "<= 1.20x",
            None if r is None else r <= 1.2, ratio_of(best(f"BM_SpawnLargeParent/{impl}"), best(f"BM_Spawn/{impl}")))
    elif large is not None:
        row(f"spawn, 1 GiB parent / small parent: {impl}", fmt_time(large), fmt_time(small), r, "(context)", None,
            ratio_of(best(f"BM_SpawnLargeParent/{impl}"), best(f"BM_Spawn/{impl}")))

# Stop.
stop, raw_stop = get("BM_StopCooperative"), get("BM_StopCooperativeRaw")
r = ratio_of(stop, raw_stop)
row("cooperative stop: stop_instance / kill+waitpid", fmt_time(stop), fmt_time(raw_stop), r, "<= 1.10x",
    None if r is None else r <= 1.1, ratio_of(best("BM_StopCooperative"), best("BM_StopCooperativeRaw")))
stop_uncontained = get("BM_StopCooperativeUncontained")
r = ratio_of(stop_uncontained, raw_stop)
if stop_uncontained is not None:
    row("cooperative stop without containment: stop_instance / kill+waitpid", fmt_time(stop_uncontained),
        fmt_time(raw_stop), r, "(context)", None, ratio_of(best("BM_StopCooperativeUncontained"),
                                                           best("BM_StopCooperativeRaw")))
total, grace = get("BM_ShutdownStubborn/100"), get("BM_ShutdownStubborn/100", "grace_s")
r = ratio_of(total, grace)
row("stubborn shutdown of 100: total / grace", fmt_time(total), fmt_time(grace), r, "<= 1.30x",
    None if r is None else r <= 1.3)

# Logs: (figure, benchmark, its baseline, line sizes), each against >= 0.70x.
LOG_PAIRS = (
    ("log throughput, {size}-byte lines: modkit / raw read+memchr", "BM_LogThroughput", "BM_LogThroughputRaw",
     (32, 256, 4096)),
    ("log to a JSON file, {size}-byte lines: JsonLogSink / hand-written loop", "BM_LogToJson", "BM_LogToJsonRaw",
     (32, 256)),
)
for figure, bench, baseline, sizes in LOG_PAIRS:
    for size in sizes:
        name, raw_name = f"{bench}/{size}", f"{baseline}/{size}"
        lines, raw_lines = get(name, "items_per_second"), get(raw_name, "items_per_second")
        if lines is None and raw_lines is None:
            continue  # filtered out
        mbytes, raw_mbytes = get(name, "bytes_per_second"), get(raw_name, "bytes_per_second")
        r = ratio_of(lines, raw_lines)
        row(figure.format(size=size), f"{fmt_rate(lines, 'lines/s')} ({fmt_rate(mbytes, 'B/s')})",
            f"{fmt_rate(raw_lines, 'lines/s')} ({fmt_rate(raw_mbytes, 'B/s')})", r, ">= 0.70x",
            None if r is None else r >= 0.7,
            ratio_of(best(name, "items_per_second"), best(raw_name, "items_per_second")))

# List and scale.
listing = get("BM_ListInstances/1000")
churn = get("BM_ListInstances/1000", "churn_cycles")
row("list_instances, 1000 live, spawn/stop churn alongside", fmt_time(listing),
    "n/a" if churn is None else f"{churn:.0f} churn cycles", None, "(no target)", None)
threads = get("BM_Scale/1000", "threads_per_instance")
rss = get("BM_Scale/1000", "rss_kib_per_instance")
live = get("BM_Scale/1000", "instances")
host_rss = get("BM_Scale/1000", "host_rss_mib")
row("1000 idle instances: threads per instance", "n/a" if threads is None else f"{threads:.2f}", "", None,
    "<= 2", None if threads is None else threads <= 2.0 + 1e-9)
row("1000 idle instances: host RSS per instance", "n/a" if rss is None else f"{rss:.1f} KiB",
    "" if host_rss is None else f"host {host_rss:.0f} MiB", None, "<= 256 KiB", None if rss is None else rss <= 256)
row("1000 idle instances: instances running", "n/a" if live is None else f"{live:.0f}", "", None, "= 1000",
    None if live is None else live >= 1000)

print()
print("| figure | modkit | baseline | ratio (medians) | ratio (best runs) | target | result |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
print()
with open(os.path.join(results, "machine.txt")) as f:
    for line in f:
        print("    " + line.rstrip())
missed = sum(1 for r in rows if r[6] == "**miss**")
print()
print(f"{missed} target(s) missed." if missed else "every target met.")
PY
exit $status
