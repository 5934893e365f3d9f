// modkit: start, watch and stop out-of-process modules.
//
// This is the library's public header (it includes modkit/supervisor.hpp;
// modkit/ostream.hpp adds operator<< for hosts that use iostreams). Every
// fallible call returns a modkit::Result<T>; nothing in the library throws, so
// it can be built and used with -fno-exceptions -fno-rtti. It uses no
// iostreams: every printable type has a to_string().
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace modkit {

// ---------------------------------------------------------------------------
// Errors and results
// ---------------------------------------------------------------------------

/// What went wrong: a portable code (errno values on POSIX, GetLastError values
/// on Windows, std::errc for validation) and a message that names the culprit
/// (the path, the field) in words.
struct Error {
  std::error_code code;
  std::string message;
};

/// "message (code text)", e.g. "binary '/x' not found (No such file or
/// directory)". For `os << error`, include <modkit/ostream.hpp>.
std::string to_string(const Error& error);

/// Builds an Error from a std::errc and a message.
Error make_error(std::errc code, std::string message);

/// A value or an Error, shaped like C++23 std::expected<T, Error>.
///
/// value() and operator* on an error are programming errors: value() prints the
/// error to stderr and aborts (the library never throws), operator* is undefined
/// behaviour as in std::expected.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}                      // NOLINT: implicit like expected
  Result(Error error) : error_(std::move(error)) {}                  // NOLINT
  bool has_value() const noexcept { return value_.has_value(); }
  explicit operator bool() const noexcept { return has_value(); }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }
  T&& operator*() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& value() & { check(); return *value_; }
  const T& value() const& { check(); return *value_; }
  T&& value() && { check(); return std::move(*value_); }
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  void check() const;
  std::optional<T> value_;
  Error error_;
};

/// Result of a call that returns nothing but may fail.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : failed_(true), error_(std::move(error)) {}  // NOLINT
  bool has_value() const noexcept { return !failed_; }
  explicit operator bool() const noexcept { return !failed_; }
  void value() const;
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  bool failed_ = false;
  Error error_;
};

namespace detail {
[[noreturn]] void abort_on_bad_access(const Error& error);
}

template <typename T>
void Result<T>::check() const {
  if (!value_) detail::abort_on_bad_access(error_);
}

inline void Result<void>::value() const {
  if (failed_) detail::abort_on_bad_access(error_);
}

// ---------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------

/// A one-shot cancellation signal built on a condition variable. Copies share
/// one state: cancelling any copy cancels them all. The state (and the relay
/// thread of enable_signal_cancel()) goes away with the last copy and the last
/// Registration.
///
/// Wiring a signal (POSIX SIGTERM/SIGINT) to it:
///
///     static modkit::CancellationToken* g_token;  // set before the handler is installed
///     extern "C" void on_term(int) { g_token->cancel_from_signal(); }
///     ...
///     token.enable_signal_cancel().value();        // then sigaction(SIGTERM, ...)
///
/// On Windows, call cancel_from_signal() from a console control handler.
class CancellationToken {
 public:
  CancellationToken();

  /// Cancels the token, wakes every waiter and runs every registered callback
  /// (on the calling thread, without holding any lock), in registration order.
  /// Idempotent: when several threads cancel, one runs the callbacks. A
  /// callback that throws (in a host built with exceptions) has its exception
  /// caught and dropped, and the other callbacks still run; a library built
  /// with -fno-exceptions cannot catch it. Not async-signal-safe (it takes a
  /// mutex, which the interrupted thread may hold): from a signal handler use
  /// cancel_from_signal().
  void cancel();

  /// Prepares cancel_from_signal(): starts one relay thread (all signals
  /// blocked) that waits, without polling, for a handler's request and then
  /// calls cancel(). Call it before installing the handler (a request made
  /// earlier is still relayed). Idempotent: one relay per token, whichever
  /// copy is used; does nothing once cancel() has run. The relay is
  /// joined when the last copy of the token goes away. Errors:
  /// resource_unavailable_try_again (no thread or descriptor could be had; a
  /// later call may retry).
  Result<void> enable_signal_cancel();
  /// Async-signal-safe, lock-free and preserves errno: cancels the token from
  /// a signal handler (or any thread). is_cancelled() is true at once, and so
  /// wait() and wait_for() return at once if called after it. With
  /// enable_signal_cancel(), the relay thread then calls cancel(): waiters
  /// blocked before are woken and registered callbacks run, on the relay
  /// thread, shortly after the handler returns. Without it, only the flag is
  /// set: blocked waiters stay blocked and registered callbacks wait for an
  /// ordinary cancel(). Any number of times, concurrently with cancel().
  void cancel_from_signal() noexcept;
  /// True once cancel() or cancel_from_signal() has been called. Lock-free.
  bool is_cancelled() const;
  /// Blocks until cancelled or until `timeout` has passed; returns is_cancelled().
  bool wait_for(std::chrono::steady_clock::duration timeout) const;
  /// Blocks until cancelled.
  void wait() const;

