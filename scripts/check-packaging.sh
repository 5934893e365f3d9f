#!/usr/bin/env bash
# Checks that modkit can be consumed the three documented ways: find_package
# after install, add_subdirectory, and pkg-config.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cmake -S "$root" -B "$work/build" -DMODKIT_BUILD_TESTS=OFF -DMODKIT_BUILD_TOOLS=OFF -DCMAKE_INSTALL_PREFIX="$work/prefix" \
  -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >/dev/null
cmake --build "$work/build" -j2 >/dev/null
if ! grep -E '"command": .*/src/core/types\.cpp' "$work/build/compile_commands.json" | grep -q -- '-Werror'; then
  echo "modkit's own (top-level) build: no -Werror on its sources" >&2
  exit 1
fi
cmake --install "$work/build" >/dev/null

cmake -S "$root/examples/consumer" -B "$work/find" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/find" >/dev/null
"$work/find/consumer" | grep -q "InstanceHandle"
echo "find_package(modkit): ok"

cmake -S "$root/examples/consumer" -B "$work/sub" -DUSE_SUBDIRECTORY=ON -DMODKIT_SOURCE_DIR="$root" \
  -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >/dev/null
cmake --build "$work/sub" >/dev/null
"$work/sub/consumer" | grep -q "InstanceHandle"
# A vendoring host's build must not stop on a warning of modkit's sources
# (MODKIT_WERROR defaults to PROJECT_IS_TOP_LEVEL); modkit's own build does.
modkit_lines() { grep -E '"command": .*/src/(core|posix)/[a-z_]+\.cpp' "$1/compile_commands.json"; }
if [[ -z $(modkit_lines "$work/sub") ]] || modkit_lines "$work/sub" | grep -q -- '-Werror'; then
  echo "add_subdirectory(modkit): modkit's sources compiled with -Werror (or not found) in a vendoring host" >&2
  exit 1
fi
echo "add_subdirectory(modkit): ok (no -Werror)"

PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig:$work/prefix/lib/x86_64-linux-gnu/pkgconfig" \
  c++ -std=c++17 "$root/examples/consumer/main.cpp" -o "$work/pc-consumer" \
  $(PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig:$work/prefix/lib/x86_64-linux-gnu/pkgconfig" pkg-config --cflags --libs modkit)
"$work/pc-consumer" | grep -q "InstanceHandle"
echo "pkg-config modkit: ok"
