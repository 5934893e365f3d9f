#include <chrono>
#include <cstdint>
#include <mutex>

#include "modkit/modkit.hpp"
#include "platform/system.hpp"

namespace modkit {

// RFC 9562 section 6.2, method 1: the 12-bit rand_a field is a counter within
// one millisecond, seeded randomly, so ids made in one process are ordered.
std::string new_uuid_v7() {
  static std::mutex mutex;
  static std::uint64_t last_ms = 0;
  static std::uint16_t counter = 0;

  unsigned char bytes[16];
  platform::fill_random(bytes, sizeof bytes);
  auto now = std::chrono::system_clock::now().time_since_epoch();
  auto ms = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(now).count());
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (ms > last_ms) {
      last_ms = ms;
      counter = static_cast<std::uint16_t>(((bytes[6] << 8) | bytes[7]) & 0x07ff);  // leave room to count
    } else {
      ms = last_ms;  // clock went back or same millisecond: keep order
      if (++counter > 0x0fff) {  // counter exhausted: borrow the next millisecond
        ++last_ms;
        ms = last_ms;
        counter = 0;
      }
    }
    bytes[6] = static_cast<unsigned char>(0x70 | ((counter >> 8) & 0x0f));
    bytes[7] = static_cast<unsigned char>(counter & 0xff);
  }
  for (int i = 0; i < 6; ++i) bytes[i] = static_cast<unsigned char>(ms >> (8 * (5 - i)));
  bytes[8] = static_cast<unsigned char>(0x80 | (bytes[8] & 0x3f));  // variant 10

  static const char digits[] = "0123456789abcdef";
  std::string text;
  text.reserve(36);
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) text.push_back('-');
    text.push_back(digits[bytes[i] >> 4]);
    text.push_back(digits[bytes[i] & 0x0f]);
  }
  return text;
}

}  // namespace modkit
