// Win32 process creation.
//
// Each child is created with CreateProcessW from UTF-16 strings, suspended,
// with STARTUPINFOEXW and PROC_THREAD_ATTRIBUTE_HANDLE_LIST so it inherits
// exactly its three standard handles, and with Readiness::Mode::Notify the
// write end of its notification pipe (even while other threads spawn), in a
// new console process group; it is then put in its own Job object
// (JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE: stopping kills the whole tree, and if
// the host dies its children die with it) and only then resumed, so no
// descendant can escape the job. ResourceLimits become limits of that Job
// (win32/job_limits.hpp), set before it is resumed.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "platform/process.hpp"
#include "platform/system.hpp"
#include "win32/command_line.hpp"
#include "win32/environment_block.hpp"
#include "win32/job_limits.hpp"
#include "win32/pipe_reader.hpp"
#include "win32/process_handle.hpp"
#include "win32/windows_util.hpp"

namespace modkit::platform {
namespace {

using win32::UniqueHandle;

// --- Errors ------------------------------------------------------------------

Error spawn_error(const SpawnRequest& request, const std::string& what, DWORD error, const std::string& path = {}) {
  // Messages are fetched with FORMAT_MESSAGE_IGNORE_INSERTS, so error 193
  // reads "%1 is not a valid Win32 application": the path goes in its place.
  std::string text = win32::system_message(error);
  for (std::size_t at; (at = text.find("%1")) != std::string::npos;) text.replace(at, 2, path.empty() ? "the program" : "'" + path + "'");
  return Error{win32::win32_error(error), "module '" + request.module + "': " + what + ": " + text};
}

Error invalid_text(const SpawnRequest& request, const std::string& what) {
  return make_error(std::errc::invalid_argument, "module '" + request.module + "': " + what + " is not valid UTF-8");
}

// --- Strings -----------------------------------------------------------------

std::wstring to_wstring(std::u16string_view text) { return std::wstring(text.begin(), text.end()); }

// Windows' own order for variable names: ordinal, both sides upper-cased.
int compare_names_windows(std::u16string_view a, std::u16string_view b) {
  if (a.empty() || b.empty()) return win32::compare_names_ascii(a, b);
  int result = CompareStringOrdinal(reinterpret_cast<const wchar_t*>(a.data()), static_cast<int>(a.size()),
                                    reinterpret_cast<const wchar_t*>(b.data()), static_cast<int>(b.size()), TRUE);
  if (result == 0) return win32::compare_names_ascii(a, b);
  return result - CSTR_EQUAL;
}

// The readiness protocol's variables (Readiness in modkit.hpp). In the host's
// environment they describe the host's own notification pipe (a host that is
// itself a module): never passed on. Only modkit names a child's pipe: a child
// gets MODKIT_NOTIFY_FD only for its own, and MODKIT_WATCHDOG_MS only from the
// request (the core sets it) and only with a pipe to ping on.
constexpr std::u16string_view kNotifyVariable = u"MODKIT_NOTIFY_FD";
constexpr std::u16string_view kWatchdogVariable = u"MODKIT_WATCHDOG_MS";
// GracefulStop::Signal's named event (make_stop_event): likewise only ever
// the child's own, never the host's passed on.
constexpr std::u16string_view kStopEventVariable = u"MODKIT_STOP_EVENT";

std::vector<std::u16string> host_environment() {
  wchar_t* block = GetEnvironmentStringsW();
  auto entries = win32::split_environment_block(reinterpret_cast<const char16_t*>(block));
  if (block != nullptr) FreeEnvironmentStringsW(block);
  entries.erase(std::remove_if(entries.begin(), entries.end(),
                               [](const std::u16string& entry) {
                                 std::u16string_view name = win32::entry_name(entry);
                                 return compare_names_windows(name, kNotifyVariable) == 0 ||
                                        compare_names_windows(name, kWatchdogVariable) == 0 ||
                                        compare_names_windows(name, kStopEventVariable) == 0;
                               }),
                entries.end());
  return entries;
}

std::optional<std::wstring> host_variable(const wchar_t* name) {
  DWORD size = GetEnvironmentVariableW(name, nullptr, 0);
  if (size == 0) return std::nullopt;
  std::wstring value(size, L'\0');
  DWORD length = GetEnvironmentVariableW(name, value.data(), size);
  if (length == 0 || length >= size) return std::nullopt;
  value.resize(length);
  return value;
}

// --- Files ---------------------------------------------------------------------

// The full path of `path` (GetFullPathNameW), or `path` if that fails.
std::wstring full_path(const std::wstring& path) {
  DWORD size = GetFullPathNameW(path.c_str(), 0, nullptr, nullptr);
  if (size == 0) return path;
  std::wstring full(size, L'\0');
  DWORD length = GetFullPathNameW(path.c_str(), size, full.data(), nullptr);
  if (length == 0 || length >= size) return path;
  full.resize(length);
  return full;
}

// The form of `path` that file functions and CreateProcessW's application name
// accept beyond MAX_PATH: the full path with the \\?\ prefix (\\?\UNC\ for a
// share), which lifts the limit (Microsoft, "Naming Files, Paths, and
// Namespaces": Maximum Path Length Limitation). Rust's std passes such a
// verbatim application name too. Shorter paths are left as they are.
std::wstring long_path_form(const std::wstring& path) {
  if (path.size() < MAX_PATH || path.rfind(L"\\\\?\\", 0) == 0 || path.rfind(L"\\\\.\\", 0) == 0) return path;
  std::wstring full = full_path(path);
  if (full.rfind(L"\\\\", 0) == 0) return L"\\\\?\\UNC\\" + full.substr(2);
  return L"\\\\?\\" + full;
}

DWORD file_attributes(const std::wstring& path) { return GetFileAttributesW(long_path_form(path).c_str()); }

bool is_file(const std::wstring& path) {
  DWORD attributes = file_attributes(path);
  return attributes != INVALID_FILE_ATTRIBUTES && (attributes & FILE_ATTRIBUTE_DIRECTORY) == 0;
}

bool has_directory(std::wstring_view path) { return path.find_first_of(L"/\\:") != std::wstring_view::npos; }

bool has_extension(std::wstring_view path) {
  std::size_t last_separator = path.find_last_of(L"/\\:");
  std::size_t dot = path.find_last_of(L'.');
  return dot != std::wstring_view::npos && (last_separator == std::wstring_view::npos || dot > last_separator);
}

std::vector<std::wstring> split_list(std::wstring_view list) {
  std::vector<std::wstring> parts;
  for (;;) {
    std::size_t semicolon = list.find(L';');
    std::wstring_view part = list.substr(0, semicolon);
    if (part.size() >= 2 && part.front() == L'"' && part.back() == L'"') part = part.substr(1, part.size() - 2);
    if (!part.empty()) parts.emplace_back(part);
    if (semicolon == std::wstring_view::npos) break;
    list.remove_prefix(semicolon + 1);
  }
  return parts;
}

// Of PATHEXT's extensions, the ones CreateProcessW can start (.COM, .EXE)
// and batch files (.BAT, .CMD: found so that the batch refusal applies). Real
// PATHEXT also lists .VBS, .JS, .WSF, .MSC and often .PY: a d1\tool.js ahead
// of d2\tool.exe on PATH must not end the search with "Bad EXE format".
// Rust's std narrows its search the same way.
std::vector<std::wstring> runnable_extensions(const std::vector<std::wstring>& listed) {
  std::vector<std::wstring> runnable;
  for (const auto& extension : listed) {
    std::wstring upper;
    for (wchar_t c : extension) upper += (c >= L'a' && c <= L'z') ? static_cast<wchar_t>(c - L'a' + L'A') : c;
    if (upper == L".COM" || upper == L".EXE" || upper == L".BAT" || upper == L".CMD") runnable.push_back(extension);
  }
  if (runnable.empty()) runnable = {L".COM", L".EXE", L".BAT", L".CMD"};
  return runnable;
}

// "C:\x", "C:/x", "\\server\share", "\\?\C:\x": a PATH entry that does not
// depend on the current directory. ".", "bin" or "\bin" (the current drive)
// would bring back the current-directory hijack the search otherwise avoids.
bool is_absolute(std::wstring_view path) {
  if (path.size() >= 3 && path[1] == L':' && (path[2] == L'\\' || path[2] == L'/')) return true;
  return path.size() >= 2 && (path[0] == L'\\' || path[0] == L'/') && (path[1] == L'\\' || path[1] == L'/');
}

// The file `base` names: itself if it has an extension, else with each
// PATHEXT extension in turn (then itself, for a path with a directory).
std::optional<std::wstring> find_candidate(const std::wstring& base, const std::vector<std::wstring>& extensions,
                                           bool allow_bare) {
  if (has_extension(base) && is_file(base)) return base;
  for (const auto& extension : extensions) {
    std::wstring candidate = base + extension;
    if (is_file(candidate)) return candidate;
  }
  if (allow_bare && !has_extension(base) && is_file(base)) return base;
  return std::nullopt;
}

// A name without a directory is looked up on the PATH the child will have
// (else the host's), directory by directory, trying the PATHEXT extensions.
// Unlike CreateProcess's own search, neither the host's directory nor the
// current directory is searched: what runs is what PATH says.
Result<std::wstring> resolve_binary(const SpawnRequest& request, const std::wstring& binary,
                                    const std::vector<std::u16string>& environment) {
  std::optional<std::wstring> pathext;
  if (auto value = win32::find_environment_value(environment, u"PATHEXT", compare_names_windows)) {
    pathext = to_wstring(*value);
  } else {
    pathext = host_variable(L"PATHEXT");
  }
  std::vector<std::wstring> extensions = runnable_extensions(split_list(pathext ? *pathext : L".COM;.EXE;.BAT;.CMD"));

  if (has_directory(binary)) {
    // A relative path is relative to the working directory the child gets,
    // as on POSIX (chdir, then execve), not to the host's.
    std::wstring located = binary;
    if (!is_absolute(binary) && binary[0] != L'\\' && binary[0] != L'/' && request.working_directory) {
      if (auto directory = win32::widen(*request.working_directory)) {
        located = *directory;
        if (located.back() != L'\\' && located.back() != L'/') located += L'\\';
        located += binary;
      }
    }
    if (auto found = find_candidate(located, extensions, true)) return *found;
    return located;  // CreateProcessW reports what is wrong with it
  }
  std::optional<std::wstring> search;
  if (auto value = win32::find_environment_value(environment, u"PATH", compare_names_windows)) {
    search = to_wstring(*value);
  } else {
    search = host_variable(L"PATH");
  }
  for (const auto& directory : split_list(search ? *search : L"")) {
    if (!is_absolute(directory)) continue;
    std::wstring base = directory;
    if (base.back() != L'\\' && base.back() != L'/') base += L'\\';
    base += binary;
    if (auto found = find_candidate(base, extensions, false)) return *found;
  }
  return Error{std::make_error_code(std::errc::no_such_file_or_directory),
               "module '" + request.module + "': '" + request.binary + "' not found on PATH (" +
                   win32::narrow(search ? *search : L"") + ")"};
}

Result<std::optional<std::wstring>> check_working_directory(const SpawnRequest& request) {
  if (!request.working_directory) return std::optional<std::wstring>();
  auto wide = win32::widen(*request.working_directory);
  if (!wide) return invalid_text(request, "working directory");
  DWORD attributes = file_attributes(*wide);
  if (attributes == INVALID_FILE_ATTRIBUTES) {
    return spawn_error(request, "working directory '" + *request.working_directory + "' is not usable", GetLastError());
  }
  if ((attributes & FILE_ATTRIBUTE_DIRECTORY) == 0) {
    return spawn_error(request, "working directory '" + *request.working_directory + "' is not a directory",
                       ERROR_DIRECTORY);
  }
  // It exists, but a child cannot start in it if it is too long: "Setting a
  // current directory longer than MAX_PATH causes CreateProcessW to fail", and
  // with the trailing backslash Windows adds it may have MAX_PATH - 2
  // characters (Microsoft, SetCurrentDirectory). Said here, with the limit,
  // rather than as CreateProcessW's bare "invalid name".
  std::wstring full = full_path(*wide);
  if (full.rfind(L"\\\\?\\UNC\\", 0) == 0) {
    full = L"\\" + full.substr(7);
  } else if (full.rfind(L"\\\\?\\", 0) == 0) {
    full = full.substr(4);
  }
  while (full.size() > 3 && (full.back() == L'\\' || full.back() == L'/')) full.pop_back();
  constexpr std::size_t kLongestDirectory = MAX_PATH - 2;
  if (full.size() > kLongestDirectory) {
    return make_error(std::errc::filename_too_long,
                      "module '" + request.module + "': working directory '" + *request.working_directory + "' is " +
                          std::to_string(full.size()) + " characters long; Windows starts a process only in a " +
                          "directory of at most " + std::to_string(kLongestDirectory) +
                          " characters (MAX_PATH - 2: CreateProcessW fails with a longer one)");
  }
  return std::optional<std::wstring>(std::move(full));
}

// True when this process has a console its children can share (and so
// receive CTRL_BREAK through). Without one, a console child would get a new
// console window: CREATE_NO_WINDOW keeps it hidden.
bool host_has_console() { return GetConsoleWindow() != nullptr || GetConsoleCP() != 0; }

// --- The process --------------------------------------------------------------

// What a Process step that failed returns: operation_not_permitted for
// ERROR_ACCESS_DENIED, as POSIX does for EPERM, else the GetLastError value;
// the message names the module and the pid.
Error step_error(const std::string& module, const std::string& what, DWORD error) {
  std::string message = "module '" + module + "': cannot " + what + ": " + win32::system_message(error);
  if (error == ERROR_ACCESS_DENIED) return make_error(std::errc::operation_not_permitted, std::move(message));
  return Error{win32::win32_error(error), std::move(message)};
}

// The longest wait the API takes: INFINITE (0xFFFFFFFF) is never passed, so
// every wait of this file ends.
DWORD bounded_milliseconds(std::chrono::milliseconds timeout) {
  constexpr std::chrono::milliseconds::rep kLongest = INFINITE - 1;
  if (timeout.count() <= 0) return 0;
  return static_cast<DWORD>(std::min<std::chrono::milliseconds::rep>(timeout.count(), kLongest));
}

// The process handle keeps the pid from being given to another process until
// it is closed (in the destructor), and the Job object is ours alone (unnamed,
// never duplicated): no call below can reach a process modkit did not start.
class Win32Process final : public Process {
 public:
  Win32Process(std::string module, DWORD pid, UniqueHandle process, UniqueHandle job, GracefulStop graceful_stop,
               UniqueHandle stdin_write, std::unique_ptr<PipeReader> out, std::unique_ptr<PipeReader> err,
               UniqueHandle notify_read, UniqueHandle stop_event, std::vector<std::string> limits_not_applied,
               win32::JobLimitEvents limit_events)
      : module_(std::move(module)),
        pid_(pid),
        process_(std::move(process)),
        job_(std::move(job)),
        limits_not_applied_(std::move(limits_not_applied)),
        limit_events_(std::move(limit_events)),
        graceful_stop_(graceful_stop),
        stdin_write_(std::move(stdin_write)),
        stdout_(std::move(out)),
        stderr_(std::move(err)),
        notify_read_(std::move(notify_read)),
        stop_event_(std::move(stop_event)) {}

