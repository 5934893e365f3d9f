#!/usr/bin/env bash
# Footprint (issue 12): what modkit adds to a statically linked host.
#
#   bash bench/footprint.sh [work-dir]          (default: build-footprint)
#
# Builds libmodkit.a with `make lib` (-Os, a section per function and datum),
# then two minimal hosts that run one module (/bin/true) and wait for its end:
# bench/footprint/host_modkit.cpp through LocalProcessBackend and a
# TextLogSink, bench/footprint/host_posix.cpp by hand with posix_spawn and a
# reader thread, both with the same libstdc++ parts. Both are compiled -Os
# -ffunction-sections -fdata-sections, linked -static -Wl,--gc-sections and
# stripped; the difference of their sizes is what modkit adds. Also prints
# the library's own text (size(1) of its objects, summed). No timing: nothing
# but a compiler is needed, and only a build failure is an error.
#
# Environment: CXX (default c++), FOOTPRINT_TARGET_KIB (default 150),
# FOOTPRINT_TOP=N to list the N largest symbols of the modkit host,
# FOOTPRINT_CXXFLAGS: more flags for the library and both hosts alike (e.g.
# "-fno-exceptions -fno-rtti"; the figure of record uses none).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$root/build-footprint}
mkdir -p "$work"
work=$(cd "$work" && pwd)
cxx=${CXX:-c++}
read -r -a extra <<<"${FOOTPRINT_CXXFLAGS:-}"
flags=(-std=c++17 -Os -ffunction-sections -fdata-sections -pthread "${extra[@]}")
target_kib=${FOOTPRINT_TARGET_KIB:-150}

make -C "$root" --no-print-directory -j2 lib OUT="$work/lib" CXXFLAGS="-Os -ffunction-sections -fdata-sections ${extra[*]}" >/dev/null

build_host() {  # name, extra arguments
  local name=$1
  shift
  # glibc warns that some of its calls (getpwnam, ...) want its shared
  # libraries at run time even when linked statically; not our concern here.
  "$cxx" "${flags[@]}" "$root/bench/footprint/$name.cpp" "$@" -static -Wl,--gc-sections \
    -o "$work/$name.unstripped" 2> >(grep -v -E 'statically linked applications requires at runtime|in function' >&2)
  strip -o "$work/$name" "$work/$name.unstripped"
}
build_host host_modkit -I"$root/include" "$work/lib/libmodkit.a"
build_host host_posix

with=$(stat -c %s "$work/host_modkit")
without=$(stat -c %s "$work/host_posix")
added=$((with - without))
text=$(size "$work/lib/libmodkit.a" | awk 'NR > 1 { sum += $1 } END { print sum }')
verdict=missed
if ((added <= target_kib * 1024)); then verdict=met; fi
printf 'footprint: host with modkit %d bytes, without %d bytes, added %d bytes (%d KiB); libmodkit text %d bytes\n' \
  "$with" "$without" "$added" $((added / 1024)) "$text"
echo "footprint: target <= $target_kib KiB added: $verdict"

# Both hosts must still do their job (a footprint of a broken host means nothing).
for host in host_modkit host_posix; do
  if ! "$work/$host" 2>/dev/null; then echo "footprint: $host did not run /bin/true to its end (not fatal)" >&2; fi
done

if [[ -n ${FOOTPRINT_TOP:-} ]]; then
  echo "largest symbols of the modkit host (bytes, unstripped):"
  # -t d: decimal sizes, so that any awk will do (mawk has no strtonum).
  nm --size-sort -C -S -t d "$work/host_modkit.unstripped" | tail -n "$FOOTPRINT_TOP" \
    | awk '{ printf "  %8d %s", $2 + 0, $3; for (i = 4; i <= NF; ++i) printf " %s", $i; print "" }'
fi
