// Bad configs through the backend: a clear error and nothing started.
#include <gtest/gtest.h>

#include <string>

#include "behaviour_support.hpp"

using namespace modkit;
using namespace modkit::testing;
using namespace modkit::testing::behaviour;
using namespace std::string_literals;

namespace {

void expect_rejected(Fixture& f, const OopModuleConfig& config, std::errc code, const std::string& fragment) {
  auto result = f.backend->spawn_instance(config);
  ASSERT_FALSE(result) << "spawned " << *result;
  EXPECT_EQ(result.error().code, std::make_error_code(code)) << result.error();
  EXPECT_NE(result.error().message.find(fragment), std::string::npos) << result.error().message;
  if (!config.name.empty()) {
    EXPECT_TRUE(f.backend->list_instances(config.name)->empty());
  }
  // Nothing was started, so nothing was reported either.
  for (const auto& record : f.sink->records()) EXPECT_NE(record.line.rfind("spawned", 0), 0u) << record.line;
}

TEST(ConfigErrors, EmptyName) {
  Fixture f;
  expect_rejected(f, child_config("", {"say", "x"}), std::errc::invalid_argument, "module name must not be empty");
}

TEST(ConfigErrors, NulByteInArgument) {
  Fixture f;
  expect_rejected(f, child_config("nul", {"say", "a\0b"s}), std::errc::invalid_argument,
                  "argument 2 contains a NUL byte");
}

TEST(ConfigErrors, NulByteInEnvironment) {
  Fixture f;
  OopModuleConfig config = child_config("nul", {"say", "x"});
  config.env["KEY"] = "va\0lue"s;
  expect_rejected(f, config, std::errc::invalid_argument, "'KEY' contains a NUL byte");
}

TEST(ConfigErrors, EmptyEnvironmentKey) {
  Fixture f;
  OopModuleConfig config = child_config("envkey", {"say", "x"});
  config.env[""] = "value";
  expect_rejected(f, config, std::errc::invalid_argument, "environment variable with an empty name");
}

TEST(ConfigErrors, EnvironmentKeyWithEquals) {
  Fixture f;
  OopModuleConfig config = child_config("envkey", {"say", "x"});
  config.env["A=B"] = "value";
  expect_rejected(f, config, std::errc::invalid_argument, "'A=B' contains '='");
}

TEST(ConfigErrors, WrongBackend) {
  Fixture f;
  OopModuleConfig config = child_config("kind", {"say", "x"});
  config.backend = BackendKind::Mock;
  expect_rejected(f, config, std::errc::invalid_argument, "can only spawn LocalProcess instances");
}

TEST(ConfigErrors, SpawnAfterCancelIsRefused) {
  Fixture f;
  f.token.cancel();
  expect_rejected(f, child_config("late", {"sleep", "10"}), std::errc::operation_canceled, "late");
  f.backend->wait_for_shutdown();
  expect_rejected(f, child_config("later", {"sleep", "10"}), std::errc::operation_canceled, "cancelled");
}

TEST(ConfigErrors, SpawnAfterCancelOfACopyOfTheToken) {
  Fixture f;
  CancellationToken copy = f.token;
  copy.cancel();
  expect_rejected(f, child_config("late", {"sleep", "10"}), std::errc::operation_canceled, "shutting down");
}

}  // namespace