  // Never blocks and sends nothing. Closing the job handle (members go in
  // reverse order: the job before the process handle) still kills whatever
  // is left of the tree, the child included if it still runs:
  // JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, the Windows containment.
  ~Win32Process() override = default;

  std::int64_t pid() const override { return pid_; }
  std::unique_ptr<PipeReader> take_stdout() override { return std::move(stdout_); }
  std::unique_ptr<PipeReader> take_stderr() override { return std::move(stderr_); }
  std::intptr_t exit_handle() const override { return reinterpret_cast<std::intptr_t>(process_.get()); }
  bool exit_waitable() const override { return true; }
  // The overlapped server end of the notification pipe; the exit monitor
  // reads a duplicate of it (exit_monitor.cpp).
  std::intptr_t notify_handle() const override {
    return notify_read_ ? reinterpret_cast<std::intptr_t>(notify_read_.get()) : -1;
  }

  Result<bool> request_stop() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (reaped_) return false;
    switch (graceful_stop_) {
      case GracefulStop::Signal: {
        // The child leads its own console process group (CREATE_NEW_PROCESS_GROUP),
        // whose id is its pid. Once the child has exited the id may name no
        // group, and Windows then treats some ids like 0 (every process of the
        // console, the host included): so only while the child runs.
        if (exited()) return false;
        // The stop event (MODKIT_STOP_EVENT) works without a console, so a
        // host that is a service can stop a module gracefully too: there is
        // then always something to wait for.
        bool event_set = stop_event_ && SetEvent(stop_event_.get());
        // Fails when we share no console with it. (Wine accepts it but never
        // delivers it.)
        if (GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid_)) return true;
        DWORD error = GetLastError();
        if (error == ERROR_ACCESS_DENIED && !event_set) {
          return step_error(module_, "send CTRL_BREAK to pid " + std::to_string(pid_), error);
        }
        return event_set;
      }
      case GracefulStop::CloseStdin:
        stdin_write_.reset();
        return true;
      case GracefulStop::None:
        return false;
    }
    return false;
  }

