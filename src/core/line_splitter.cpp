#include "core/line_splitter.hpp"

#include <cstring>

#include "core/utf8.hpp"

#if defined(__SSE2__) && defined(__GNUC__)
#include <emmintrin.h>
#define MODKIT_SCAN_SSE2 1
#endif

namespace modkit {
namespace {

// The first '\n' of [p, end) (nullptr if none), and in `high` a nonzero
// value if a byte before it is not ASCII. One pass for both: an ASCII line,
// the usual kind, then needs no UTF-8 check of its own.
const char* scan_line(const char* p, const char* end, unsigned& high) {
#ifdef MODKIT_SCAN_SSE2
  const __m128i newline = _mm_set1_epi8('\n');
  while (end - p >= 16) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const unsigned found = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, newline)));
    const unsigned top = static_cast<unsigned>(_mm_movemask_epi8(bytes));  // high bits
    if (found != 0) {
      high |= top & ((found & (0u - found)) - 1);  // the bytes before the first '\n'
      return p + __builtin_ctz(found);
    }
    high |= top;
    p += 16;
  }
  for (; p < end; ++p) {
    if (*p == '\n') return p;
    high |= static_cast<unsigned char>(*p) & 0x80u;
  }
  return nullptr;
#else
  high = 0x80;  // not looked at: the line gets the full UTF-8 check
  return static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(end - p)));
#endif
}

}  // namespace

LineSplitter::LineSplitter(std::size_t max_line_bytes, Sink& sink)
    : max_(max_line_bytes < 4 ? 4 : max_line_bytes), sink_(sink) {}

void LineSplitter::feed(std::string_view bytes) {
  while (!bytes.empty()) {
    unsigned high = 0;
    const char* found = scan_line(bytes.data(), bytes.data() + bytes.size(), high);
    if (found == nullptr) {
      pending_.append(bytes.data(), bytes.size());
      // Keep memory bounded: hand out full-size pieces as soon as we have them.
      // Only once 3 bytes past the cut have arrived: a UTF-8 sequence that
      // straddles the cut (it starts at most 3 bytes before it) is then
      // complete, so safe_cut can keep it whole instead of seeing a truncated,
      // "invalid" sequence and cutting it in two.
      std::size_t offset = 0;
      while (pending_.size() - offset >= max_ + 3) {
        std::string_view rest(pending_.data() + offset, pending_.size() - offset);
        std::size_t cut = utf8::safe_cut(rest, max_);
        emit(rest.substr(0, cut), false);
        offset += cut;
      }
      pending_.erase(0, offset);
      return;
    }
    std::size_t length = static_cast<std::size_t>(found - bytes.data());
    if (pending_.empty()) {
      emit_bounded(bytes.substr(0, length), high == 0);  // common case: no copy
    } else {
      pending_.append(bytes.data(), length);
      emit_bounded(pending_);
      pending_.clear();
    }
    bytes.remove_prefix(length + 1);
  }
}

void LineSplitter::finish() {
  if (!pending_.empty()) {
    emit_bounded(pending_);
    pending_.clear();
  }
  continuing_ = false;
}

// A complete line, possibly longer than the limit.
void LineSplitter::emit_bounded(std::string_view raw, bool ascii) {
  if (!raw.empty() && raw.back() == '\r') raw.remove_suffix(1);
  while (raw.size() > max_) {
    std::size_t cut = ascii ? max_ : utf8::safe_cut(raw, max_);  // no multi-byte sequence to keep whole
    emit(raw.substr(0, cut), false, ascii);
    raw.remove_prefix(cut);
  }
  emit(raw, true, ascii);
}

void LineSplitter::emit(std::string_view raw, bool line_complete, bool ascii) {
  sink_.line(ascii ? raw : utf8::sanitize(raw, scratch_), continuing_);
  continuing_ = !line_complete;
}

}  // namespace modkit
