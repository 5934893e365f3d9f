#include "core/utf8.hpp"

#include <cstdint>
#include <cstring>

namespace modkit::utf8 {
namespace {

// Length of the well-formed sequence at text[i], or 0 if it is not one
// (Unicode 15, table 3-7: no overlongs, no surrogates, nothing past U+10FFFF).
std::size_t sequence_length(std::string_view text, std::size_t i) {
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  unsigned char b0 = byte(i);
  std::size_t left = text.size() - i;
  if (b0 < 0x80) return 1;
  if (b0 >= 0xC2 && b0 <= 0xDF) return (left >= 2 && (byte(i + 1) & 0xC0) == 0x80) ? 2 : 0;
  unsigned char lo = 0x80, hi = 0xBF;
  std::size_t length = 0;
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    length = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    length = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (left < 2 || byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < length; ++k) {
    if (left <= k || (byte(i + k) & 0xC0) != 0x80) return 0;
  }
  return length;
}

// How many bytes of an ill-formed sequence one U+FFFD replaces: the lead byte
// plus the continuation bytes that could still have been part of it.
std::size_t maximal_subpart(std::string_view text, std::size_t i) {
  std::size_t n = 1;
  while (n < 4 && i + n < text.size()) {
    // Could text[i..i+n] still begin a valid sequence? Pad it with
    // continuation bytes and ask sequence_length.
    char probe[4] = {'\x80', '\x80', '\x80', '\x80'};
    for (std::size_t k = 0; k <= n; ++k) probe[k] = text[i + k];
    std::size_t want = sequence_length(std::string_view(probe, 4), 0);
    if (want == 0 || want <= n) break;
    ++n;
  }
  return n;
}

// True if none of the 16 bytes at `p` has its high bit set (all ASCII).
bool ascii16(const char* p) {
  std::uint64_t a, b;
  std::memcpy(&a, p, 8);
  std::memcpy(&b, p + 8, 8);
  return ((a | b) & 0x8080808080808080ULL) == 0;
}

// True if every byte of `text` is ASCII, checked a word at a time; the
// last word overlaps the previous one instead of a byte-by-byte tail.
bool all_ascii(std::string_view text) {
  const char* p = text.data();
  std::size_t n = text.size();
  if (n >= 16) {
    for (std::size_t i = 0; i + 16 <= n; i += 16) {
      if (!ascii16(p + i)) return false;
    }
    return ascii16(p + n - 16);
  }
  constexpr std::uint64_t kHigh64 = 0x8080808080808080ULL;
  constexpr std::uint32_t kHigh32 = 0x80808080U;
  if (n >= 8) {
    std::uint64_t a, b;
    std::memcpy(&a, p, 8);
    std::memcpy(&b, p + n - 8, 8);
    return ((a | b) & kHigh64) == 0;
  }
  if (n >= 4) {
    std::uint32_t a, b;
    std::memcpy(&a, p, 4);
    std::memcpy(&b, p + n - 4, 4);
    return ((a | b) & kHigh32) == 0;
  }
  unsigned char bits = 0;
  for (std::size_t i = 0; i < n; ++i) bits |= static_cast<unsigned char>(p[i]);
  return bits < 0x80;
}

}  // namespace

std::string_view sanitize(std::string_view text, std::string& scratch) {
  // Log lines are mostly ASCII: this runs on every line a child writes, and a
  // byte-by-byte check was the reader thread's largest cost.
  if (all_ascii(text)) return text;
  std::size_t i = 0;
  while (i < text.size()) {
    while (i + 16 <= text.size() && ascii16(text.data() + i)) i += 16;
    if (i == text.size()) break;
    if (static_cast<unsigned char>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    std::size_t length = sequence_length(text, i);
    if (length == 0) break;
    i += length;
  }
  if (i == text.size()) return text;

  scratch.assign(text.data(), i);
  while (i < text.size()) {
    std::size_t length = sequence_length(text, i);
    if (length > 0) {
      scratch.append(text.data() + i, length);
      i += length;
    } else {
      scratch.append("\xEF\xBF\xBD");
      i += maximal_subpart(text, i);
    }
  }
  return scratch;
}

std::size_t safe_cut(std::string_view text, std::size_t limit) {
  if (limit >= text.size()) return text.size();
  std::size_t lead = limit;
  while (lead > 0 && limit - lead < 3 && (static_cast<unsigned char>(text[lead]) & 0xC0) == 0x80) --lead;
  if (lead == 0 || lead == limit) return limit;
  std::size_t length = sequence_length(text, lead);
  // Only step back over a sequence that is well formed and straddles the cut.
  return (length > 0 && lead + length > limit) ? lead : limit;
}

}  // namespace modkit::utf8