  /// RAII registration of a cancel callback. Destroying it unregisters the
  /// callback and, if the callback is running on another thread, waits for it
  /// to return, so whatever it captured may be destroyed right after.
  class Registration {
   public:
    Registration() = default;
    Registration(Registration&& other) noexcept;
    Registration& operator=(Registration&& other) noexcept;
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;
    ~Registration();
    void reset();

   private:
    friend class CancellationToken;
    struct State;
    Registration(std::shared_ptr<State> state, std::uint64_t id);
    std::shared_ptr<State> state_;
    std::uint64_t id_ = 0;
  };

  /// Runs `callback` once the token is cancelled; at once (on this thread) if it
  /// already is (is_cancelled(), including a bare cancel_from_signal()). An
  /// empty function is ignored. Exceptions are dropped as in cancel().
  Registration on_cancel(std::function<void()> callback) const;

 private:
  std::shared_ptr<Registration::State> state_;
};

// ---------------------------------------------------------------------------
// Modules, instances and their configuration
// ---------------------------------------------------------------------------

enum class BackendKind { LocalProcess, K8s, Static, Mock };
/// "LocalProcess", "K8s", "Static", "Mock".
std::string_view to_string(BackendKind kind);

/// How a child is asked to stop before it is killed.
enum class GracefulStop {
  /// POSIX: SIGTERM to the child's process group. Windows: CTRL_BREAK_EVENT to
  /// the child's console process group (real Windows only; Wine ignores it).
  Signal,
  /// Close the child's stdin (a pipe instead of the null device): a module that
  /// reads stdin stops at EOF. Works everywhere, including under Wine.
  CloseStdin,
  /// No graceful step: kill at once.
  None,
};

/// How modkit learns that a module is ready to serve (the README's
/// "Readiness" section has the protocol). A module that exits, closes its
/// notification descriptor or lets `timeout` pass before it is ready has
/// failed: modkit stops it (graceful step, grace, kill), drains its output and
/// reports it with ExitStatus::reason set.
struct Readiness {
  enum class Mode {
    /// Ready as soon as the program was executed.
    Immediate,
    /// The module writes "READY=1\n" (or a bare "\n", as s6 modules do) to
    /// a notification descriptor whose number (POSIX: always 3) or handle
    /// value (Windows: an inherited pipe handle) is in the environment
    /// variable MODKIT_NOTIFY_FD. No other module, and no other descriptor
    /// of the host, is reachable through it. Lines "STATUS=<text>" become
    /// library records; "WATCHDOG=1" is a watchdog ping; other lines are
    /// ignored.
    Notify,
    /// The module writes a line to stdout that starts with `line_prefix`
    /// (the line is still delivered to the sink).
    StdoutLine,
  };
  Mode mode = Mode::Immediate;
  /// StdoutLine: what the ready line starts with; must not be empty.
  std::string line_prefix;
  /// Notify and StdoutLine: how long the module has, from the start, to become
  /// ready. Must be positive (there is no unbounded wait).
  std::chrono::milliseconds timeout{10000};
  /// Notify only: once ready, the module must write "WATCHDOG=1\n" at least
  /// once per `watchdog`, or it is stopped as failed
  /// (ExitStatus::Reason::WatchdogTimeout). The interval in milliseconds is
  /// in the environment variable MODKIT_WATCHDOG_MS. Zero: no watchdog.
  std::chrono::milliseconds watchdog{0};
};

/// What one instance may consume (the README's "Limits and privileges" has
/// the table of what enforces each field on each platform). Unset fields
/// leave the host's values. Every limit binds the module and what it starts,
/// never the host.
struct ResourceLimits {
  /// What spawn does when a field set here cannot be enforced on this host.
  enum class Enforcement {
    /// Spawn fails with not_supported; the message names the field and why.
    Required,
    /// Spawn goes on; a Warn library record names each field not applied.
    BestEffort,
  };
  Enforcement enforcement = Enforcement::Required;

  // Group limits: Linux, the instance's cgroup v2 (needs Containment and the
  // controller delegated to its parent); Windows, the instance's Job object.
  /// Bytes. Linux: memory.max with memory.oom.group=1 (the out-of-memory
  /// killer ends the whole instance; ExitStatus::Reason::MemoryLimit).
  /// Windows: the Job's memory limit (allocations fail past it).
  std::optional<std::uint64_t> memory_max;
  /// Bytes. Linux only: memory.high (above it the module is throttled and
  /// reclaimed, not killed).
  std::optional<std::uint64_t> memory_high;
  /// Percent of one CPU (100: one whole CPU; 250: two and a half), 1 to
  /// 100000. Linux: cpu.max. Windows: the Job's hard CPU rate cap (a share of
  /// the whole machine, so it is divided by the number of processors).
  std::optional<std::uint32_t> cpu_percent;
  /// Processes and threads at once. Linux: pids.max. Windows: the Job's
  /// active process limit (processes only).
  std::optional<std::uint64_t> max_processes;