  Result<void> kill_tree() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (reaped_) return {};
    // Set first: the exit may be seen by another thread as soon as the job
    // dies. A child that had already ended keeps its own status.
    if (!status_ && !exited()) killed_ = true;
    if (!TerminateJobObject(job_.get(), win32::kKillExitCode)) {
      DWORD error = GetLastError();
      return step_error(module_, "kill the Job object of pid " + std::to_string(pid_), error);
    }
    return {};
  }

  int kill_output_holders() override { return 0; }  // the Job object holds every descendant

  // The Job object is the group; its end is seen through the process handle
  // and the pipes, so there is nothing more to watch or count here.
  std::intptr_t contents_handle() const override { return -1; }
  bool contents_empty() override { return true; }
  std::optional<std::int64_t> process_count() override { return std::nullopt; }

  std::vector<std::string> limits_not_applied() const override { return limits_not_applied_; }

  std::optional<ExitStatus::Reason> limit_end() override {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_events_.drain(pid_);
  }

  std::optional<ExitStatus> peek_exit() override {
    if (!exited()) return std::nullopt;
    std::lock_guard<std::mutex> lock(mutex_);
    if (!status_) status_ = read_status();  // the first answer stays the answer
    return status_;
  }

  std::optional<ExitStatus> wait_for_exit(std::chrono::milliseconds timeout) override {
    // The handle stays open while this object lives, so waiting on it outside
    // the lock is safe; kill_tree stays callable meanwhile.
    WaitForSingleObject(process_.get(), bounded_milliseconds(timeout));
    return peek_exit();
  }

  void reap() override {
    std::lock_guard<std::mutex> lock(mutex_);
    reaped_ = true;
    stdin_write_.reset();
    stop_event_.reset();  // the name goes with it (nobody else holds it open but the child, now gone)
  }

 private:
  bool exited() const { return WaitForSingleObject(process_.get(), 0) == WAIT_OBJECT_0; }

  // The status of the exited child (caller holds mutex_).
  ExitStatus read_status() const {
    DWORD code = 0;
    if (!GetExitCodeProcess(process_.get(), &code)) return ExitStatus{ExitStatus::Kind::Exited, -1, false};
    ExitStatus status;
    if (killed_ && code == win32::kKillExitCode) {
      status.kind = ExitStatus::Kind::Signaled;
      status.code = 9;  // SIGKILL's number: what a POSIX host reports for the same stop
    } else if (code == win32::kControlExitCode) {
      status.kind = ExitStatus::Kind::Signaled;  // ended by a console control event's default handler
      status.code = win32::kBreakSignal;
    } else {
      status.kind = ExitStatus::Kind::Exited;
      status.code = static_cast<int>(code);  // NTSTATUS codes (crashes) come out negative
    }
    status.usage = win32::read_usage(process_.get(), job_.get());
    return status;
  }

  const std::string module_;
  const DWORD pid_;
  UniqueHandle process_;
  UniqueHandle job_;
  const std::vector<std::string> limits_not_applied_;
  win32::JobLimitEvents limit_events_;  // guarded by mutex_; its port closes with this object
  const GracefulStop graceful_stop_;
  std::mutex mutex_;
  bool reaped_ = false;
  bool killed_ = false;
  std::optional<ExitStatus> status_;
  UniqueHandle stdin_write_;
  std::unique_ptr<PipeReader> stdout_, stderr_;
  const UniqueHandle notify_read_;  // empty without Readiness::Mode::Notify
  UniqueHandle stop_event_;         // GracefulStop::Signal's named event; guarded by mutex_
};

