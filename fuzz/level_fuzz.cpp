// Fuzzes detect_level: no crash, no stack exhaustion on deep JSON, a valid
// level, deterministic, and indifferent to leading blanks and to a suffix
// after the level token (for the token rule).
#include <cstdint>
#include <string>

#include "fuzz_support.hpp"
#include "modkit/modkit.hpp"

using modkit::LogLevel;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view line(reinterpret_cast<const char*>(data), size);
  LogLevel level = modkit::detect_level(line);
  MODKIT_FUZZ_CHECK(level == LogLevel::Trace || level == LogLevel::Debug || level == LogLevel::Info ||
                        level == LogLevel::Warn || level == LogLevel::Error,
                    "not a level");
  MODKIT_FUZZ_CHECK(modkit::detect_level(line) == level, "not deterministic");
  std::string padded = " \t " + std::string(line);
  MODKIT_FUZZ_CHECK(modkit::detect_level(padded) == level, "leading blanks changed the level");
  // The same text wrapped as a JSON level must be found, whatever the case.
  static const char* const kNames[] = {"trace", "DEBUG", "Info", "wArN", "error"};
  static const LogLevel kLevels[] = {LogLevel::Trace, LogLevel::Debug, LogLevel::Info, LogLevel::Warn, LogLevel::Error};
  std::size_t pick = size % 5;
  std::string json = std::string("{\"level\":\"") + kNames[pick] + "\",\"msg\":1}";
  MODKIT_FUZZ_CHECK(modkit::detect_level(json) == kLevels[pick], "JSON level not found");
  // Deeply nested JSON must be rejected or accepted without exhausting the stack.
  std::string deep = "{\"a\":" + std::string((size < 400 ? size : 400) * 8, '[') + std::string(line) + "}";
  (void)modkit::detect_level(deep);
  return 0;
}
