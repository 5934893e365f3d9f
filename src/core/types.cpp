#include <string>

#include "modkit/modkit.hpp"

namespace modkit {

std::string_view to_string(BackendKind kind) {
  switch (kind) {
    case BackendKind::LocalProcess: return "LocalProcess";
    case BackendKind::K8s: return "K8s";
    case BackendKind::Static: return "Static";
    case BackendKind::Mock: return "Mock";
  }
  return "Unknown";
}

std::string_view to_string(LogLevel level) {
  switch (level) {
    case LogLevel::Trace: return "trace";
    case LogLevel::Debug: return "debug";
    case LogLevel::Info: return "info";
    case LogLevel::Warn: return "warn";
    case LogLevel::Error: return "error";
  }
  return "info";
}

std::string_view to_string(LogStream stream) {
  switch (stream) {
    case LogStream::Stdout: return "stdout";
    case LogStream::Stderr: return "stderr";
    case LogStream::Library: return "modkit";
  }
  return "modkit";
}

std::string to_string(const InstanceHandle& handle) {
  std::string text = "InstanceHandle { module: \"" + handle.module + "\", instance_id: " + handle.instance_id +
                     ", backend: " + std::string(to_string(handle.backend)) + ", pid: ";
  text += handle.pid ? std::to_string(*handle.pid) : std::string("none");
  auto since_epoch = std::chrono::duration_cast<std::chrono::nanoseconds>(handle.created_at.time_since_epoch());
  text += ", created_at: " + std::to_string(since_epoch.count()) + "ns (steady)";
  if (handle.processes) text += ", processes: " + std::to_string(*handle.processes);
  return text + " }";
}

// The one text of an ExitStatus: the backend's exit records, the Supervisor's
// notes and operator<< all say it this way.
std::string to_string(const ExitStatus& status) {
  std::string text;
  switch (status.kind) {
    case ExitStatus::Kind::Exited: text = "exited with code " + std::to_string(status.code); break;
    case ExitStatus::Kind::Signaled: text = "killed by signal " + std::to_string(status.code); break;
    case ExitStatus::Kind::Unknown: text = "exited, status unknown (reaped by someone else)"; break;
  }
  if (status.forced) text += " (forced after the grace period)";
  if (status.reason != ExitStatus::Reason::Exited) text += " [" + std::string(to_string(status.reason)) + "]";
  return text;
}

std::string_view to_string(ExitStatus::Reason reason) {
  switch (reason) {
    case ExitStatus::Reason::Exited: return "exited";
    case ExitStatus::Reason::Stopped: return "stopped";
    case ExitStatus::Reason::ReadinessTimeout: return "readiness timeout";
    case ExitStatus::Reason::NotReady: return "ended before ready";
    case ExitStatus::Reason::WatchdogTimeout: return "watchdog timeout";
    case ExitStatus::Reason::MemoryLimit: return "memory limit";
    case ExitStatus::Reason::CpuLimit: return "CPU time limit";
  }
  return "exited";
}


}  // namespace modkit
