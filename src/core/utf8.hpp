// UTF-8 validation and repair for log lines.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace modkit::utf8 {

/// Returns `text` if it is valid UTF-8; otherwise writes into `scratch` a copy
/// with each maximal invalid subsequence replaced by U+FFFD and returns that.
std::string_view sanitize(std::string_view text, std::string& scratch);

/// The largest cut <= `limit` (and > 0 when limit > 0) that does not split a
/// well-formed multi-byte sequence of `text`.
std::size_t safe_cut(std::string_view text, std::size_t limit);

}  // namespace modkit::utf8
