// UUID v7 (RFC 9562): text form, version, variant, time and ordering.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "modkit/modkit.hpp"

namespace {

bool is_lower_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

std::uint64_t unix_ms_of(const std::string& id) {
  std::string hex = id.substr(0, 8) + id.substr(9, 4);
  return std::stoull(hex, nullptr, 16);
}

std::uint64_t now_ms() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

TEST(UuidV7, TextFormIs8_4_4_4_12LowerHex) {
  std::string id = modkit::new_uuid_v7();
  ASSERT_EQ(id.size(), 36u) << id;
  for (std::size_t i = 0; i < id.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      EXPECT_EQ(id[i], '-') << id;
    } else {
      EXPECT_TRUE(is_lower_hex(id[i])) << id << " at " << i;
    }
  }
}

TEST(UuidV7, VersionAndVariant) {
  for (int i = 0; i < 1000; ++i) {
    std::string id = modkit::new_uuid_v7();
    EXPECT_EQ(id[14], '7') << id;  // version nibble
    EXPECT_TRUE(id[19] == '8' || id[19] == '9' || id[19] == 'a' || id[19] == 'b') << id;  // variant 10xx
  }
}

TEST(UuidV7, TimestampIsUnixMilliseconds) {
  std::uint64_t before = now_ms();
  std::string id = modkit::new_uuid_v7();
  std::uint64_t after = now_ms();
  std::uint64_t stamp = unix_ms_of(id);
  EXPECT_GE(stamp, before);
  // The counter may borrow a millisecond or two when ids are made very fast.
  EXPECT_LE(stamp, after + 50);
}

TEST(UuidV7, IdsFromOneProcessAreStrictlyOrdered) {
  std::string previous = modkit::new_uuid_v7();
  for (int i = 0; i < 20000; ++i) {  // far more than 4096 per millisecond: exercises the counter overflow
    std::string id = modkit::new_uuid_v7();
    ASSERT_LT(previous, id) << "at " << i;
    previous = id;
  }
}

TEST(UuidV7, UniqueAcrossThreads) {
  std::mutex mutex;
  std::set<std::string> seen;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      std::vector<std::string> mine;
      for (int i = 0; i < 2000; ++i) mine.push_back(modkit::new_uuid_v7());
      for (std::size_t i = 1; i < mine.size(); ++i) EXPECT_LT(mine[i - 1], mine[i]);
      std::lock_guard<std::mutex> lock(mutex);
      seen.insert(mine.begin(), mine.end());
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(seen.size(), 8000u);
}

}  // namespace
