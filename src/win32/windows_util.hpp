// Small helpers shared by the Win32 platform layer (Windows-only).
#pragma once

#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>

#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

namespace modkit::win32 {

/// An owned kernel handle (NULL and INVALID_HANDLE_VALUE both mean "none").
class UniqueHandle {
 public:
  UniqueHandle() = default;
  explicit UniqueHandle(HANDLE handle) : handle_(handle) {}
  UniqueHandle(UniqueHandle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  UniqueHandle& operator=(UniqueHandle&& other) noexcept {
    if (this != &other) reset(std::exchange(other.handle_, nullptr));
    return *this;
  }
  UniqueHandle(const UniqueHandle&) = delete;
  UniqueHandle& operator=(const UniqueHandle&) = delete;
  ~UniqueHandle() { reset(); }

  HANDLE get() const { return handle_; }
  explicit operator bool() const { return handle_ != nullptr && handle_ != INVALID_HANDLE_VALUE; }
  HANDLE release() { return std::exchange(handle_, nullptr); }
  void reset(HANDLE handle = nullptr) {
    if (handle_ != nullptr && handle_ != INVALID_HANDLE_VALUE) CloseHandle(handle_);
    handle_ = handle;
  }

 private:
  HANDLE handle_ = nullptr;
};

/// UTF-8 to UTF-16 for the wide API; nullopt on invalid UTF-8.
std::optional<std::wstring> widen(std::string_view text);
/// UTF-16 from the wide API to UTF-8 (unpaired surrogates become U+FFFD).
std::string narrow(std::wstring_view text);

/// A GetLastError() value as a std::error_code (std::system_category()).
inline std::error_code win32_error(DWORD code) { return std::error_code(static_cast<int>(code), std::system_category()); }

/// FormatMessageW's text for a GetLastError() value, without the trailing
/// newline and period; "error N" when the system has no text for it.
std::string system_message(DWORD code);

/// True when running under Wine (ntdll exports wine_get_version).
bool running_under_wine();

}  // namespace modkit::win32
