#include <ostream>

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

std::ostream& operator<<(std::ostream& os, BackendKind kind) { return os << to_string(kind); }

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

std::ostream& operator<<(std::ostream& os, const InstanceHandle& handle) {
  os << "InstanceHandle { module: \"" << handle.module << "\", instance_id: " << handle.instance_id
     << ", backend: " << handle.backend << ", pid: ";
  if (handle.pid) {
    os << *handle.pid;
  } else {
    os << "none";
  }
  auto since_epoch = std::chrono::duration_cast<std::chrono::nanoseconds>(handle.created_at.time_since_epoch());
  os << ", created_at: " << since_epoch.count() << "ns (steady)";
  if (handle.processes) os << ", processes: " << *handle.processes;
  return os << " }";
}

std::ostream& operator<<(std::ostream& os, const ExitStatus& status) {
  if (status.kind == ExitStatus::Kind::Exited) {
    os << "exited with code " << status.code;
  } else if (status.kind == ExitStatus::Kind::Unknown) {
    os << "exited, status unknown (reaped by someone else)";
  } else {
    os << "killed by signal " << status.code;
  }
  if (status.forced) os << " (forced after the grace period)";
  if (status.reason != ExitStatus::Reason::Exited) os << " [" << to_string(status.reason) << "]";
  return os;
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
