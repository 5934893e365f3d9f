#!/usr/bin/env bash
# Cross-builds modkit for Windows with MinGW-w64 (posix threads) and runs the
# whole GoogleTest suite under Wine, with the sequence that keeps wine's
# service processes from inheriting ctest's pipes (which hangs ctest).
#
#   scripts/win32-test.sh [ctest arguments...]     (make win32 runs it)
#
# Environment: BUILD_DIR (default build-win32), JOBS (default: nproc),
# WINE_KEEP_PREFIX=1 to keep the temporary wine prefix.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-win32}
JOBS=${JOBS:-$(nproc)}

for tool in x86_64-w64-mingw32-g++-posix wine wineserver wineboot cmake; do
  command -v "$tool" >/dev/null || {
    echo "win32-test: '$tool' not found (apt-get install g++-mingw-w64-x86-64-posix wine wine64)" >&2
    exit 1
  }
done

cmake -S . -B "$BUILD_DIR" -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/mingw-w64.cmake \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMODKIT_BUILD_TESTS=ON -DMODKIT_BUILD_TOOLS=ON >/dev/null
cmake --build "$BUILD_DIR" -j"$JOBS"

# A fresh prefix (about 700 MB) in a temporary directory, removed at the end.
prefix_root=$(mktemp -d "${TMPDIR:-/tmp}/modkit-wine.XXXXXX")
export WINEPREFIX="$prefix_root/prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
unset DISPLAY WAYLAND_DISPLAY
cleanup() {
  wineserver -k >/dev/null 2>&1 || true
  if [[ "${WINE_KEEP_PREFIX:-0}" != 1 ]]; then rm -rf "$prefix_root"; fi
}
trap cleanup EXIT

wineboot -i >/dev/null 2>&1 </dev/null      # creates the prefix (several seconds)
wineserver -w                                # let the boot-time server exit first
wineserver -p >/dev/null 2>&1 </dev/null     # a persistent server whose stdio is not ctest's
wine cmd /c exit >/dev/null 2>&1 </dev/null  # start wine's services outside ctest

cd "$BUILD_DIR"
ctest --output-on-failure --timeout 120 "$@"
