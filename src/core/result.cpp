#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/text.hpp"
#include "modkit/modkit.hpp"

namespace modkit {

std::string to_string(const Error& error) { return error.message + " (" + error.code.message() + ")"; }

Error make_error(std::errc code, std::string message) {
  return Error{std::make_error_code(code), std::move(message)};
}

namespace detail {
void abort_on_bad_access(const Error& error) {
  std::fprintf(stderr, "modkit: value() called on an error result: %s\n", error.message.c_str());
  std::abort();
}
}  // namespace detail

}  // namespace modkit

namespace modkit::core {

Decimal::Decimal(bool negative, std::uint64_t magnitude) noexcept {
  std::size_t at = sizeof text_;
  do {
    text_[--at] = static_cast<char>('0' + magnitude % 10);
    magnitude /= 10;
  } while (magnitude != 0);
  if (negative) text_[--at] = '-';
  start_ = static_cast<unsigned char>(at);
}

void append(std::string& text, std::initializer_list<std::string_view> pieces) {
  std::size_t size = text.size();
  for (std::string_view piece : pieces) size += piece.size();
  text.reserve(size);
  for (std::string_view piece : pieces) text.append(piece.data(), piece.size());
}

std::string concat(std::initializer_list<std::string_view> pieces) {
  std::string text;
  append(text, pieces);
  return text;
}

Error error_of(std::errc code, std::initializer_list<std::string_view> pieces) {
  return Error{std::make_error_code(code), concat(pieces)};
}

}  // namespace modkit::core
