#!/usr/bin/env bash
# Fails if the library uses iostreams outside its opt-in modkit/ostream.hpp
# (issue 12: streams and locales cost a static host hundreds of KiB).
#
#   bash scripts/check-no-iostreams.sh <libmodkit.a> [source-dir]
#
# 1. nm -C on every object of the archive but ostream's: no reference
#    (defined or undefined) to a stream, stream buffer, ios_base or the
#    standard stream objects.
# 2. The sources (src/**, modkit.hpp, supervisor.hpp) include no stream header;
#    src/core/ostream.cpp and include/modkit/ostream.hpp are the exception.
set -euo pipefail

archive=${1:?usage: check-no-iostreams.sh <libmodkit.a> [source-dir]}
source_dir=${2:-$(cd "$(dirname "$0")/.." && pwd)}
status=0

symbols='basic_ostream|basic_istream|basic_iostream|basic_ios<|std::ios_base|basic_[io]?stringstream|basic_stringbuf|basic_streambuf|basic_[io]?fstream|basic_filebuf|std::(cout|cerr|clog|cin)\b'
# -A names the member of each line: "archive:member: symbol" (ostream.cpp.o
# with CMake, ostream.o with make lib).
found=$(nm -C -A "$archive" 2>/dev/null | grep -v -E ':ostream(\.cpp)?\.o(bj)?:' | grep -E "$symbols" || true)
if [[ -n $found ]]; then
  echo "check-no-iostreams: iostream symbols in $archive outside ostream's object:" >&2
  echo "$found" | sed 's/^/  /' | head -40 >&2
  status=1
fi
# An archive whose ostream object is missing or empty would pass the check above vacuously.
# (grep -c, not -q: -q stops reading at the first match, nm then dies of
# SIGPIPE and pipefail fails the test. Found by CI on the larger ASan archive.)
if ! nm -C -A "$archive" 2>/dev/null | grep -E ':ostream(\.cpp)?\.o(bj)?:' | grep -c 'modkit::operator<<' >/dev/null; then
  echo "check-no-iostreams: no modkit::operator<< in $archive's ostream object (is src/core/ostream.cpp built?)" >&2
  status=1
fi

headers='^[[:space:]]*#[[:space:]]*include[[:space:]]*<(iostream|ostream|istream|sstream|fstream|iosfwd|iomanip|streambuf|spanstream|syncstream)>'
found=$(cd "$source_dir" && grep -rn -E "$headers" src include/modkit/modkit.hpp include/modkit/supervisor.hpp \
  | grep -v '^src/core/ostream.cpp:' || true)
if [[ -n $found ]]; then
  echo "check-no-iostreams: stream headers included by library sources:" >&2
  echo "$found" | sed 's/^/  /' >&2
  status=1
fi

if [[ $status -eq 0 ]]; then
  echo "check-no-iostreams: $(basename "$archive"): no iostreams outside ostream's object; sources clean"
fi
exit $status