// RAII for the attribute list of STARTUPINFOEXW.
class AttributeList {
 public:
  AttributeList() {
    SIZE_T size = 0;
    InitializeProcThreadAttributeList(nullptr, 1, 0, &size);
    storage_.reset(new (std::nothrow) std::max_align_t[size / sizeof(std::max_align_t) + 1]);
    if (!storage_) return;
    auto* list = reinterpret_cast<LPPROC_THREAD_ATTRIBUTE_LIST>(storage_.get());
    if (InitializeProcThreadAttributeList(list, 1, 0, &size)) list_ = list;
  }
  ~AttributeList() {
    if (list_) DeleteProcThreadAttributeList(list_);
  }
  AttributeList(const AttributeList&) = delete;
  AttributeList& operator=(const AttributeList&) = delete;
  LPPROC_THREAD_ATTRIBUTE_LIST get() const { return list_; }

 private:
  std::unique_ptr<std::max_align_t[]> storage_;
  LPPROC_THREAD_ATTRIBUTE_LIST list_ = nullptr;
};

// Adds SEM_FAILCRITICALERRORS | SEM_NOGPFAULTERRORBOX to this process's error
// mode while at least one spawn is inside CreateProcessW (counted, so that
// concurrent spawns neither serialise nor restore it under each other), then
// restores the host's own mode, unless the host changed it meanwhile.
class ErrorModeForChildren {
 public:
  ErrorModeForChildren() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (users_++ == 0) {
      saved_ = GetErrorMode();
      applied_ = saved_ | SEM_FAILCRITICALERRORS | SEM_NOGPFAULTERRORBOX;
      SetErrorMode(applied_);
    }
  }
  ~ErrorModeForChildren() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (--users_ == 0 && GetErrorMode() == applied_) SetErrorMode(saved_);
  }
  ErrorModeForChildren(const ErrorModeForChildren&) = delete;
  ErrorModeForChildren& operator=(const ErrorModeForChildren&) = delete;

 private:
  static inline std::mutex mutex_;
  static inline int users_ = 0;
  static inline UINT saved_ = 0;
  static inline UINT applied_ = 0;
};

