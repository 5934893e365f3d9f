// Building the library's messages with little code at each call site (issue
// 12, footprint): one out-of-line call that appends every piece, instead of a
// chain of operator+ whose temporaries each need code to build, move and (in
// a build with exceptions) destroy on the unwinding path.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

#include "modkit/modkit.hpp"

namespace modkit::core {

/// A number in decimal, without allocating; converts to a string_view that
/// lives as long as it does (a temporary lives to the end of the statement,
/// so `concat({"pid ", Decimal(pid)})` is fine).
class Decimal {
 public:
  template <typename T, typename = std::enable_if_t<std::is_integral_v<T>>>
  explicit Decimal(T value) noexcept : Decimal(is_negative(value), magnitude(value)) {}
  operator std::string_view() const noexcept { return {text_ + start_, sizeof text_ - start_}; }  // NOLINT

 private:
  Decimal(bool negative, std::uint64_t magnitude) noexcept;
  template <typename T>
  static constexpr bool is_negative(T value) noexcept {
    if constexpr (std::is_signed_v<T>) return value < 0;
    return false;
  }
  // Through the unsigned type, so that the most negative value works too.
  template <typename T>
  static constexpr std::uint64_t magnitude(T value) noexcept {
    auto bits = static_cast<std::uint64_t>(value);
    return is_negative(value) ? 0 - bits : bits;
  }
  char text_[21];  // 20 digits of 2^64 - 1, or a '-' and 19 digits
  unsigned char start_;
};

/// Appends every piece to `text`, reserving once.
void append(std::string& text, std::initializer_list<std::string_view> pieces);
/// The pieces one after the other.
std::string concat(std::initializer_list<std::string_view> pieces);
/// make_error(code, concat(pieces)).
Error error_of(std::errc code, std::initializer_list<std::string_view> pieces);

}  // namespace modkit::core
