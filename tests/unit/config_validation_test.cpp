// Config validation: one clear message per bad input (core/config_validation.hpp).
#include <gtest/gtest.h>

#include <string>

#include "core/config_validation.hpp"

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
