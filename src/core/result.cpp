#include <cstdio>
#include <cstdlib>
#include <string>

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
