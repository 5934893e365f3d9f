// The words of the library's limit and usage records (core/limits_text.hpp).
#include <gtest/gtest.h>

#include "core/limits_text.hpp"

namespace {

using namespace std::chrono_literals;

TEST(LimitsText, NothingSetSaysNothing) {
  EXPECT_EQ(modkit::core::describe_limits({}, {}), "");
}

TEST(LimitsText, LimitsAndIdentityAreNamedAsTheFieldsAre) {
  modkit::ResourceLimits limits;
  limits.memory_max = 2ull << 30;
  limits.address_space = 64ull << 20;
  limits.cpu_time = std::chrono::seconds(2);
  limits.core_size = 0;
  modkit::Privileges privileges;
  privileges.user = 65534;
  privileges.group = 65534;
  privileges.umask = 027;
  privileges.no_new_privileges = true;
  EXPECT_EQ(modkit::core::describe_limits(limits, privileges),
            "limits: memory_max 2.0 GiB, address_space 64.0 MiB, cpu_time 2 s, core_size 0 bytes; runs with uid "
            "65534, gid 65534, no_new_privileges, umask 027");
}

TEST(LimitsText, WithoutDropsExactlyTheSkippedFields) {
  modkit::ResourceLimits limits;
  limits.memory_max = 64ull << 20;
  limits.memory_high = 32ull << 20;
  limits.open_files = 64;
  auto left = modkit::core::without(limits, {"limits.memory_max (no memory controller)", "limits.cpu_percent"});
  EXPECT_FALSE(left.memory_max);
  EXPECT_EQ(left.memory_high, limits.memory_high);  // a prefix of another name is not it
  EXPECT_EQ(left.open_files, limits.open_files);
}

TEST(LimitsText, UsageGivesSecondsAndMemoryAndTheGroupWhenKnown) {
  modkit::ResourceUsage usage;
  usage.user_cpu = 1500ms;
  usage.system_cpu = 20ms;
  usage.peak_memory = 3ull << 20;
  EXPECT_EQ(modkit::core::describe_usage(usage), "used 1.500 s user, 0.020 s system, peak 3.0 MiB");
  modkit::ResourceUsage unknown_peak;
  EXPECT_EQ(modkit::core::describe_usage(unknown_peak), "used 0.000 s user, 0.000 s system");
  usage.group_user_cpu = 2s;
  usage.group_peak_memory = 512;
  EXPECT_EQ(modkit::core::describe_usage(usage),
            "used 1.500 s user, 0.020 s system, peak 3.0 MiB (whole group: 2.000 s user, peak 512 bytes)");
}

}  // namespace
