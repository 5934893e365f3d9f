// Helpers for the Windows-only tests.
#pragma once

#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "test_support.hpp"

namespace modkit::testing::wintest {

/// True under Wine (ntdll exports wine_get_version), where some Windows
/// behaviour is missing (console control events are never delivered).
inline bool under_wine() {
  HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
  return ntdll != nullptr && GetProcAddress(ntdll, "wine_get_version") != nullptr;
}

/// How many handles this process has open: GetProcessHandleCount, or, where
/// that reports nothing (Wine 8), the system's handle table
/// (NtQuerySystemInformation(SystemHandleInformation)); nullopt if neither
/// works. (notify_test.cpp has its own copy.)
inline std::optional<unsigned long> handle_count() {
  DWORD count = 0;
  if (GetProcessHandleCount(GetCurrentProcess(), &count) && count != 0) return count;
  struct Entry {
    USHORT process;
    USHORT creator_back_trace;
    UCHAR type;
    UCHAR attributes;
    USHORT value;
    PVOID object;
    ULONG access;
  };
  struct Table {
    ULONG count;
    Entry entries[1];
  };
  using Query = LONG(NTAPI*)(ULONG, PVOID, ULONG, PULONG);
  auto query = reinterpret_cast<Query>(
      reinterpret_cast<void*>(GetProcAddress(GetModuleHandleW(L"ntdll.dll"), "NtQuerySystemInformation")));
  if (query == nullptr) return std::nullopt;
  std::vector<unsigned char> buffer(1 << 20);
  for (int attempt = 0; attempt < 6; ++attempt) {
    ULONG needed = 0;
    LONG status = query(16 /* SystemHandleInformation */, buffer.data(), static_cast<ULONG>(buffer.size()), &needed);
    if (status == static_cast<LONG>(0xC0000004L) /* STATUS_INFO_LENGTH_MISMATCH */) {
      buffer.resize(std::max<std::size_t>(buffer.size() * 2, needed + 4096));
      continue;
    }
    if (status != 0) return std::nullopt;
    const auto* table = reinterpret_cast<const Table*>(buffer.data());
    unsigned long mine = 0;
    for (ULONG k = 0; k < table->count; ++k) mine += table->entries[k].process == static_cast<USHORT>(GetCurrentProcessId());
    return mine != 0 ? std::optional<unsigned long>(mine) : std::nullopt;
  }
  return std::nullopt;
}

inline std::wstring widen(const std::string& text) {
  int size = MultiByteToWideChar(CP_UTF8, 0, text.data(), static_cast<int>(text.size()), nullptr, 0);
  std::wstring result(static_cast<std::size_t>(size), L'\0');
  MultiByteToWideChar(CP_UTF8, 0, text.data(), static_cast<int>(text.size()), result.data(), size);
  return result;
}

inline std::string narrow(const std::wstring& text) {
  int size = WideCharToMultiByte(CP_UTF8, 0, text.data(), static_cast<int>(text.size()), nullptr, 0, nullptr, nullptr);
  std::string result(static_cast<std::size_t>(size), '\0');
  WideCharToMultiByte(CP_UTF8, 0, text.data(), static_cast<int>(text.size()), result.data(), size, nullptr, nullptr);
  return result;
}

/// A fresh directory under %TEMP%, removed (with the files made through it) at the end.
class TempDir {
 public:
  TempDir() {
    wchar_t base[MAX_PATH];
    GetTempPathW(MAX_PATH, base);
    static int counter = 0;
    path_ = std::wstring(base) + L"modkit-test-" + std::to_wstring(GetCurrentProcessId()) + L"-" +
            std::to_wstring(++counter);
    CreateDirectoryW(path_.c_str(), nullptr);
  }
  ~TempDir() {
    for (auto it = made_.rbegin(); it != made_.rend(); ++it) {
      if (!DeleteFileW(it->c_str())) RemoveDirectoryW(it->c_str());
    }
    RemoveDirectoryW(path_.c_str());
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string path() const { return narrow(path_); }
  /// Path of `name` (UTF-8) inside the directory.
  std::string file(const std::string& name) const { return path() + "\\" + name; }

  /// Writes a file (bytes as given) and returns its path.
  std::string write(const std::string& name, const std::string& content) {
    std::wstring full = path_ + L"\\" + widen(name);
    HANDLE file = CreateFileW(full.c_str(), GENERIC_WRITE, 0, nullptr, CREATE_ALWAYS, FILE_ATTRIBUTE_NORMAL, nullptr);
    EXPECT_NE(file, INVALID_HANDLE_VALUE) << name;
    DWORD written = 0;
    WriteFile(file, content.data(), static_cast<DWORD>(content.size()), &written, nullptr);
    CloseHandle(file);
    made_.push_back(full);
    return narrow(full);
  }
  std::string copy(const std::string& from, const std::string& name) {
    std::wstring full = path_ + L"\\" + widen(name);
    EXPECT_TRUE(CopyFileW(widen(from).c_str(), full.c_str(), FALSE)) << name;
    made_.push_back(full);
    return narrow(full);
  }
  std::string mkdir(const std::string& name) {
    std::wstring full = path_ + L"\\" + widen(name);
    EXPECT_TRUE(CreateDirectoryW(full.c_str(), nullptr)) << name;
    made_.push_back(full);
    return narrow(full);
  }

 private:
  std::wstring path_;
  std::vector<std::wstring> made_;
};

/// Records each exit that LocalProcessOptions::on_exit reports.
class ExitRecorder {
 public:
  void record(const InstanceHandle& handle, const ExitStatus& status) {
    std::lock_guard<std::mutex> lock(mutex_);
    exits_.emplace_back(handle.instance_id, status);
    changed_.notify_all();
  }
  std::optional<ExitStatus> wait_for(const std::string& id, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
    std::unique_lock<std::mutex> lock(mutex_);
    std::optional<ExitStatus> found;
    changed_.wait_for(lock, timeout, [&] {
      for (const auto& [instance, status] : exits_) {
        if (instance == id) found = status;
      }
      return found.has_value();
    });
    return found;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::pair<std::string, ExitStatus>> exits_;
};

struct ExitRecorderHolder {
  std::shared_ptr<ExitRecorder> exits = std::make_shared<ExitRecorder>();
};

/// A Fixture (short graces, collecting sink) that also records exits.
struct WinFixture : ExitRecorderHolder, Fixture {
  explicit WinFixture(LocalProcessOptions options = Fixture::fast_options())
      : ExitRecorderHolder(), Fixture(with_recorder(std::move(options), exits)) {}
  static LocalProcessOptions with_recorder(LocalProcessOptions options, std::shared_ptr<ExitRecorder> recorder) {
    options.on_exit = [recorder](const InstanceHandle& handle, const ExitStatus& status) {
      recorder->record(handle, status);
    };
    return options;
  }
};

/// Output of a child run to its end through the backend.
struct Finished {
  std::vector<std::string> out, err, events;
  std::optional<ExitStatus> status;
  double seconds = 0;  // from spawn to drained
};

/// Spawns, waits for the exit and for the output to drain (stop_instance on
/// an exited instance returns once its readers are done).
inline Finished run_child(WinFixture& f, const OopModuleConfig& config) {
  Finished result;
  auto start = Clock::now();
  auto handle = f.backend->spawn_instance(config);
  if (!handle) {
    ADD_FAILURE() << "spawn failed: " << handle.error();
    return result;
  }
  result.status = f.exits->wait_for(handle->instance_id);
  EXPECT_TRUE(result.status.has_value()) << "no exit reported for " << *handle;
  auto stopped = f.backend->stop_instance(*handle);
  EXPECT_TRUE(stopped);
  result.seconds = seconds_since(start);
  result.out = f.sink->lines(handle->instance_id, LogStream::Stdout);
  result.err = f.sink->lines(handle->instance_id, LogStream::Stderr);
  result.events = f.sink->lines(handle->instance_id, LogStream::Library);
  return result;
}

inline std::string hex(const std::string& text) {
  static const char digits[] = "0123456789abcdef";
  std::string result;
  for (unsigned char c : text) {
    result.push_back(digits[c >> 4]);
    result.push_back(digits[c & 15]);
  }
  return result;
}

}  // namespace modkit::testing::wintest
