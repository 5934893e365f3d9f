#!/usr/bin/env bash
# Checks that modkit can be consumed the three documented ways: find_package
# after install, add_subdirectory, and pkg-config.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cmake -S "$root" -B "$work/build" -DMODKIT_BUILD_TESTS=OFF -DMODKIT_BUILD_TOOLS=OFF -DCMAKE_INSTALL_PREFIX="$work/prefix" >/dev/null
cmake --build "$work/build" -j2 >/dev/null
cmake --install "$work/build" >/dev/null

cmake -S "$root/examples/consumer" -B "$work/find" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/find" >/dev/null
"$work/find/consumer" | grep -q "InstanceHandle"
echo "find_package(modkit): ok"

cmake -S "$root/examples/consumer" -B "$work/sub" -DUSE_SUBDIRECTORY=ON -DMODKIT_SOURCE_DIR="$root" >/dev/null
cmake --build "$work/sub" >/dev/null
"$work/sub/consumer" | grep -q "InstanceHandle"
echo "add_subdirectory(modkit): ok"

PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig:$work/prefix/lib/x86_64-linux-gnu/pkgconfig" \
  c++ -std=c++17 "$root/examples/consumer/main.cpp" -o "$work/pc-consumer" \
  $(PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig:$work/prefix/lib/x86_64-linux-gnu/pkgconfig" pkg-config --cflags --libs modkit)
"$work/pc-consumer" | grep -q "InstanceHandle"
echo "pkg-config modkit: ok"
