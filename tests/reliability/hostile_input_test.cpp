// Hostile input and secrets: arguments full of shell metacharacters arrive
// literally, a host secret never reaches a child started with an empty
// environment, and (POSIX) the child inherits only descriptors 0, 1 and 2.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "reliability_support.hpp"
#include "test_support.hpp"

#ifndef _WIN32
#include <fcntl.h>
#include <unistd.h>
#endif

using namespace modkit;
using namespace modkit::testing;

namespace {

std::string hex(const std::string& text) {
  static const char digits[] = "0123456789abcdef";
  std::string result;
  for (unsigned char c : text) {
    result.push_back(digits[c >> 4]);
    result.push_back(digits[c & 15]);
  }
  return result;
}

// Runs the test child with `script` and returns its stdout once it exited.
std::vector<std::string> run_to_end(Fixture& f, OopModuleConfig config) {
  auto handle = f.backend->spawn_instance(config);
  if (!handle) {
    ADD_FAILURE() << handle.error();
    return {};
  }
  EXPECT_TRUE(f.sink->wait_for([&](const StoredRecord& r) {
    return r.instance_id == handle->instance_id && r.stream == LogStream::Library &&
           r.line.rfind("exited with code", 0) == 0;
  }, std::chrono::seconds(30)));
  EXPECT_TRUE(f.backend->stop_instance(*handle));  // drained when it returns
  return f.sink->lines(handle->instance_id, LogStream::Stdout);
}

void set_host_variable(const char* name, const char* value) {
#ifdef _WIN32
  _putenv_s(name, value);
#else
  setenv(name, value, 1);
#endif
}

void unset_host_variable(const char* name) {
#ifdef _WIN32
  _putenv_s(name, "");
#else
  unsetenv(name);
#endif
}

}  // namespace

TEST(HostileInput, ShellMetacharactersArriveLiterally) {
  const std::vector<std::string> nasty = {
      "; rm -rf / #",
      "$(touch /tmp/modkit-pwned)",
      "`id`",
      "a | b && c || d",
      "> /tmp/modkit-out 2>&1 <in",
      "*",
      "?[a-z]{1,2}~",
      "$HOME ${PATH} $$ $? $!",
      "'single' \"double\" \\\"escaped\\\"",
      "\\",
      "\\\\",
      "trailing backslash \\",
      "\"",
      "\"\"",
      "",
      " ",
      "\t",
      "line\nbreak",
      "%PATH% ^& ^| !var!",
      "& calc.exe",
      "-c",
      "--help",
#ifndef _WIN32  // a Windows child's narrow argv is in the ANSI code page, not UTF-8
      "\xC3\xA9t\xC3\xA9 \xE2\x9C\x93 \xF0\x9F\x98\x80",
#endif
      std::string(2000, '"'),
      std::string(1000, '\\') + "\"",
  };
  Fixture f;
  std::vector<std::string> script = {"argv"};
  script.insert(script.end(), nasty.begin(), nasty.end());
  auto lines = run_to_end(f, child_config("argv", script));
  ASSERT_EQ(lines.size(), nasty.size());
  for (std::size_t i = 0; i < nasty.size(); ++i) EXPECT_EQ(lines[i], "arg " + hex(nasty[i])) << "argument " << i;
}

TEST(HostileInput, ClearedEnvironmentKeepsHostSecrets) {
  set_host_variable("MODKIT_TEST_SECRET", "hunter2");
  Fixture f;
  auto config = child_config("sealed", {"env", "MODKIT_TEST_SECRET", "env", "ALLOWED", "exit", "0"});
  config.clear_environment = true;
  config.env["ALLOWED"] = "yes";
  auto sealed = run_to_end(f, config);
  // Control: without the option the variable is inherited, so the check above means something.
  auto leaky = run_to_end(f, child_config("leaky", {"env", "MODKIT_TEST_SECRET", "exit", "0"}));
  unset_host_variable("MODKIT_TEST_SECRET");
  EXPECT_EQ(sealed, (std::vector<std::string>{"env MODKIT_TEST_SECRET unset", "env ALLOWED=yes"}));
  EXPECT_EQ(leaky, std::vector<std::string>{"env MODKIT_TEST_SECRET=hunter2"});
}

#ifndef _WIN32
TEST(HostileInput, ClearedEnvironmentHasOnlyTheGivenVariables) {
  set_host_variable("MODKIT_TEST_SECRET", "hunter2");
  Fixture f;
  auto config = child_config("sealed", {"env-count", "exit", "0"});
  config.clear_environment = true;
  config.env["ONLY"] = "1";
  auto lines = run_to_end(f, config);
  unset_host_variable("MODKIT_TEST_SECRET");
  EXPECT_EQ(lines, std::vector<std::string>{"env-count 1"});
}

// 500 descriptors open in the host without close-on-exec (files, pipes, a
// socket pair, and a few at high numbers): the child sees only 0, 1 and 2.
TEST(HostileInput, ChildInheritsOnlyStandardDescriptors) {
  std::vector<int> opened;
  for (int i = 0; i < 400; ++i) opened.push_back(open("/dev/null", O_RDONLY));  // no O_CLOEXEC
  for (int i = 0; i < 40; ++i) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    opened.push_back(fds[0]);
    opened.push_back(fds[1]);
  }
  for (int i = 0; i < 20; ++i) opened.push_back(fcntl(opened[0], F_DUPFD, 900 + i * 7));
  ASSERT_EQ(opened.size(), 500u);
  for (int fd : opened) ASSERT_GE(fd, 0);
  Fixture f;
  auto lines = run_to_end(f, child_config("hygiene", {"fds", "exit", "0"}));
  // And once more with a CloseStdin child (its stdin is a pipe).
  auto config = child_config("hygiene", {"fds", "exit", "0"});
  config.graceful_stop = GracefulStop::CloseStdin;
  auto with_stdin_pipe = run_to_end(f, config);
  for (int fd : opened) close(fd);
  EXPECT_EQ(lines, std::vector<std::string>{"fds 0 1 2"});
  EXPECT_EQ(with_stdin_pipe, std::vector<std::string>{"fds 0 1 2"});
}
#endif