  // Per-process limits: Linux, rlimits set in the child before exec (soft and
  // hard alike, so the module cannot raise them again).
  /// Bytes of virtual address space (RLIMIT_AS), the per-process memory
  /// fallback where no cgroup is available: an allocation past it fails and
  /// the module decides what happens (most exit). Windows: the Job's
  /// per-process committed memory limit.
  std::optional<std::uint64_t> address_space;
  /// Bytes of data segment and heap (RLIMIT_DATA). Linux only.
  std::optional<std::uint64_t> data_size;
  /// CPU time, user plus system. Linux: RLIMIT_CPU, SIGXCPU at the limit and
  /// SIGKILL a second later. Windows: the Job's per-process user-time limit.
  /// Either way ExitStatus::Reason::CpuLimit.
  std::optional<std::chrono::seconds> cpu_time;
  /// Open descriptors (RLIMIT_NOFILE): opening past it fails with EMFILE. Linux only.
  std::optional<std::uint64_t> open_files;
  /// Bytes one file may grow to (RLIMIT_FSIZE). Linux only.
  std::optional<std::uint64_t> file_size;
  /// Bytes of a core dump (RLIMIT_CORE); 0 turns core dumps off. Linux only.
  std::optional<std::uint64_t> core_size;
  /// RLIMIT_NPROC. Linux only, and it counts every process of the module's
  /// real user, not only this instance's; it binds nobody with
  /// CAP_SYS_ADMIN or CAP_SYS_RESOURCE (root), so pair it with
  /// Privileges::user. max_processes is the per-instance limit.
  std::optional<std::uint64_t> user_processes;
};

/// Who the module runs as and what it may gain. Linux only, but for
/// die_with_host; any other field set is refused on Windows
/// (not_supported). Changing identity needs the privilege to (CAP_SETUID,
/// CAP_SETGID: a host running as root); without it spawn fails with
/// operation_not_permitted and nothing runs.
struct Privileges {
  /// Run as this user id (real, effective and saved). Needs `group` too, so
  /// that a module never keeps the host's group by accident.
  std::optional<std::uint32_t> user;
  /// Run as this group id (real, effective and saved).
  std::optional<std::uint32_t> group;
  /// The supplementary groups. Unset with `user` or `group` set: none (the
  /// host's are dropped). Unset otherwise: the host's.
  std::optional<std::vector<std::uint32_t>> supplementary_groups;
  /// PR_SET_NO_NEW_PRIVS: no set-user-id program, file capability or
  /// similar can give the module (or anything it runs) more privilege.
  bool no_new_privileges = false;
  /// The module's umask (0 to 0777).
  std::optional<std::uint32_t> umask;
  /// The module is killed when the host dies, however it dies (SIGKILL
  /// included). Linux: the parent-death signal, which follows the thread
  /// that spawned, so modkit spawns these modules from a long-lived thread
  /// of its own. Windows: always so (the Job is killed with the host).
  bool die_with_host = false;
};

/// What to start. `OopModuleConfig{name, backend}` leaves everything else empty.
struct OopModuleConfig {
  OopModuleConfig() = default;
  OopModuleConfig(std::string module_name, BackendKind kind)
      : name(std::move(module_name)), backend(kind) {}

  std::string name;
  /// Path of the program. A name without a directory separator is looked up on
  /// PATH (and PATHEXT on Windows).
  std::optional<std::string> binary;
  std::vector<std::string> args;
  /// Entries added to (and overriding) the inherited environment.
  std::map<std::string, std::string> env;
  /// Must exist and be a directory; unset means the host's current directory.
  std::optional<std::string> working_directory;
  BackendKind backend = BackendKind::LocalProcess;
  std::optional<std::string> version;

  /// Start from an empty environment instead of the host's (only `env` reaches
  /// the child; on Windows SYSTEMROOT is still passed, as programs need it).
  bool clear_environment = false;
  GracefulStop graceful_stop = GracefulStop::Signal;
  /// Windows only: allow .bat/.cmd targets. They run through the system's
  /// cmd.exe with every argument escaped for its parsing too (quoted, '"'
  /// doubled, '%' neutralised, the rules Rust adopted after "BatBadBut");
  /// an argument with CR, LF or NUL is refused (invalid_argument). Off by
  /// default: cmd.exe's parsing is best not relied on at all.
  bool allow_batch_files = false;
  /// Windows only: show the module's windows (SW_SHOWDEFAULT). By default a
  /// module starts with SW_HIDE, so a GUI program pops nothing up on the host.
  bool show_window = false;
  /// When the module counts as ready (see Readiness). Default: at once.
  Readiness readiness;
  /// What it may consume; see ResourceLimits.
  ResourceLimits limits;
  /// Who it runs as; see Privileges.
  Privileges privileges;
};

