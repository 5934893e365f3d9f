// posix::build_environment and find_in_environment.
#include <gtest/gtest.h>

#include "posix/environment.hpp"

namespace {

using modkit::posix::build_environment;
using modkit::posix::find_in_environment;
using Overrides = std::vector<std::pair<std::string, std::string>>;

const char* const kHost[] = {"PATH=/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8", nullptr};

TEST(BuildEnvironment, InheritsTheHost) {
  EXPECT_EQ(build_environment(kHost, {}, false),
            (std::vector<std::string>{"PATH=/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8"}));
}

TEST(BuildEnvironment, OverridesReplaceHostEntriesAndAddNewOnes) {
  auto env = build_environment(kHost, Overrides{{"HOME", "/home/mod"}, {"NEW", "1"}}, false);
  EXPECT_EQ(env, (std::vector<std::string>{"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/home/mod", "NEW=1"}));
}

TEST(BuildEnvironment, OverrideMatchesWholeKeysOnly) {
  const char* const host[] = {"PATHX=1", "PAT=2", nullptr};
  auto env = build_environment(host, Overrides{{"PATH", "/x"}}, false);
  EXPECT_EQ(env, (std::vector<std::string>{"PATHX=1", "PAT=2", "PATH=/x"}));
}

TEST(BuildEnvironment, ClearStartsFromNothing) {
  auto env = build_environment(kHost, Overrides{{"ONLY", "this"}}, true);
  EXPECT_EQ(env, (std::vector<std::string>{"ONLY=this"}));
  EXPECT_TRUE(build_environment(kHost, {}, true).empty());
}

TEST(BuildEnvironment, MalformedHostEntriesAreDropped) {
  const char* const host[] = {"NOEQUALS", "=startswithequals", "GOOD=1", "EMPTY=", nullptr};
  EXPECT_EQ(build_environment(host, {}, false), (std::vector<std::string>{"GOOD=1", "EMPTY="}));
}

TEST(BuildEnvironment, NullHostIsEmpty) {
  EXPECT_EQ(build_environment(nullptr, Overrides{{"A", "b"}}, false), (std::vector<std::string>{"A=b"}));
}

TEST(BuildEnvironment, ValueMayContainEquals) {
  auto env = build_environment(nullptr, Overrides{{"URL", "a=b=c"}}, false);
  EXPECT_EQ(env, (std::vector<std::string>{"URL=a=b=c"}));
  EXPECT_STREQ(find_in_environment(env, "URL"), "a=b=c");
}

TEST(FindInEnvironment, FindsByExactKey) {
  std::vector<std::string> env{"PATHX=1", "PATH=/bin", "EMPTY="};
  EXPECT_STREQ(find_in_environment(env, "PATH"), "/bin");
  EXPECT_STREQ(find_in_environment(env, "EMPTY"), "");
  EXPECT_EQ(find_in_environment(env, "PAT"), nullptr);
  EXPECT_EQ(find_in_environment(env, "MISSING"), nullptr);
}

}  // namespace
