#include "core/line_splitter.hpp"

#include <cstring>

#include "core/utf8.hpp"

namespace modkit {

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