/// A running (or once running) instance. Printable with every field (to_string).
struct InstanceHandle {
  std::string module;
  std::string instance_id;  ///< UUID v7 (RFC 9562), lower-case text form.
  BackendKind backend = BackendKind::LocalProcess;
  std::optional<std::int64_t> pid;
  std::chrono::steady_clock::time_point created_at{};
  /// Set by list_instances for a contained instance (see Containment): how
  /// many processes its cgroup holds (the module and every descendant, also
  /// those that left its process group). Empty otherwise.
  std::optional<std::int64_t> processes;
};
/// Every field: InstanceHandle { module: "m", instance_id: <uuid>, backend:
/// LocalProcess, pid: 1234 (or none), created_at: <steady ns>ns (steady)[,
/// processes: N] }.
std::string to_string(const InstanceHandle& handle);

/// What an ended instance used, to log and compare with its ResourceLimits.
struct ResourceUsage {
  /// The module's process, with the descendants it waited for (Linux:
  /// getrusage of the reaped child; Windows: GetProcessTimes and the peak
  /// working set).
  std::chrono::microseconds user_cpu{0};
  std::chrono::microseconds system_cpu{0};
  /// Bytes, peak resident set. Linux: empty when it cannot be told from the
  /// host's own: the kernel carries the spawning process's peak over into
  /// the child's across execve, so only a peak above the host's is the
  /// module's (the cgroup's group_peak_memory is exact where it exists).
  std::optional<std::uint64_t> peak_memory;
  /// The instance's whole group, when it had one (Linux: its cgroup's
  /// cpu.stat, and memory.peak where the memory controller provides it;
  /// Windows: the Job's accounting and peak job memory).
  std::optional<std::chrono::microseconds> group_user_cpu;
  std::optional<std::chrono::microseconds> group_system_cpu;
  std::optional<std::uint64_t> group_peak_memory;
};

/// How a child ended.
struct ExitStatus {
  /// Unknown: the child ended but its status was taken by someone else (a host
  /// that reaps with waitpid(-1), or SIGCHLD set to SIG_IGN); code is then -1.
  enum class Kind { Exited, Signaled, Unknown };
  Kind kind = Kind::Exited;
  int code = 0;         ///< exit code, the signal number when Signaled, -1 when Unknown.
  bool forced = false;  ///< killed by modkit after the grace period ran out.
  /// Why it ended, as far as modkit knows.
  enum class Reason {
    Exited,            ///< by itself: its own exit, or a signal modkit did not send
    Stopped,           ///< stopped by the host: stop_instance, the shutdown, the destructor
    ReadinessTimeout,  ///< not ready within Readiness::timeout; modkit stopped it
    NotReady,          ///< exited, or closed its notification descriptor, before it was ready
    WatchdogTimeout,   ///< no watchdog ping within Readiness::watchdog; modkit stopped it
    /// Ended by its memory limit: the out-of-memory killer inside its cgroup
    /// (memory.events oom_kill, Linux), or the Job's memory limit (Windows).
    MemoryLimit,
    /// Ended by ResourceLimits::cpu_time (Linux: SIGXCPU, or the SIGKILL that
    /// follows it; Windows: the Job's per-process time limit).
    CpuLimit,
  };
  Reason reason = Reason::Exited;
  /// What the instance used, when it could be read (see ResourceUsage).
  std::optional<ResourceUsage> usage{};
  bool success() const { return kind == Kind::Exited && code == 0; }
};
/// "exited", "stopped", "readiness timeout", "ended before ready", "watchdog
/// timeout", "memory limit", "CPU time limit".
std::string_view to_string(ExitStatus::Reason reason);
/// The status in the words of modkit's exit records (hosts may match them):
///   "exited with code 3"           Kind::Exited
///   "killed by signal 9"           Kind::Signaled
///   "exited, status unknown (reaped by someone else)"   Kind::Unknown
/// then " (forced after the grace period)" when `forced`, then " [<reason>]"
/// (to_string(Reason)) unless the reason is Exited, e.g.
/// "killed by signal 9 (forced after the grace period) [watchdog timeout]".
/// The usage is not part of it (the library logs it in a record of its own).
std::string to_string(const ExitStatus& status);

/// Generates a UUID v7 (RFC 9562): 48-bit Unix milliseconds, then a counter and
/// random bits, so ids from one process sort in creation order.
std::string new_uuid_v7();

// ---------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------

enum class LogLevel { Trace, Debug, Info, Warn, Error };
/// Where a record came from: a child's stream, or modkit itself.
enum class LogStream { Stdout, Stderr, Library };
std::string_view to_string(LogLevel level);
std::string_view to_string(LogStream stream);

struct LogRecord {
  std::string_view module;
  std::string_view instance_id;  ///< empty for library events not tied to one instance
  LogStream stream = LogStream::Library;
  LogLevel level = LogLevel::Info;
  std::string_view line;  ///< valid UTF-8, no line terminator
  /// True when this record continues the previous one of the same stream,
  /// which was cut at the maximum line length.
  bool continuation = false;
  std::chrono::system_clock::time_point timestamp{};
};