// Kills a child that was created (suspended, and not in a job, or not
// resumable) but cannot be handed out. Windows has no zombies: the wait only
// lets the process be gone on return, and is bounded (a process being torn
// down by the kernel ends on its own once the handles are closed).
void discard_child(const UniqueHandle& process) {
  TerminateProcess(process.get(), win32::kKillExitCode);
  WaitForSingleObject(process.get(), 5000);
}

// GracefulStop::Signal's console-less step: a manual-reset event named
// Local\modkit-stop-<instance id> (per session; the id is a UUID, unique), with
// the owner-only DACL of the output pipes, so only the host's user can open
// it. Its name goes to the child in MODKIT_STOP_EVENT; request_stop sets it.
// A name that already exists is refused: someone else would hold the event.
Result<UniqueHandle> make_stop_event(const SpawnRequest& request, std::wstring& name) {
  std::string id = request.instance_id;
  if (id.empty()) {  // the platform layer alone (tests): any unique name
    static std::atomic<unsigned long> counter{0};
    unsigned char random[8] = {};
    platform::fill_random(random, sizeof random);
    id = std::to_string(GetCurrentProcessId()) + "-" + std::to_string(counter.fetch_add(1) + 1) + "-";
    for (unsigned char byte : random) id += "0123456789abcdef"[byte >> 4], id += "0123456789abcdef"[byte & 15];
  }
  name = L"Local\\modkit-stop-";
  for (char c : id) {  // a UUID; anything else that is not a name character becomes '_'
    bool plain = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
    name += plain ? static_cast<wchar_t>(c) : L'_';
  }
  UniqueHandle event(CreateEventW(win32::owner_only_security(), TRUE, FALSE, name.c_str()));
  DWORD error = GetLastError();
  if (!event) {
    event.release();
    return spawn_error(request, "cannot create its stop event", error);
  }
  if (error == ERROR_ALREADY_EXISTS) {
    return spawn_error(request, "cannot create its stop event '" + win32::narrow(name) + "'", ERROR_ALREADY_EXISTS);
  }
  return event;
}

}  // namespace

