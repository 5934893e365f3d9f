// Config validation: one clear message per bad input (core/config_validation.hpp).
#include <gtest/gtest.h>

#include <string>

#include "core/config_validation.hpp"
#include "modkit/ostream.hpp"

namespace {

using modkit::BackendKind;
using modkit::OopModuleConfig;
using modkit::validate_config;

OopModuleConfig good() {
  OopModuleConfig config("mod", BackendKind::LocalProcess);
  config.binary = "/bin/true";
  return config;
}

std::string error_of(const OopModuleConfig& config) {
  auto result = validate_config(config);
  if (result) return "<valid>";
  EXPECT_EQ(result.error().code, std::make_error_code(std::errc::invalid_argument));
  return result.error().message;
}

using namespace std::string_literals;

TEST(ConfigValidation, GoodConfigBecomesARequest) {
  OopModuleConfig config = good();
  config.args = {"a", "b"};
  config.env = {{"K", "v"}, {"EMPTY_VALUE", ""}};
  config.working_directory = "/tmp";
  config.clear_environment = true;
  config.graceful_stop = modkit::GracefulStop::CloseStdin;
  auto request = validate_config(config);
  ASSERT_TRUE(request) << request.error();
  EXPECT_EQ(request->module, "mod");
  EXPECT_EQ(request->binary, "/bin/true");
  EXPECT_EQ(request->args, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(request->env.size(), 2u);
  EXPECT_EQ(request->working_directory, std::optional<std::string>("/tmp"));
  EXPECT_TRUE(request->clear_environment);
  EXPECT_EQ(request->graceful_stop, modkit::GracefulStop::CloseStdin);
}

TEST(ConfigValidation, WrongBackendUsesTheSeedMessage) {
  for (auto kind : {BackendKind::K8s, BackendKind::Static, BackendKind::Mock}) {
    OopModuleConfig config = good();
    config.backend = kind;
    std::string message = error_of(config);
    EXPECT_NE(message.find("can only spawn LocalProcess instances"), std::string::npos) << message;
    EXPECT_NE(message.find(std::string(modkit::to_string(kind))), std::string::npos) << message;
  }
}

TEST(ConfigValidation, EmptyName) {
  OopModuleConfig config = good();
  config.name = "";
  EXPECT_EQ(error_of(config), "module name must not be empty");
}

TEST(ConfigValidation, NulInName) {
  OopModuleConfig config = good();
  config.name = "a\0b"s;
  EXPECT_EQ(error_of(config), "module name contains a NUL byte");
}

TEST(ConfigValidation, MissingOrEmptyBinaryUsesTheSeedMessage) {
  OopModuleConfig config("mod", BackendKind::LocalProcess);
  EXPECT_EQ(error_of(config), "module 'mod': executable_path must be set for LocalProcess backend");
  config.binary = "";
  EXPECT_EQ(error_of(config), "module 'mod': executable_path must be set for LocalProcess backend");
}

TEST(ConfigValidation, NulInBinary) {
  OopModuleConfig config = good();
  config.binary = "/bin/tr\0ue"s;
  EXPECT_EQ(error_of(config), "module 'mod': binary path contains a NUL byte");
}

TEST(ConfigValidation, NulInArgumentNamesWhichOne) {
  OopModuleConfig config = good();
  config.args = {"fine", "bad\0arg"s};
  EXPECT_EQ(error_of(config), "module 'mod': argument 2 contains a NUL byte");
}

TEST(ConfigValidation, EmptyEnvironmentKey) {
  OopModuleConfig config = good();
  config.env[""] = "x";
  EXPECT_EQ(error_of(config), "module 'mod': environment variable with an empty name");
}

TEST(ConfigValidation, EnvironmentKeyWithEquals) {
  OopModuleConfig config = good();
  config.env["A=B"] = "x";
  EXPECT_EQ(error_of(config), "module 'mod': environment variable name 'A=B' contains '='");
}

TEST(ConfigValidation, NulInEnvironmentKeyOrValue) {
  OopModuleConfig config = good();
  config.env["K\0EY"s] = "x";
  EXPECT_EQ(error_of(config), "module 'mod': environment variable name contains a NUL byte");
  config.env.clear();
  config.env["KEY"] = "va\0lue"s;
  EXPECT_EQ(error_of(config), "module 'mod': value of environment variable 'KEY' contains a NUL byte");
}

TEST(ConfigValidation, WorkingDirectoryEmptyOrWithNul) {
  OopModuleConfig config = good();
  config.working_directory = "";
  EXPECT_EQ(error_of(config), "module 'mod': working directory is an empty path");
  config.working_directory = "/tm\0p"s;
  EXPECT_EQ(error_of(config), "module 'mod': working directory contains a NUL byte");
}

}  // namespace

TEST(ConfigValidation, LimitsNoModuleCouldRunUnderAreRefusedNamingTheField) {
  struct Case {
    void (*set)(OopModuleConfig&);
    const char* field;
  };
  const Case cases[] = {
      {[](OopModuleConfig& c) { c.limits.memory_max = 4096; }, "limits.memory_max"},
      {[](OopModuleConfig& c) { c.limits.memory_high = 0; }, "limits.memory_high"},
      {[](OopModuleConfig& c) { c.limits.address_space = 1000; }, "limits.address_space"},
      {[](OopModuleConfig& c) { c.limits.address_space = 8ull << 20; }, "limits.address_space"},
      {[](OopModuleConfig& c) { c.limits.data_size = 1ull << 20; }, "limits.data_size"},
      {[](OopModuleConfig& c) { c.limits.data_size = ~0ull; }, "limits.data_size"},
      {[](OopModuleConfig& c) { c.limits.file_size = ~0ull; }, "limits.file_size"},
      {[](OopModuleConfig& c) { c.limits.cpu_percent = 0; }, "limits.cpu_percent"},
      {[](OopModuleConfig& c) { c.limits.cpu_percent = 100001; }, "limits.cpu_percent"},
      {[](OopModuleConfig& c) { c.limits.max_processes = 0; }, "limits.max_processes"},
      {[](OopModuleConfig& c) { c.limits.max_processes = 4194305; }, "limits.max_processes"},
      {[](OopModuleConfig& c) { c.limits.user_processes = 0; }, "limits.user_processes"},
      {[](OopModuleConfig& c) { c.limits.cpu_time = std::chrono::seconds(0); }, "limits.cpu_time"},
      {[](OopModuleConfig& c) { c.limits.cpu_time = std::chrono::seconds(-5); }, "limits.cpu_time"},
      {[](OopModuleConfig& c) { c.limits.open_files = 2; }, "limits.open_files"},
      {[](OopModuleConfig& c) { c.limits.open_files = 7; }, "limits.open_files"},
      {[](OopModuleConfig& c) { c.limits.enforcement = static_cast<modkit::ResourceLimits::Enforcement>(7); },
       "limits.enforcement"},
      {[](OopModuleConfig& c) { c.privileges.user = 1000; }, "privileges.group"},
      {[](OopModuleConfig& c) {
         c.privileges.user = 0xFFFFFFFFu;
         c.privileges.group = 1;
       },
       "privileges.user"},
      {[](OopModuleConfig& c) { c.privileges.group = 0xFFFFFFFFu; }, "privileges.group"},
      {[](OopModuleConfig& c) { c.privileges.supplementary_groups = std::vector<std::uint32_t>{1, 0xFFFFFFFFu}; },
       "privileges.supplementary_groups"},
      {[](OopModuleConfig& c) { c.privileges.supplementary_groups = std::vector<std::uint32_t>(65537, 5); },
       "privileges.supplementary_groups"},
      {[](OopModuleConfig& c) { c.privileges.umask = 01000; }, "privileges.umask"},
  };
  for (const Case& bad : cases) {
    OopModuleConfig config = good();
    bad.set(config);
    std::string message = error_of(config);
    EXPECT_NE(message.find(bad.field), std::string::npos) << bad.field << ": " << message;
    EXPECT_EQ(message.rfind("module 'mod': ", 0), 0u) << message;
  }
}

TEST(ConfigValidation, SensibleLimitsAndPrivilegesReachTheRequest) {
  OopModuleConfig config = good();
  config.limits.memory_max = 64ull << 20;
  config.limits.cpu_time = std::chrono::seconds(3);
  config.limits.open_files = 8;
  config.limits.address_space = 16ull << 20;
  config.limits.core_size = 0;
  config.privileges.user = 1000;
  config.privileges.group = 1000;
  config.privileges.umask = 0;
  config.privileges.die_with_host = true;
  auto request = validate_config(config);
  ASSERT_TRUE(request) << request.error();
  EXPECT_EQ(request->limits.memory_max, config.limits.memory_max);
  EXPECT_EQ(request->limits.cpu_time, config.limits.cpu_time);
  EXPECT_EQ(request->limits.core_size, std::optional<std::uint64_t>(0));
  EXPECT_EQ(request->privileges.user, config.privileges.user);
  EXPECT_TRUE(request->privileges.die_with_host);
}