/// Receives every line of every child and modkit's own events. Called
/// concurrently from several threads (one reader thread per stream per
/// instance for lines and for the records of its spawn and exit, the
/// backend's supervisor thread for its other records);
/// never called while modkit holds a lock of its own, and never after the
/// backend's destructor has returned. The record's
/// views are valid only during the call. An exception thrown by write() (in a
/// host built with exceptions) is caught and dropped; it never reaches modkit's
/// threads or the caller of spawn_instance.
///
/// Batches. A reader thread hands the lines one read() of a stream brought
/// to write_batch() in one call: `count` (at least 1, at most 2048) records
/// of one instance and stream, in the order the child wrote them, each
/// written before anything modkit reports about it (e.g. the "ready" record
/// of a stdout readiness line comes after the batch holding that line). The
/// array, the records and every view in them are valid only during the call;
/// the call is made on the reader thread, under the same rules as write().
/// Records of other streams and instances, and modkit's own records, may be
/// written (by other threads, through write() or write_batch()) during the
/// call. The default calls write() for each record in order, so a sink that
/// only implements write() sees every record as before. An exception thrown
/// by write_batch() drops the rest of that batch.
class LogSink {
 public:
  virtual ~LogSink() = default;
  virtual void write(const LogRecord& record) = 0;
  virtual void write_batch(const LogRecord* records, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) write(records[i]);
  }
};

/// Level found in a line's content, as ModKit does: a JSON object's "level"
/// field (error/warn/info/debug/trace, any case), else a second
/// whitespace-separated token ERROR, WARN, INFO, DEBUG or TRACE (all upper or
/// all lower case), else Info.
LogLevel detect_level(std::string_view line);

/// Writes each record as one line to a FILE* or a file descriptor. Thread-safe.
///
/// Format: `<UTC timestamp> <LEVEL> <module>[<last 8 of instance id>] <stream>: <line>`
/// (`+ ` instead of `: ` for a continuation). Every field is escaped so that a
/// record is exactly one line and no control character reaches a terminal:
/// `\\` for a backslash, `\n` and `\r` for LF and CR, and `\u{hh}` (two
/// lower-case hex digits of the code point) for every other C0 control but
/// TAB, for DEL and for the C1 controls U+0080..U+009F. Invalid UTF-8 becomes
/// U+FFFD.
///
/// Output. Each record is written whole under the sink's lock, so records
/// never interleave; a batch is formatted into one buffer and written whole
/// (one write() call when the descriptor takes it all). On a non-blocking descriptor the sink waits (poll) until
/// the descriptor takes the rest; nothing is dropped. A write to a pipe whose
/// reader is gone is dropped without raising SIGPIPE (POSIX; the calling
/// thread's signal mask and pending signals are left as they were). The FILE*
/// form flushes the FILE first (keeping order with what the host wrote to it)
/// and then writes to its descriptor directly, so the same holds for it.
class TextLogSink : public LogSink {
 public:
  explicit TextLogSink(std::FILE* out = stderr);
  explicit TextLogSink(int fd);
  void write(const LogRecord& record) override;
  /// All records formatted into one buffer, then one write under the lock.
  void write_batch(const LogRecord* records, std::size_t count) override;

 private:
  std::mutex mutex_;
  std::FILE* file_ = nullptr;
  int fd_ = -1;
};

/// Writes each record as one JSON object per line. Thread-safe.
///
/// Fields: timestamp, level, module, instance_id, stream, continuation, line.
/// The output is valid JSON (RFC 8259) and valid UTF-8 for any input: invalid
/// UTF-8 becomes U+FFFD; `"` and `\` are escaped, as is every control
/// character (C0 as `\n`, `\r`, `\t` or `\u00hh`; DEL and the C1 controls
/// U+0080..U+009F as `\u00hh`), and U+2028/U+2029 as `\u2028`/`\u2029` (line
/// terminators to JavaScript before ES2019). Output is handled as in
/// TextLogSink: whole records, a non-blocking descriptor is waited for, and a
/// write to a closed pipe is dropped without SIGPIPE.
class JsonLogSink : public LogSink {
 public:
  explicit JsonLogSink(std::FILE* out = stderr);
  explicit JsonLogSink(int fd);
  void write(const LogRecord& record) override;
  /// All records formatted into one buffer, then one write under the lock.
  void write_batch(const LogRecord* records, std::size_t count) override;

 private:
  std::mutex mutex_;
  std::FILE* file_ = nullptr;
  int fd_ = -1;
};

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// What a backend tells the caller of start_instance about that one instance.
/// Each runs on a backend thread, with no lock of the backend held, in this
/// order: on_status any number of times, on_ready at most once, on_exit once
/// (always, unless the backend is destroyed first). An exception one throws is
/// caught and dropped. They may call the backend.
struct InstanceEvents {
  std::function<void(const InstanceHandle&)> on_ready;
  /// The text of a "STATUS=<text>" notification.
  std::function<void(const InstanceHandle&, std::string_view status)> on_status;
  std::function<void(const InstanceHandle&, const ExitStatus&)> on_exit;
};