Result<std::unique_ptr<Process>> spawn(const SpawnRequest& request) {
  // 0. What Windows cannot do is refused before anything exists.
  if (auto refused = win32::refuse_unsupported(request.module, request.limits, request.privileges)) {
    return std::move(*refused);
  }
  const bool best_effort = request.limits.enforcement == ResourceLimits::Enforcement::BestEffort;
  std::vector<std::string> limits_not_applied;
  if (best_effort) limits_not_applied = win32::not_applied_entries(request.limits);

  // 1. Every string in UTF-16, the environment, the program.
  auto working_directory = check_working_directory(request);
  if (!working_directory) return std::move(working_directory).error();
  auto binary = win32::widen(request.binary);
  if (!binary) return invalid_text(request, "binary path");

  std::vector<std::pair<std::u16string, std::u16string>> overrides;
  for (const auto& [key, value] : request.env) {
    std::u16string wide_key, wide_value;
    if (!win32::utf8_to_utf16(key, wide_key)) return invalid_text(request, "an environment variable name");
    if (!win32::utf8_to_utf16(value, wide_value)) {
      return invalid_text(request, "the value of environment variable '" + key + "'");
    }
    if (compare_names_windows(wide_key, kNotifyVariable) == 0) continue;
    if (compare_names_windows(wide_key, kStopEventVariable) == 0) continue;
    if (!request.notify && compare_names_windows(wide_key, kWatchdogVariable) == 0) continue;
    overrides.emplace_back(std::move(wide_key), std::move(wide_value));
  }
  const std::vector<std::u16string> host = host_environment();
  std::vector<std::u16string> environment =
      win32::merge_environment(host, overrides, request.clear_environment, compare_names_windows);

  auto path = resolve_binary(request, *binary, environment);
  if (!path) return std::move(path).error();
  std::string path_text = win32::narrow(*path);

  std::wstring application = long_path_form(*path);
  std::string command_line;
  if (!win32::build_command_line(request.binary, request.args, command_line)) {
    return make_error(std::errc::invalid_argument,
                      "module '" + request.module + "': binary path '" + request.binary + "' contains a '\"'");
  }
  if (win32::is_batch_file(path_text)) {
    if (!request.allow_batch_files) {
      return make_error(std::errc::operation_not_permitted,
                        "module '" + request.module + "': refusing to run batch file '" + path_text +
                            "': cmd.exe re-parses its arguments, so they could inject commands "
                            "(set allow_batch_files to run it anyway)");
    }
    // Opted in: run it through cmd.exe explicitly (/d: no AutoRun, /e:ON
    // /v:OFF: no delayed expansion, /c with the whole line in quotes), every
    // argument escaped for cmd.exe's parsing too (command_line.hpp). cmd.exe
    // is the system directory's, not %ComSpec%'s: the environment must not
    // choose the interpreter.
    std::string why;
    if (!win32::build_batch_command_line(path_text, request.args, command_line, why)) {
      return make_error(std::errc::invalid_argument,
                        "module '" + request.module + "': cannot run batch file '" + path_text + "': " + why);
    }
    wchar_t system_directory[MAX_PATH];
    UINT length = GetSystemDirectoryW(system_directory, MAX_PATH);
    if (length == 0 || length >= MAX_PATH) {
      return spawn_error(request, "cannot find cmd.exe for batch file '" + path_text + "'", GetLastError());
    }
    application = std::wstring(system_directory, length) + L"\\cmd.exe";
  }
  auto wide_command_line = win32::widen(command_line);
  if (!wide_command_line) return invalid_text(request, "an argument");
  constexpr std::size_t kMaxCommandLine = 32767;  // UNICODE_STRING's limit, with the final NUL
  if (wide_command_line->size() >= kMaxCommandLine) {
    return make_error(std::errc::argument_list_too_long,
                      "module '" + request.module + "': the command line is " +
                          std::to_string(wide_command_line->size()) + " UTF-16 units long; Windows allows " +
                          std::to_string(kMaxCommandLine - 1));
  }

  // 2. The child's standard handles (and its notification pipe's write end).
  // They are created non-inheritable and made inheritable just before
  // CreateProcessW; the handle list restricts inheritance to exactly these.
  UniqueHandle stdin_read, stdin_write;
  if (request.graceful_stop == GracefulStop::CloseStdin) {
    HANDLE read_end = nullptr, write_end = nullptr;
    if (!CreatePipe(&read_end, &write_end, nullptr, 0)) return spawn_error(request, "cannot create pipes", GetLastError());
    stdin_read.reset(read_end);
    stdin_write.reset(write_end);
  } else {
    stdin_read.reset(CreateFileW(L"NUL", GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE, nullptr, OPEN_EXISTING,
                                 FILE_ATTRIBUTE_NORMAL, nullptr));
    if (!stdin_read) {
      stdin_read.release();
      return spawn_error(request, "cannot open NUL", GetLastError());
    }
  }
  win32::OverlappedPipe out, err;
  if (DWORD error = win32::make_overlapped_pipe(out, false)) return spawn_error(request, "cannot create pipes", error);
  if (DWORD error = win32::make_overlapped_pipe(err, false)) return spawn_error(request, "cannot create pipes", error);
  // Readiness::Mode::Notify: a pipe like the output pipes (uniquely named,
  // single-instance, owner-only DACL; its one client end is ours, so nobody
  // can connect to it by name), read with overlapped I/O by the exit monitor
  // without a thread of its own. The child's write end goes in its handle list
  // only, so no other child (spawned concurrently or later) inherits it.
  win32::OverlappedPipe notify;
  if (request.notify) {
    if (DWORD error = win32::make_overlapped_pipe(notify, false)) {
      return spawn_error(request, "cannot create the notification pipe", error);
    }
    // An inherited handle has the same value in the child as here
    // (Microsoft, "Inheritance" in Handles and Objects): that value names it.
    std::string value = std::to_string(reinterpret_cast<std::uintptr_t>(notify.write_end.get()));
    overrides.emplace_back(std::u16string(kNotifyVariable), std::u16string(value.begin(), value.end()));
    environment = win32::merge_environment(host, overrides, request.clear_environment, compare_names_windows);
  }
  UniqueHandle stop_event;
  if (request.graceful_stop == GracefulStop::Signal) {
    std::wstring name;
    auto made = make_stop_event(request, name);
    if (!made) return std::move(made).error();
    stop_event = std::move(*made);
    overrides.emplace_back(std::u16string(kStopEventVariable), std::u16string(name.begin(), name.end()));
    environment = win32::merge_environment(host, overrides, request.clear_environment, compare_names_windows);
  }
  std::wstring environment_block = to_wstring(win32::environment_block(environment));

  UniqueHandle interrupt(CreateEventW(nullptr, TRUE, FALSE, nullptr));
  UniqueHandle out_event(CreateEventW(nullptr, TRUE, FALSE, nullptr));
  UniqueHandle err_event(CreateEventW(nullptr, TRUE, FALSE, nullptr));
  if (!interrupt || !out_event || !err_event) return spawn_error(request, "cannot create events", GetLastError());

  HANDLE inherited[4] = {stdin_read.get(), out.write_end.get(), err.write_end.get(), notify.write_end.get()};
  const std::size_t inherited_count = request.notify ? 4 : 3;
  for (std::size_t i = 0; i < inherited_count; ++i) {
    if (!SetHandleInformation(inherited[i], HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT)) {
      return spawn_error(request, "cannot prepare the child's handles", GetLastError());
    }
  }
  AttributeList attributes;
  if (!attributes.get() ||
      !UpdateProcThreadAttribute(attributes.get(), 0, PROC_THREAD_ATTRIBUTE_HANDLE_LIST, inherited,
                                 inherited_count * sizeof(HANDLE), nullptr, nullptr)) {
    return spawn_error(request, "cannot prepare the child's handle list", GetLastError());
  }

  STARTUPINFOEXW startup{};
  startup.StartupInfo.cb = sizeof startup;
  // Hidden unless asked: a GUI module (or a console one that opens a window)
  // must not pop up on the host's desktop (as libuv and Rust's std do).
  startup.StartupInfo.dwFlags = STARTF_USESTDHANDLES | STARTF_USESHOWWINDOW;
  startup.StartupInfo.wShowWindow = request.show_window ? SW_SHOWDEFAULT : SW_HIDE;
  startup.StartupInfo.hStdInput = inherited[0];
  startup.StartupInfo.hStdOutput = inherited[1];
  startup.StartupInfo.hStdError = inherited[2];
  startup.lpAttributeList = attributes.get();

  DWORD flags = CREATE_SUSPENDED | CREATE_UNICODE_ENVIRONMENT | EXTENDED_STARTUPINFO_PRESENT | CREATE_NEW_PROCESS_GROUP;
  if (!host_has_console()) flags |= CREATE_NO_WINDOW;

  // 3. Create it suspended, put it in its job, then let it run.
  PROCESS_INFORMATION info{};
  BOOL created;
  {
    // The child inherits this process's error mode (Microsoft, CreateProcess:
    // CREATE_DEFAULT_ERROR_MODE is what turns that off), and nothing sets it
    // in another process: so for the call the host's mode gets
    // SEM_FAILCRITICALERRORS (no "missing DLL" or "insert a disk" box holds a
    // broken module) and SEM_NOGPFAULTERRORBOX (the job forces that one as
    // well). libuv sets both for its whole process (src/win/core.c,
    // uv__init); reproc sets its mode around CreateProcessW and restores it
    // (reproc/src/process.windows.c), as here.
    ErrorModeForChildren error_mode;
    created = CreateProcessW(application.c_str(), wide_command_line->data(), nullptr, nullptr, TRUE, flags,
                             environment_block.data(), *working_directory ? (*working_directory)->c_str() : nullptr,
                             &startup.StartupInfo, &info);
  }
  DWORD create_error = created ? 0 : GetLastError();
  // Owned at once, so that no return below can leak them.
  UniqueHandle process(created ? info.hProcess : nullptr);
  UniqueHandle thread(created ? info.hThread : nullptr);
  // Our copies of the child's ends go now (on failure too).
  stdin_read.reset();
  out.write_end.reset();
  err.write_end.reset();
  // From now on only the child holds its write end, so the pipe ends with the
  // child, or when the child closes it. (The child's copy stays inheritable: a
  // handle list admits only inheritable handles. So what the child starts
  // with bInheritHandles has it too, as with descriptor 3 on POSIX; under Wine
  // 8 that includes the conhost.exe Wine starts in a console child without a
  // console to share, which keeps the pipe open until the child exits.)
  notify.write_end.reset();
  if (!created) {
    std::string what = "cannot execute '" + path_text + "'";
    DWORD attributes_of_path = file_attributes(*path);
    if (attributes_of_path != INVALID_FILE_ATTRIBUTES && (attributes_of_path & FILE_ATTRIBUTE_DIRECTORY) != 0) {
      what += " (it is a directory)";
    }
    return spawn_error(request, what, create_error, path_text);
  }

  // The limits are set on the Job before the child is in it and long before
  // it runs: nothing it does escapes them.
  UniqueHandle job(CreateJobObjectW(nullptr, nullptr));
  win32::JobLimitEvents limit_events;
  DWORD job_error = 0;
  std::string job_step = "cannot put '" + path_text + "' in a job object";
  if (!job) {
    job_error = GetLastError();
  } else {
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION limits{};
    // DIE_ON_UNHANDLED_EXCEPTION: a crashing module ends at once instead of
    // waiting in Windows Error Reporting's dialog (Microsoft's
    // JOBOBJECT_BASIC_LIMIT_INFORMATION: it forces SEM_NOGPFAULTERRORBOX on
    // every process of the job). Wine does not show that dialog.
    limits.BasicLimitInformation.LimitFlags =
        JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION;
    win32::add_job_limits(request.limits, limits);
    if (!SetInformationJobObject(job.get(), JobObjectExtendedLimitInformation, &limits, sizeof limits)) {
      job_error = GetLastError();
      job_step = "cannot set the limits of the job object of '" + path_text + "'";
    }
  }
  if (job_error == 0 && request.limits.cpu_percent) {
    JOBOBJECT_CPU_RATE_CONTROL_INFORMATION rate{};
    rate.ControlFlags = JOB_OBJECT_CPU_RATE_CONTROL_ENABLE | JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP;
    rate.CpuRate = win32::hard_cap_cpu_rate(*request.limits.cpu_percent, win32::processor_count());
    if (!SetInformationJobObject(job.get(), JobObjectCpuRateControlInformation, &rate, sizeof rate)) {
      // Windows 8 and later have it; Wine 8 refuses it (ERROR_INVALID_PARAMETER).
      std::string why = "the Job's CPU rate control failed: " + win32::system_message(GetLastError());
      if (!best_effort) {
        discard_child(process);
        return make_error(std::errc::not_supported, "module '" + request.module +
                                                        "': limits.cpu_percent cannot be enforced on Windows here (" +
                                                        why + ")");
      }
      limits_not_applied.push_back("limits.cpu_percent (" + why + ")");
    }
  }
  // The port only reports the end of a memory or time limit, so it exists
  // only with one of them: other Jobs would just queue NEW_PROCESS and
  // EXIT_PROCESS messages nobody reads, and hold one more handle.
  if (job_error == 0 && win32::has_reported_limits(request.limits)) {
    job_error = limit_events.attach(job.get());
    if (job_error != 0) job_step = "cannot watch the limits of the job object of '" + path_text + "'";
  }
  if (job_error == 0 && !AssignProcessToJobObject(job.get(), process.get())) job_error = GetLastError();
  if (job_error != 0) {
    discard_child(process);
    return spawn_error(request, job_step, job_error);
  }
  if (ResumeThread(thread.get()) == static_cast<DWORD>(-1)) {
    DWORD error = GetLastError();
    discard_child(process);
    return spawn_error(request, "cannot start '" + path_text + "'", error);
  }
  thread.reset();

  auto shared_interrupt = std::make_shared<UniqueHandle>(std::move(interrupt));
  auto stdout_reader =
      std::make_unique<win32::Win32PipeReader>(std::move(out.read_end), std::move(out_event), shared_interrupt);
  auto stderr_reader =
      std::make_unique<win32::Win32PipeReader>(std::move(err.read_end), std::move(err_event), shared_interrupt);
  return std::unique_ptr<Process>(std::make_unique<Win32Process>(
      request.module, info.dwProcessId, std::move(process), std::move(job), request.graceful_stop,
      std::move(stdin_write), std::move(stdout_reader), std::move(stderr_reader), std::move(notify.read_end),
      std::move(stop_event), std::move(limits_not_applied), std::move(limit_events)));
}

}  // namespace modkit::platform
