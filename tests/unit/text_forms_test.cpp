// The to_string forms of modkit.hpp (the words hosts match) and the opt-in
// operator<< of modkit/ostream.hpp, which must print the same.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <sstream>
#include <string>
#include <system_error>

#include "modkit/modkit.hpp"
#include "modkit/ostream.hpp"

namespace {

using modkit::BackendKind;
using modkit::ExitStatus;
using modkit::InstanceHandle;

ExitStatus status_of(ExitStatus::Kind kind, int code, bool forced = false,
                     ExitStatus::Reason reason = ExitStatus::Reason::Exited) {
  ExitStatus status;
  status.kind = kind;
  status.code = code;
  status.forced = forced;
  status.reason = reason;
  return status;
}

template <typename T>
std::string streamed(const T& value) {
  std::ostringstream text;
  text << value;
  return text.str();
}

TEST(TextForms, ExitStatusInTheWordsOfTheExitRecords) {
  EXPECT_EQ(to_string(status_of(ExitStatus::Kind::Exited, 3)), "exited with code 3");
  EXPECT_EQ(to_string(status_of(ExitStatus::Kind::Exited, 0)), "exited with code 0");
  EXPECT_EQ(to_string(status_of(ExitStatus::Kind::Signaled, 9)), "killed by signal 9");
  EXPECT_EQ(to_string(status_of(ExitStatus::Kind::Unknown, -1)), "exited, status unknown (reaped by someone else)");
  EXPECT_EQ(to_string(status_of(ExitStatus::Kind::Signaled, 9, true)),
            "killed by signal 9 (forced after the grace period)");
  EXPECT_EQ(to_string(status_of(ExitStatus::Kind::Signaled, 15, false, ExitStatus::Reason::ReadinessTimeout)),
            "killed by signal 15 [readiness timeout]");
  EXPECT_EQ(to_string(status_of(ExitStatus::Kind::Signaled, 9, true, ExitStatus::Reason::WatchdogTimeout)),
            "killed by signal 9 (forced after the grace period) [watchdog timeout]");
  EXPECT_EQ(to_string(status_of(ExitStatus::Kind::Exited, 1, false, ExitStatus::Reason::NotReady)),
            "exited with code 1 [ended before ready]");
  // The usage has a record of its own; it never changes the status's words.
  ExitStatus with_usage = status_of(ExitStatus::Kind::Exited, 2);
  with_usage.usage = modkit::ResourceUsage{};
  EXPECT_EQ(to_string(with_usage), "exited with code 2");
}

TEST(TextForms, EveryReasonHasWords) {
  EXPECT_EQ(to_string(ExitStatus::Reason::Exited), "exited");
  EXPECT_EQ(to_string(ExitStatus::Reason::Stopped), "stopped");
  EXPECT_EQ(to_string(ExitStatus::Reason::ReadinessTimeout), "readiness timeout");
  EXPECT_EQ(to_string(ExitStatus::Reason::NotReady), "ended before ready");
  EXPECT_EQ(to_string(ExitStatus::Reason::WatchdogTimeout), "watchdog timeout");
  EXPECT_EQ(to_string(ExitStatus::Reason::MemoryLimit), "memory limit");
  EXPECT_EQ(to_string(ExitStatus::Reason::CpuLimit), "CPU time limit");
}

TEST(TextForms, BackendKind) {
  EXPECT_EQ(to_string(BackendKind::LocalProcess), "LocalProcess");
  EXPECT_EQ(to_string(BackendKind::K8s), "K8s");
  EXPECT_EQ(to_string(BackendKind::Static), "Static");
  EXPECT_EQ(to_string(BackendKind::Mock), "Mock");
}

TEST(TextForms, ErrorIsMessageThenCodeText) {
  modkit::Error error = modkit::make_error(std::errc::permission_denied, "cannot open '/x'");
  EXPECT_EQ(to_string(error),
            "cannot open '/x' (" + std::make_error_code(std::errc::permission_denied).message() + ")");
}

TEST(TextForms, InstanceHandleNamesEveryField) {
  InstanceHandle handle;
  handle.module = "greeter";
  handle.instance_id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
  handle.created_at = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(1234567));
  EXPECT_EQ(to_string(handle),
            "InstanceHandle { module: \"greeter\", instance_id: 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b, backend: "
            "LocalProcess, pid: none, created_at: 1234567ns (steady) }");
  handle.backend = BackendKind::Mock;
  handle.pid = 4242;
  handle.processes = 3;
  EXPECT_EQ(to_string(handle),
            "InstanceHandle { module: \"greeter\", instance_id: 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b, backend: "
            "Mock, pid: 4242, created_at: 1234567ns (steady), processes: 3 }");
}

TEST(TextForms, OstreamHeaderPrintsTheSameWords) {
  ExitStatus status = status_of(ExitStatus::Kind::Signaled, 9, true, ExitStatus::Reason::Stopped);
  EXPECT_EQ(streamed(status), to_string(status));
  EXPECT_EQ(streamed(status), "killed by signal 9 (forced after the grace period) [stopped]");
  EXPECT_EQ(streamed(BackendKind::K8s), "K8s");
  modkit::Error error = modkit::make_error(std::errc::invalid_argument, "bad");
  EXPECT_EQ(streamed(error), to_string(error));
  InstanceHandle handle;
  handle.module = "m";
  handle.pid = 7;
  EXPECT_EQ(streamed(handle), to_string(handle));
  // Chains like any operator<<.
  std::ostringstream text;
  text << BackendKind::Mock << " / " << status_of(ExitStatus::Kind::Exited, 3);
  EXPECT_EQ(text.str(), "Mock / exited with code 3");
}

}  // namespace