/// Starts, stops and lists instances of out-of-process modules.
class ModuleRuntimeBackend {
 public:
  virtual ~ModuleRuntimeBackend() = default;
  /// Starts an instance and, when its config asks for readiness, waits until
  /// it is ready. Fails, starting nothing (no process, no listing, no
  /// on_exit), on an invalid config or when the program cannot be executed
  /// (the message names the module, the path and the cause). A module that
  /// fails its readiness is stopped and drained before this returns the
  /// error: timed_out (not ready in time), broken_pipe (it closed the
  /// notification descriptor), no_such_process (it exited first);
  /// operation_canceled when the token is cancelled during the wait. Such an
  /// instance did run, so on_exit is called for it.
  virtual Result<InstanceHandle> spawn_instance(const OopModuleConfig& config) = 0;
  /// Starts an instance and returns as soon as it runs; its readiness and its
  /// end are reported through `events`. Errors as spawn_instance's before the
  /// wait. The default (for backends that predate it) returns
  /// operation_not_supported.
  /// (Inline, so the class has no key function: a host built with RTTI can
  /// derive from it while the library is built with -fno-rtti.)
  virtual Result<InstanceHandle> start_instance(const OopModuleConfig& config, InstanceEvents events) {
    (void)events;
    return make_error(std::errc::operation_not_supported,
                      "module '" + config.name + "': this backend has no start_instance (use spawn_instance)");
  }
  /// Stops an instance: graceful step, grace period, then kill; returns once it
  /// has been reaped and its output drained, with its exit status. An instance
  /// that has exited but whose output a descendant still holds open is treated
  /// the same way (its tree is killed, its status returned). An unknown or
  /// already finished instance is not an error: the result is then empty.
  virtual Result<std::optional<ExitStatus>> stop_instance(const InstanceHandle& handle) = 0;
  /// The live instances of `module`.
  virtual Result<std::vector<InstanceHandle>> list_instances(std::string_view module) = 0;
  /// Blocks until the shutdown that the backend's token started has finished,
  /// within the backend's bound. The default returns at once.
  virtual void wait_for_shutdown() {}
};

/// Whether each instance runs in a group of its own that a stop ends whole,
/// including descendants that left the process group (setsid), kept forking
/// to new pids, or parked the output pipes where no process holds them.
enum class Containment {
  /// Linux: a cgroup v2 directory per instance, under `cgroup_parent` when
  /// set (create() fails when it cannot be used), else under the host's own
  /// cgroup when the host may create directories there (found from
  /// /proc/self/cgroup and /proc/self/mountinfo). Without either the backend
  /// runs uncontained and says so once, in a library record. Windows: a Job
  /// object per instance, always.
  Automatic,
  /// As Automatic, but never uncontained: create() fails (invalid_argument,
  /// permission_denied, read_only_file_system, ...) and a constructed backend
  /// refuses every spawn with that error.
  Required,
  /// Linux: no cgroups; the process group and the search for processes
  /// holding the output pipes (the README lists what escapes them).
  Off,
};

struct LocalProcessOptions {
  /// Grace between the graceful step and the kill in stop_instance.
  std::chrono::milliseconds stop_grace{2000};
  /// Shared deadline for all children when the token is cancelled.
  std::chrono::milliseconds shutdown_grace{5000};
  /// How long readers may keep draining after the child exited (or was
  /// killed) before what still holds the output is killed; the same again
  /// before modkit stops reading.
  std::chrono::milliseconds drain_timeout{1000};
  /// How long a killed child may take to exit before stop_instance gives up
  /// with timed_out (a process stuck in the kernel cannot die sooner).
  std::chrono::milliseconds kill_timeout{2000};
  /// Longer lines are delivered in pieces (continuation records).
  std::size_t max_line_bytes = 16 * 1024;
  /// Stack size of each reader thread.
  std::size_t reader_stack_bytes = 256 * 1024;
  /// Reader threads are kept when their instance ends and handed to the next
  /// instance, so that a spawn in steady state starts no thread. At most this
  /// many wait idle (each holds its stack: reader_stack_bytes of address
  /// space, a few KiB resident); 0 starts two threads per instance, as modkit
  /// did before. Each instance uses two while it lives.
  std::size_t idle_readers = 16;
  /// An idle reader thread that no instance took for this long ends.
  std::chrono::milliseconds idle_reader_timeout{10000};
  /// Called once for each instance that ends, on a modkit thread (usually
  /// one of the instance's readers, else the backend's supervisor; calls for
  /// different instances may run at once), with no lock held: it may call
  /// spawn_instance, stop_instance, list_instances, even destroy the backend.
  /// An exception it throws is caught and logged.
  std::function<void(const InstanceHandle&, const ExitStatus&)> on_exit;
  /// Library records name the binary and the number of arguments; true adds
  /// every argument's value (which may carry secrets such as passwords).
  bool log_arguments = false;
  /// Linux: watch exits through pidfds (one thread for all instances). When
  /// false, or when the kernel lacks pidfd_open, each instance gets a thread
  /// blocked in waitid() on its own pid.
  bool use_pidfd = true;
  /// See Containment.
  Containment containment = Containment::Automatic;
  /// Linux: a cgroup v2 directory (its path in the mounted hierarchy, e.g.
  /// "/sys/fs/cgroup/unified/appliance") under which the backend creates one
  /// directory of its own, "modkit-<pid>-<start>-<n>", with one directory
  /// per instance in it. modkit writes nowhere else, never moves the host,
  /// and removes its directories when the instance and the backend end.
  /// Empty: found automatically (see Containment::Automatic).
  std::string cgroup_parent;
};

