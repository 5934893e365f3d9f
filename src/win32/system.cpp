// Small system services for Windows, and the helpers of windows_util.hpp.
#include "platform/system.hpp"

#include <io.h>

#include <climits>
#include <cstdio>

#include "win32/environment_block.hpp"
#include "win32/windows_util.hpp"

// RtlGenRandom (advapi32's SystemFunction036): what rand_s and the CRT use.
// Declared here because <ntsecapi.h> does not compile on its own.
extern "C" BOOLEAN NTAPI SystemFunction036(PVOID buffer, ULONG length);

namespace modkit::win32 {

std::optional<std::wstring> widen(std::string_view text) {
  std::u16string wide;
  if (!utf8_to_utf16(text, wide)) return std::nullopt;
  return std::wstring(wide.begin(), wide.end());
}

std::string narrow(std::wstring_view text) {
  std::u16string wide(text.begin(), text.end());
  return utf16_to_utf8(wide);
}

std::string system_message(DWORD code) {
  wchar_t* buffer = nullptr;
  DWORD length = FormatMessageW(FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM |
                                    FORMAT_MESSAGE_IGNORE_INSERTS | FORMAT_MESSAGE_MAX_WIDTH_MASK,
                                nullptr, code, MAKELANGID(LANG_NEUTRAL, SUBLANG_DEFAULT),
                                reinterpret_cast<wchar_t*>(&buffer), 0, nullptr);
  std::string text;
  if (length > 0 && buffer != nullptr) text = narrow(std::wstring_view(buffer, length));
  if (buffer != nullptr) LocalFree(buffer);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\r' || text.back() == '\n' || text.back() == '.')) {
    text.pop_back();
  }
  if (text.empty()) text = "error " + std::to_string(code);
  return text;
}

bool running_under_wine() {
  HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
  return ntdll != nullptr && GetProcAddress(ntdll, "wine_get_version") != nullptr;
}

}  // namespace modkit::win32

namespace modkit::platform {

void fill_random(unsigned char* buffer, std::size_t size) {
  while (size > 0) {
    ULONG chunk = size > ULONG_MAX / 2 ? ULONG_MAX / 2 : static_cast<ULONG>(size);
    if (!SystemFunction036(buffer, chunk)) return;
    buffer += chunk;
    size -= chunk;
  }
}

void write_all(int fd, const char* data, std::size_t size) {
  // CRT descriptors block (there is no O_NONBLOCK), so a short write only
  // means "go on". No SIGPIPE either: a closed reader fails the write, which
  // drops the rest.
  while (size > 0) {
    unsigned chunk = size > 0x40000000 ? 0x40000000u : static_cast<unsigned>(size);
    int count = _write(fd, data, chunk);
    if (count <= 0) return;
    data += count;
    size -= static_cast<std::size_t>(count);
  }
}

void write_all(std::FILE* file, const char* data, std::size_t size) {
  _lock_file(file);
  std::fflush(file);  // what the host wrote earlier comes first
  int fd = _fileno(file);
  if (fd >= 0) {
    write_all(fd, data, size);
  } else {
    // No descriptor (a GUI program's stderr is -2): stdio is all there is.
    std::fwrite(data, 1, size, file);
    std::fflush(file);
  }
  _unlock_file(file);
}

std::error_code last_error() { return win32::win32_error(GetLastError()); }

std::string error_text(std::error_code code) {
  if (code.category() == std::system_category()) return win32::system_message(static_cast<DWORD>(code.value()));
  return code.message();
}

}  // namespace modkit::platform