struct BackendAccess;

/// Runs each instance as a child process of this one.
///
/// Each child leads its own process group (POSIX) or Job object (Windows), so
/// stopping reaches its whole tree; on Linux it also runs in a cgroup of its
/// own when containment is on (see Containment), which a stop ends whole,
/// descendants that left the group included. A contained instance ends when
/// no process of its cgroup is left: what it left running after it exited
/// gets drain_timeout to end by itself, then is killed. Its stdin is the null device (or a pipe
/// with GracefulStop::CloseStdin), its stdout and stderr go, line by line, to
/// the LogSink, and it inherits no other descriptor or handle of the host.
/// When the token is cancelled every child is stopped with one shared deadline.
///
/// Bounds. With G the grace (stop_grace, or shutdown_grace for the shutdown),
/// K = kill_timeout and D = drain_timeout, stop_instance, wait_for_shutdown and
/// the destructor return within G + K + 2*D (plus scheduling delays), whatever
/// the child or the sink does. modkit only signals what it started: the
/// child's process group only while the child is unreaped (so its id cannot
/// have been reused), the members of the child's cgroup (each pinned with a
/// pidfd and confirmed a member before it is signalled), and, only when the
/// child has no cgroup, processes outside the group that hold the write end
/// of the child's own output pipes.
///
/// Calls from inside a sink or on_exit never deadlock: a stop that would wait
/// for the calling thread itself is started and returns
/// resource_deadlock_would_occur; destroying the backend there stops every
/// child within the bound, and the calling thread ends by itself once the
/// callback has returned. on_exit is never called after the destructor returned.
class LocalProcessBackend final : public ModuleRuntimeBackend {
 public:
  /// Starts the backend's threads and, with containment, makes its cgroup
  /// directory (and removes empty ones of backends that have ended). Errors:
  /// resource_unavailable_try_again when a thread or descriptor cannot be had
  /// (the message says which); invalid_argument when cgroup_parent is not a
  /// cgroup v2 directory; the errno of mkdir (permission_denied,
  /// read_only_file_system, ...) when its directory cannot be made there;
  /// operation_not_supported when Containment::Required finds no cgroup.
  static Result<std::unique_ptr<LocalProcessBackend>> create(CancellationToken token, std::shared_ptr<LogSink> sink,
                                                             LocalProcessOptions options = {});
  /// As create(), but a backend whose threads could not start refuses every
  /// spawn with that error (and says so once in a library record).
  LocalProcessBackend(CancellationToken token, std::shared_ptr<LogSink> sink,
                      LocalProcessOptions options = {});
  /// Stops every child still running (one shared deadline) and joins every
  /// thread, within the bound above. A child that cannot be signalled or
  /// reaped in time, or a reader stuck in a sink call, is abandoned with an
  /// error record instead of hanging.
  ~LocalProcessBackend() override;
  LocalProcessBackend(const LocalProcessBackend&) = delete;
  LocalProcessBackend& operator=(const LocalProcessBackend&) = delete;

  /// Errors: the config's (invalid_argument and friends), the spawn's (errno of
  /// the failing step, naming the path, and the cgroup when the child could
  /// not be made or enter it there), operation_canceled after the token
  /// was cancelled, resource_unavailable_try_again when no reader thread can
  /// be started (the child is then killed and reaped before the call returns).
  Result<InstanceHandle> spawn_instance(const OopModuleConfig& config) override;
  /// Errors: operation_not_permitted (the child, or all of its group, may not
  /// be signalled; the message names the pid), timed_out (killed but not
  /// reaped within kill_timeout), resource_deadlock_would_occur (called from a
  /// sink or on_exit on a thread the stop must wait for; the stop goes on).
  Result<std::optional<ExitStatus>> stop_instance(const InstanceHandle& handle) override;
  /// Errors: as spawn_instance's, without the readiness wait. A readiness
  /// failure ends the instance (ExitStatus::reason says which).
  Result<InstanceHandle> start_instance(const OopModuleConfig& config, InstanceEvents events) override;
  Result<std::vector<InstanceHandle>> list_instances(std::string_view module) override;

  /// Blocks until the shutdown that cancellation started has finished (every
  /// child reaped, every stream drained), within the bound above. Returns at
  /// once if not cancelled, or if called from a sink or on_exit.
  void wait_for_shutdown() override;

  class Impl;

 private:
  friend struct BackendAccess;  // src/core: builds a backend on injected platform services
  explicit LocalProcessBackend(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;  // shared with modkit's threads, so none touches freed memory
};

// ---------------------------------------------------------------------------
// Time, and the Mock backend (tests of hosts and of the Supervisor)
// ---------------------------------------------------------------------------

/// The clock a Supervisor and a MockBackend run on: the steady clock, or a
/// ManualClock that a test moves by hand.
class TimeSource {
 public:
  using time_point = std::chrono::steady_clock::time_point;
  virtual ~TimeSource() = default;
  virtual time_point now() const = 0;
  /// True when time passes by itself (a waiter sleeps until its deadline);
  /// false for a manual clock, whose waiters sleep until advance().
  virtual bool passes_by_itself() const = 0;
  /// Calls `*wake` (on the advancing thread, no lock of the clock held) after
  /// every advance() of a manual clock, for as long as it is alive. The steady
  /// clock never calls it.
  virtual void subscribe(std::weak_ptr<std::function<void()>> wake) = 0;
};

/// std::chrono::steady_clock as a TimeSource (one shared object).
std::shared_ptr<TimeSource> steady_time_source();

/// A clock that moves only when told to. Thread-safe.
class ManualClock final : public TimeSource {
 public:
  ManualClock();
  time_point now() const override;
  bool passes_by_itself() const override { return false; }
  void subscribe(std::weak_ptr<std::function<void()>> wake) override;
  /// Moves the clock forward by `by` and wakes every subscriber.
  void advance(std::chrono::steady_clock::duration by);

 private:
  mutable std::mutex mutex_;
  time_point now_;
  std::vector<std::weak_ptr<std::function<void()>>> subscribers_;
};

/// What one scripted Mock instance does, in the Mock's time, from its start.
struct MockScript {
  /// spawn_instance / start_instance fail with this error (nothing starts).
  std::optional<Error> spawn_error;
  /// When it becomes ready (if its config asks for readiness); empty: never.
  std::optional<std::chrono::milliseconds> ready_after = std::chrono::milliseconds(0);
  struct Line {
    std::chrono::milliseconds at{0};
    LogStream stream = LogStream::Stdout;
    std::string text;
  };
  /// Lines it writes (delivered to the sink as a real module's would be).
  std::vector<Line> lines;
  /// When it ends by itself, and how; empty: it runs until stopped.
  std::optional<std::chrono::milliseconds> exit_after;
  ExitStatus exit_status;
  /// How a stop (or the shutdown) ends it: true = as one that ignored the
  /// graceful step and was killed (Signaled 9, forced); false = Signaled 15.
  /// Either way at once: stop_instance returns that status without waiting
  /// for the clock.
  bool ignores_graceful_stop = false;
};

/// The seed's BackendKind::Mock: instances without processes, scripted per
/// module, on a TimeSource, so a host (or the Supervisor's own tests) can
/// drive starts, readiness, logs and exits deterministically. Instances get
/// UUID v7 ids and no pid. One thread per backend runs the scripts; sink
/// calls and events come from it (or from the thread that advances a manual
/// clock, never while the Mock holds a lock). The token's cancellation stops
/// every instance. Readiness: an instance whose config asks for readiness
/// (Notify or StdoutLine) is ready at `ready_after`, or fails at the config's
/// timeout (reason ReadinessTimeout); the watchdog is not simulated. As for
/// LocalProcessBackend, that timeout must be positive and at most a day
/// (invalid_argument otherwise). Script times beyond 100 years never come.
class MockBackend final : public ModuleRuntimeBackend {
 public:
  struct Options {
    std::shared_ptr<TimeSource> time;  ///< empty: steady_time_source()
  };
  /// Errors: resource_unavailable_try_again when its thread cannot start.
  static Result<std::unique_ptr<MockBackend>> create(CancellationToken token, std::shared_ptr<LogSink> sink,
                                                     Options options);
  ~MockBackend() override;
  MockBackend(const MockBackend&) = delete;
  MockBackend& operator=(const MockBackend&) = delete;

  /// Scripts the next instances of `module`: the n-th start takes scripts[n],
  /// the last one repeating. Unscripted modules run until stopped.
  void script(const std::string& module, std::vector<MockScript> scripts);
  /// How many times `module` was started (failed spawns included).
  int starts(const std::string& module) const;

  /// spawn_instance waits for readiness on the TimeSource: with a manual clock
  /// another thread must advance it.
  Result<InstanceHandle> spawn_instance(const OopModuleConfig& config) override;
  Result<InstanceHandle> start_instance(const OopModuleConfig& config, InstanceEvents events) override;
  Result<std::optional<ExitStatus>> stop_instance(const InstanceHandle& handle) override;
  Result<std::vector<InstanceHandle>> list_instances(std::string_view module) override;
  void wait_for_shutdown() override;

  class Impl;

 private:
  explicit MockBackend(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace modkit

#include "modkit/supervisor.hpp"
