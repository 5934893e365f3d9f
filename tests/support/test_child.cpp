// The program the tests spawn. Its arguments are a script of commands run in
// order, e.g. `test_child lines 3 stderr-lines 2 exit 4`. Output is written
// with unbuffered write() so that nothing is lost when a signal ends it.
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <thread>
#include <chrono>

#ifdef _WIN32
#include <fcntl.h>
#include <io.h>
#include <process.h>
#include <windows.h>
#include <shellapi.h>
#include <aclapi.h>
#include <sddl.h>

#include <vector>
#define write _write

// The C runtime's own parse of the wide command line (msvcrt.dll exports it;
// MinGW declares it only in an internal header).
extern "C" {
struct modkit_startupinfo {
  int newmode;
};
__declspec(dllimport) int __cdecl __wgetmainargs(int* argc, wchar_t*** argv, wchar_t*** env, int glob,
                                                 modkit_startupinfo* info);
}
#else
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
extern char** environ;
#endif

namespace {

void out(int fd, const std::string& text) {
  std::size_t done = 0;
  while (done < text.size()) {
    auto count = write(fd, text.data() + done, static_cast<unsigned>(text.size() - done));
    if (count <= 0) return;
    done += static_cast<std::size_t>(count);
  }
}

long number(int argc, char** argv, int index) {
  if (index >= argc) {
    out(2, "test_child: missing number\n");
    std::exit(99);
  }
  return std::strtol(argv[index], nullptr, 10);
}

void sleep_seconds(double seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

#ifdef _WIN32
std::string narrow(const wchar_t* text, int length = -1) {
  int size = WideCharToMultiByte(CP_UTF8, 0, text, length, nullptr, 0, nullptr, nullptr);
  std::string result(static_cast<std::size_t>(size > 0 ? size : 0), '\0');
  if (size > 0) WideCharToMultiByte(CP_UTF8, 0, text, length, result.data(), size, nullptr, nullptr);
  if (length < 0 && !result.empty()) result.pop_back();  // the NUL
  return result;
}

std::wstring widen(const std::string& text) {
  int size = MultiByteToWideChar(CP_UTF8, 0, text.data(), static_cast<int>(text.size()), nullptr, 0);
  std::wstring result(static_cast<std::size_t>(size), L'\0');
  MultiByteToWideChar(CP_UTF8, 0, text.data(), static_cast<int>(text.size()), result.data(), size);
  return result;
}

// The environment block's entries, in block order ("=C:=..." entries too).
std::vector<std::string> environment_entries() {
  std::vector<std::string> entries;
  wchar_t* block = GetEnvironmentStringsW();
  for (const wchar_t* entry = block; entry && *entry; entry += wcslen(entry) + 1) entries.push_back(narrow(entry));
  if (block) FreeEnvironmentStringsW(block);
  return entries;
}

BOOL WINAPI ignore_console_events(DWORD) { return TRUE; }

// Starts this program again with `script`, in this process's job and console
// group, inheriting its standard handles (so it holds the output pipes, as a
// forked POSIX grandchild does). Returns its pid, or 0.
unsigned long start_grandchild(const std::string& script) {
  wchar_t self[MAX_PATH];
  GetModuleFileNameW(nullptr, self, MAX_PATH);
  std::wstring line = L"\"" + std::wstring(self) + L"\" " + widen(script);
  STARTUPINFOW startup{};
  startup.cb = sizeof startup;
  startup.dwFlags = STARTF_USESTDHANDLES;
  startup.hStdInput = GetStdHandle(STD_INPUT_HANDLE);
  startup.hStdOutput = GetStdHandle(STD_OUTPUT_HANDLE);
  startup.hStdError = GetStdHandle(STD_ERROR_HANDLE);
  PROCESS_INFORMATION info{};
  if (!CreateProcessW(self, line.data(), nullptr, nullptr, TRUE, 0, nullptr, nullptr, &startup, &info)) return 0;
  CloseHandle(info.hThread);
  CloseHandle(info.hProcess);
  return info.dwProcessId;
}
#endif

// The readiness notification descriptor (Readiness::Mode::Notify): its
// number (POSIX) or handle value (Windows) is in MODKIT_NOTIFY_FD.
bool notify_write(const std::string& text) {
  const char* value = std::getenv("MODKIT_NOTIFY_FD");
  if (!value) return false;
#ifdef _WIN32
  HANDLE handle = reinterpret_cast<HANDLE>(static_cast<std::intptr_t>(std::strtoll(value, nullptr, 10)));
  DWORD written = 0;
  return WriteFile(handle, text.data(), static_cast<DWORD>(text.size()), &written, nullptr) && written == text.size();
#else
  int fd = static_cast<int>(std::strtol(value, nullptr, 10));
  return ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
#endif
}
void notify_close() {
  const char* value = std::getenv("MODKIT_NOTIFY_FD");
  if (!value) return;
#ifdef _WIN32
  CloseHandle(reinterpret_cast<HANDLE>(static_cast<std::intptr_t>(std::strtoll(value, nullptr, 10))));
#else
  ::close(static_cast<int>(std::strtol(value, nullptr, 10)));
#endif
}

std::string hex(const std::string& text) {
  static const char digits[] = "0123456789abcdef";
  std::string result;
  for (unsigned char c : text) {
    result.push_back(digits[c >> 4]);
    result.push_back(digits[c & 15]);
  }
  return result;
}

}  // namespace

int main(int argc, char** argv) {
#ifdef _WIN32
  // Binary mode: the bytes written are the bytes read (no CRLF translation).
  _setmode(0, _O_BINARY);
  _setmode(1, _O_BINARY);
  _setmode(2, _O_BINARY);
  // UTF-8 arguments from the runtime's parse of the wide command line (the
  // narrow argv would lose every character outside the ANSI code page).
  int wide_argc = 0;
  wchar_t** wide_argv = nullptr;
  wchar_t** wide_env = nullptr;
  modkit_startupinfo startup_info{0};
  std::vector<std::string> arguments;
  std::vector<char*> argument_pointers;
  if (__wgetmainargs(&wide_argc, &wide_argv, &wide_env, 0, &startup_info) == 0 && wide_argv) {
    for (int k = 0; k < wide_argc; ++k) arguments.push_back(narrow(wide_argv[k]));
    for (auto& argument : arguments) argument_pointers.push_back(argument.data());
    argument_pointers.push_back(nullptr);
    argc = wide_argc;
    argv = argument_pointers.data();
  }
#endif
  for (int i = 1; i < argc; ++i) {
    std::string command = argv[i];
    if (command == "notify") {  // notify TEXT: TEXT and a newline on the notification descriptor
      if (++i < argc && !notify_write(std::string(argv[i]) + "\n")) out(2, "notify: cannot write\n");
    } else if (command == "notify-raw") {  // notify-raw TEXT: no newline
      if (++i < argc && !notify_write(argv[i])) out(2, "notify: cannot write\n");
    } else if (command == "notify-newline") {  // a bare newline (s6's readiness)
      if (!notify_write("\n")) out(2, "notify: cannot write\n");
    } else if (command == "notify-close") {
      notify_close();
    } else if (command == "notify-env") {  // "notify-env VALUE" or "notify-env unset"; same for the watchdog
      const char* value = std::getenv("MODKIT_NOTIFY_FD");
      const char* watchdog = std::getenv("MODKIT_WATCHDOG_MS");
      out(1, std::string("notify-env ") + (value ? value : "unset") + " watchdog " + (watchdog ? watchdog : "unset") +
                 "\n");
    } else if (command == "watchdog-pings") {  // watchdog-pings N MS: N pings MS apart
      long count = number(argc, argv, ++i);
      long interval = number(argc, argv, ++i);
      for (long k = 0; k < count; ++k) {
        notify_write("WATCHDOG=1\n");
        sleep_seconds(static_cast<double>(interval) / 1000.0);
      }
    } else if (command == "lines") {  // lines N: "line 1" .. "line N" on stdout
      long count = number(argc, argv, ++i);
      for (long n = 1; n <= count; ++n) out(1, "line " + std::to_string(n) + "\n");
    } else if (command == "stderr-lines") {
      long count = number(argc, argv, ++i);
      for (long n = 1; n <= count; ++n) out(2, "err " + std::to_string(n) + "\n");
    } else if (command == "say") {  // say TEXT: TEXT and a newline on stdout
      out(1, std::string(argv[++i]) + "\n");
    } else if (command == "say-raw") {  // say-raw TEXT: no newline
      out(1, argv[++i]);
    } else if (command == "invalid-utf8") {
      out(1, std::string("bad \xff\xfe bytes \xc3\x28 end\n"));
    } else if (command == "huge") {  // huge N: one line of N 'x' bytes
      long count = number(argc, argv, ++i);
      std::string chunk(65536, 'x');
      for (long left = count; left > 0; left -= 65536) out(1, chunk.substr(0, static_cast<std::size_t>(left < 65536 ? left : 65536)));
      out(1, "\n");
    } else if (command == "flood") {  // flood N LEN: N lines of LEN bytes
      long count = number(argc, argv, ++i);
      long length = number(argc, argv, ++i);
      std::string line(static_cast<std::size_t>(length > 0 ? length - 1 : 0), 'y');
      line.push_back('\n');
      std::string batch;
      for (long n = 0; n < count; ++n) {
        batch += line;
        if (batch.size() >= 65536) {
          out(1, batch);
          batch.clear();
        }
      }
      out(1, batch);
    } else if (command == "sleep") {
      sleep_seconds(std::strtod(argv[++i], nullptr));
    } else if (command == "exit") {
      return static_cast<int>(number(argc, argv, ++i));
    } else if (command == "argv") {  // every argument after it, hex-encoded, one per line
#ifdef _WIN32
      // The two Windows parsers (the C runtime's and CommandLineToArgvW) must agree.
      int shell_argc = 0;
      wchar_t** shell_argv = CommandLineToArgvW(GetCommandLineW(), &shell_argc);
      bool agree = shell_argv != nullptr && shell_argc == argc;
      for (int k = 1; agree && k < argc; ++k) agree = narrow(shell_argv[k]) == argv[k];
      if (shell_argv) LocalFree(shell_argv);
      if (!agree) out(1, "parsers disagree\n");
#endif
      for (int k = i + 1; k < argc; ++k) out(1, "arg " + hex(argv[k]) + "\n");
      return 0;
    } else if (command == "cwd") {
#ifdef _WIN32
      wchar_t buffer[4096];
      DWORD length = GetCurrentDirectoryW(4096, buffer);
      out(1, "cwd " + narrow(buffer, static_cast<int>(length)) + "\n");
#else
      char buffer[4096];
      if (getcwd(buffer, sizeof buffer) == nullptr) buffer[0] = 0;
      out(1, std::string("cwd ") + buffer + "\n");
#endif
    } else if (command == "env") {  // env NAME: "env NAME=value" or "env NAME unset"
      const char* name = argv[++i];
#ifdef _WIN32
      const wchar_t* wide_value = _wgetenv(widen(name).c_str());
      std::string value_text = wide_value ? narrow(wide_value) : std::string();
      const char* value = wide_value ? value_text.c_str() : nullptr;
#else
      const char* value = std::getenv(name);
#endif
      out(1, value ? "env " + std::string(name) + "=" + value + "\n" : "env " + std::string(name) + " unset\n");
#ifndef _WIN32
    } else if (command == "env-count") {
      long count = 0;
      for (char** entry = environ; *entry; ++entry) ++count;
      out(1, "env-count " + std::to_string(count) + "\n");
    } else if (command == "ignore-term") {
      std::signal(SIGTERM, SIG_IGN);
      out(1, "ignoring SIGTERM\n");
    } else if (command == "raise") {  // raise SIGNUM
      std::raise(static_cast<int>(number(argc, argv, ++i)));
    } else if (command == "alloc-mb") {
      // alloc-mb N: allocates and touches N MiB, one at a time; "allocated N
      // MiB" and on, or "allocation failed at K MiB" and exit 42.
      long count = number(argc, argv, ++i);
      for (long done = 0; done < count; ++done) {
        void* block = std::malloc(1 << 20);
        if (!block) {
          out(1, "allocation failed at " + std::to_string(done) + " MiB\n");
          return 42;
        }
        std::memset(block, 1, 1 << 20);  // kept: the point is to hold it
      }
      out(1, "allocated " + std::to_string(count) + " MiB\n");
    } else if (command == "spin") {  // spin SECONDS: burns CPU for that long (wall clock)
      double seconds = std::strtod(argv[++i], nullptr);
      auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
      volatile unsigned long sink = 0;
      while (std::chrono::steady_clock::now() < end) {
        for (int k = 0; k < 100000; ++k) sink = sink + static_cast<unsigned long>(k);
      }
      out(1, "spun\n");
    } else if (command == "burn-cpu") {  // burn-cpu SECONDS: until it has used that much CPU time
      double seconds = std::strtod(argv[++i], nullptr);
      volatile unsigned long sink = 0;
      while (static_cast<double>(std::clock()) / CLOCKS_PER_SEC < seconds) {
        for (int k = 0; k < 100000; ++k) sink = sink + static_cast<unsigned long>(k);
      }
      out(1, "burnt\n");
    } else if (command == "children-burn") {
      // children-burn N SECONDS: N children one after the other, each burning
      // SECONDS of CPU; waits for each (their time is in our rusage).
      long count = number(argc, argv, ++i);
      double seconds = std::strtod(argv[++i], nullptr);
      for (long child = 0; child < count; ++child) {
        pid_t pid = fork();
        if (pid == 0) {
          volatile unsigned long sink = 0;
          while (static_cast<double>(std::clock()) / CLOCKS_PER_SEC < seconds) {
            for (int k = 0; k < 100000; ++k) sink = sink + static_cast<unsigned long>(k);
          }
          _exit(0);
        }
        if (pid > 0) waitpid(pid, nullptr, 0);
      }
    } else if (command == "fork-until-fail") {
      // fork-until-fail MAX: forks children that wait for us, until fork
      // fails or MAX; "forked K errno NAME" (or "forked K" at MAX).
      long most = number(argc, argv, ++i);
      int fds[2];
      if (pipe(fds) != 0) return 97;
      long forked = 0;
      int error = 0;
      for (; forked < most; ++forked) {
        pid_t pid = fork();
        if (pid < 0) {
          error = errno;
          break;
        }
        if (pid == 0) {
          close(fds[1]);
          char byte;
          (void)!read(fds[0], &byte, 1);  // until the parent closes the pipe or ends
          _exit(0);
        }
      }
      close(fds[1]);
      while (wait(nullptr) > 0) {
      }
      out(1, "forked " + std::to_string(forked) +
                 (error ? std::string(" errno ") + (error == EAGAIN ? "EAGAIN" : std::strerror(error)) : "") + "\n");
    } else if (command == "open-until-fail") {
      // open-until-fail MAX: opens /dev/null until open fails or MAX; "opened K errno NAME".
      long most = number(argc, argv, ++i);
      long opened = 0;
      int error = 0;
      for (; opened < most; ++opened) {
        if (open("/dev/null", O_RDONLY) < 0) {
          error = errno;
          break;
        }
      }
      out(1, "opened " + std::to_string(opened) +
                 (error ? std::string(" errno ") + (error == EMFILE ? "EMFILE" : std::strerror(error)) : "") + "\n");
    } else if (command == "ids") {
      // ids: "resuid R E S resgid R E S groups G,G, nnp N umask U"
      uid_t ruid, euid, suid;
      gid_t rgid, egid, sgid;
      getresuid(&ruid, &euid, &suid);
      getresgid(&rgid, &egid, &sgid);
      gid_t groups[256];
      int count = getgroups(256, groups);
      std::string text = "resuid " + std::to_string(ruid) + " " + std::to_string(euid) + " " + std::to_string(suid) +
                         " resgid " + std::to_string(rgid) + " " + std::to_string(egid) + " " + std::to_string(sgid) +
                         " groups ";
      for (int k = 0; k < count; ++k) text += std::to_string(groups[k]) + ",";
      std::string nnp = "?";
      if (FILE* status = std::fopen("/proc/self/status", "r")) {
        char line[256];
        while (std::fgets(line, sizeof line, status)) {
          if (std::strncmp(line, "NoNewPrivs:", 11) == 0) nnp = std::to_string(std::atoi(line + 11));
        }
        std::fclose(status);
      }
      mode_t mask = umask(0);
      umask(mask);
      char octal[8];
      std::snprintf(octal, sizeof octal, "%03o", static_cast<unsigned>(mask));
      out(1, text + " nnp " + nnp + " umask " + octal + "\n");
    } else if (command == "ignore-xcpu") {  // SIGXCPU ignored: only the hard CPU limit's SIGKILL ends it
      std::signal(SIGXCPU, SIG_IGN);
    } else if (command == "euid") {  // euid: "euid N" (for a setuid copy of this program)
      out(1, "euid " + std::to_string(geteuid()) + "\n");
    } else if (command == "fds") {  // the open descriptors, from /proc/self/fd
      std::string list = "fds";
      DIR* dir = opendir("/proc/self/fd");
      int own = dir ? dirfd(dir) : -1;
      while (dir) {
        dirent* entry = readdir(dir);
        if (!entry) break;
        if (entry->d_name[0] == '.' || std::atoi(entry->d_name) == own) continue;
        list += " ";
        list += entry->d_name;
      }
      if (dir) closedir(dir);
      out(1, list + "\n");
    } else if (command == "sigstate") {  // SigBlk and SigIgn from /proc/self/status
      FILE* status = std::fopen("/proc/self/status", "r");
      char line[256];
      while (status && std::fgets(line, sizeof line, status)) {
        if (std::strncmp(line, "SigBlk:", 7) == 0 || std::strncmp(line, "SigIgn:", 7) == 0) out(1, line);
      }
      if (status) std::fclose(status);
    } else if (command == "pgid") {
      out(1, "pgid " + std::to_string(getpgrp()) + " pid " + std::to_string(getpid()) + "\n");
    } else if (command == "grandchild") {  // grandchild SECONDS: a child that ignores SIGTERM and sleeps
      double seconds = std::strtod(argv[++i], nullptr);
      pid_t pid = fork();
      if (pid == 0) {
        std::signal(SIGTERM, SIG_IGN);
        sleep_seconds(seconds);
        _exit(0);
      }
      out(1, "grandchild " + std::to_string(pid) + "\n");
    } else if (command == "daemon") {  // daemon SECONDS: a grandchild in its own session, holding the pipes
      double seconds = std::strtod(argv[++i], nullptr);
      int ready[2];
      if (pipe(ready) != 0) return 97;
      pid_t pid = fork();
      if (pid == 0) {
        setsid();
        close(ready[0]);
        close(ready[1]);  // tells the parent it has left the process group
        sleep_seconds(seconds);
        _exit(0);
      }
      close(ready[1]);
      char byte;
      while (read(ready[0], &byte, 1) < 0 && errno == EINTR) {
      }
      close(ready[0]);
      out(1, "daemon " + std::to_string(pid) + "\n");  // only once it is outside the group
    } else if (command == "fd-target") {  // fd-target N: "fd N -> TARGET" (readlink of /proc/self/fd/N)
      std::string fd = std::to_string(number(argc, argv, ++i));
      char target[4096];
      ssize_t length = readlink(("/proc/self/fd/" + fd).c_str(), target, sizeof target - 1);
      target[length > 0 ? length : 0] = 0;
      out(1, "fd " + fd + " -> " + (length > 0 ? target : "closed") + "\n");
    } else if (command == "close-stdout") {
      close(1);
    } else if (command == "huge-raw") {  // huge-raw N: N 'x' bytes on stdout, no newline
      long count = number(argc, argv, ++i);
      std::string chunk(65536, 'x');
      for (long left = count; left > 0; left -= 65536) out(1, chunk.substr(0, static_cast<std::size_t>(left < 65536 ? left : 65536)));
    } else if (command == "notify-status-flood") {  // notify-status-flood N LEN: N "STATUS=<LEN x>" lines
      long count = number(argc, argv, ++i);
      long length = number(argc, argv, ++i);
      std::string line = "STATUS=" + std::string(static_cast<std::size_t>(length > 0 ? length : 0), 'x') + "\n";
      std::string batch;
      for (long n = 0; n < count; ++n) {
        batch += line;
        if (batch.size() >= 65536) {
          if (!notify_write(batch)) break;
          batch.clear();
        }
      }
      if (!batch.empty()) notify_write(batch);
    } else if (command == "notify-garbage") {  // notify-garbage N: N bytes 0..255 but '\n' on the descriptor, no newline
      long count = number(argc, argv, ++i);
      std::string garbage;
      for (long n = 0; n < count; ++n) {
        char c = static_cast<char>(n * 131 + 7);
        garbage.push_back(c == '\n' ? '\0' : c);
      }
      if (!notify_write(garbage)) out(2, "notify: cannot write\n");
    } else if (command == "notify-pinger") {
      // notify-pinger MS SECONDS: a grandchild with no stdio (/dev/null) that
      // keeps the notification descriptor and writes "WATCHDOG=1" to it every
      // MS ms for SECONDS (it dies of SIGPIPE once nobody reads it).
      long interval = number(argc, argv, ++i);
      double seconds = std::strtod(argv[++i], nullptr);
      pid_t pid = fork();
      if (pid == 0) {
        int null_fd = open("/dev/null", O_RDWR);
        dup2(null_fd, 0);
        dup2(null_fd, 1);
        dup2(null_fd, 2);
        if (null_fd > 3) close(null_fd);
        auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
        while (std::chrono::steady_clock::now() < end) {
          if (!notify_write("WATCHDOG=1\n")) _exit(5);
          sleep_seconds(static_cast<double>(interval) / 1000.0);
        }
        _exit(0);
      }
      out(1, "pinger " + std::to_string(pid) + "\n");
    } else if (command == "become-root-and-sleep") {
      // become-root-and-sleep SECONDS: for a copy of this program that is
      // setuid root (tests/regression/unkillable_test.cpp): sets every uid to
      // 0, so that an unprivileged parent may not signal it, ignores SIGTERM,
      // prints "uids R E S", then sleeps (bounded, so it never outlives a test
      // for long).
      double seconds = std::strtod(argv[++i], nullptr);
      std::signal(SIGTERM, SIG_IGN);
      if (setresuid(0, 0, 0) != 0) {
        out(1, "cannot become root: " + std::string(std::strerror(errno)) + "\n");
        return 96;
      }
      uid_t real = 1, effective = 1, saved = 1;
      getresuid(&real, &effective, &saved);
      out(1, "uids " + std::to_string(real) + " " + std::to_string(effective) + " " + std::to_string(saved) + "\n");
      sleep_seconds(seconds);
#else
    } else if (command == "env-count") {  // variables, without the hidden "=C:=..." entries
      long count = 0;
      for (const auto& entry : environment_entries()) count += entry.empty() || entry[0] == '=' ? 0 : 1;
      out(1, "env-count " + std::to_string(count) + "\n");
    } else if (command == "env-dump") {  // "envvar NAME=value" for each entry, in block order
      for (const auto& entry : environment_entries()) {
        if (!entry.empty() && entry[0] != '=') out(1, "envvar " + entry + "\n");
      }
    } else if (command == "pid") {
      out(1, "pid " + std::to_string(GetCurrentProcessId()) + "\n");
    } else if (command == "show-window") {  // "show USESHOWWINDOW wShowWindow" from the STARTUPINFO it got
      STARTUPINFOW info{};
      info.cb = sizeof info;
      GetStartupInfoW(&info);
      out(1, "show " + std::to_string((info.dwFlags & STARTF_USESHOWWINDOW) ? 1 : 0) + " " +
                 std::to_string(info.wShowWindow) + "\n");
    } else if (command == "stdout-dacl") {  // "dacl SDDL" of the pipe its stdout is
      PACL dacl = nullptr;
      PSECURITY_DESCRIPTOR descriptor = nullptr;
      DWORD status = GetSecurityInfo(GetStdHandle(STD_OUTPUT_HANDLE), SE_KERNEL_OBJECT, DACL_SECURITY_INFORMATION,
                                     nullptr, nullptr, &dacl, nullptr, &descriptor);
      LPWSTR text = nullptr;
      if (status == ERROR_SUCCESS &&
          ConvertSecurityDescriptorToStringSecurityDescriptorW(descriptor, SDDL_REVISION_1, DACL_SECURITY_INFORMATION,
                                                               &text, nullptr)) {
        int size = WideCharToMultiByte(CP_UTF8, 0, text, -1, nullptr, 0, nullptr, nullptr);
        std::string narrow(static_cast<std::size_t>(size > 0 ? size - 1 : 0), '\0');
        WideCharToMultiByte(CP_UTF8, 0, text, -1, narrow.data(), size, nullptr, nullptr);
        out(1, "dacl " + narrow + "\n");
        LocalFree(text);
      } else {
        out(1, "dacl unavailable " + std::to_string(status) + "\n");
      }
      if (descriptor) LocalFree(descriptor);
    } else if (command == "write-handle") {
      // write-handle VALUE TEXT: TEXT and a newline to the handle whose value
      // is VALUE (another module's MODKIT_NOTIFY_FD); "write-handle ok TYPE"
      // (GetFileType of what VALUE names here) or "write-handle failed ERROR".
      auto handle = reinterpret_cast<HANDLE>(static_cast<std::intptr_t>(std::strtoll(argv[++i], nullptr, 10)));
      std::string text = std::string(argv[++i]) + "\n";
      DWORD written = 0;
      if (WriteFile(handle, text.data(), static_cast<DWORD>(text.size()), &written, nullptr)) {
        out(1, "write-handle ok " + std::to_string(GetFileType(handle)) + "\n");
      } else {
        out(1, "write-handle failed " + std::to_string(GetLastError()) + "\n");
      }
    } else if (command == "wait-stop-event") {
      // wait-stop-event CODE: what a module without a console does for
      // GracefulStop::Signal: ignores CTRL_BREAK, opens the event named in
      // MODKIT_STOP_EVENT, says "stop-event waiting", waits for it and exits
      // with CODE ("stop-event missing" / "stop-event cannot open ERROR" and
      // exit 97 otherwise).
      long code = number(argc, argv, ++i);
      SetConsoleCtrlHandler(ignore_console_events, TRUE);
      const char* name = std::getenv("MODKIT_STOP_EVENT");
      if (!name) {
        out(1, "stop-event missing\n");
        return 97;
      }
      HANDLE event = OpenEventW(SYNCHRONIZE, FALSE, widen(name).c_str());
      if (event == nullptr) {
        out(1, "stop-event cannot open " + std::to_string(GetLastError()) + "\n");
        return 97;
      }
      out(1, "stop-event waiting\n");
      WaitForSingleObject(event, INFINITE);
      CloseHandle(event);
      return static_cast<int>(code);
    } else if (command == "error-mode") {  // "error-mode N": GetErrorMode()
      out(1, "error-mode " + std::to_string(GetErrorMode()) + "\n");
    } else if (command == "ignore-term") {  // Windows: ignore CTRL_BREAK (the text is the POSIX one)
      SetConsoleCtrlHandler(ignore_console_events, TRUE);
      out(1, "ignoring SIGTERM\n");
    } else if (command == "ignore-break-quietly") {
      SetConsoleCtrlHandler(ignore_console_events, TRUE);
    } else if (command == "grandchild") {  // grandchild SECONDS: a child that ignores CTRL_BREAK and sleeps
      std::string seconds = argv[++i];
      out(1, "grandchild " + std::to_string(start_grandchild("ignore-break-quietly sleep " + seconds)) + "\n");
    } else if (command == "fd-target") {  // fd-target N: "fd N -> pipe:" / "char:" / "disk:" / "closed"
      int fd = static_cast<int>(number(argc, argv, ++i));
      auto handle = reinterpret_cast<HANDLE>(_get_osfhandle(fd));
      DWORD type = handle == INVALID_HANDLE_VALUE ? FILE_TYPE_UNKNOWN : GetFileType(handle);
      const char* kind = type == FILE_TYPE_PIPE ? "pipe:" : type == FILE_TYPE_CHAR ? "char:" : type == FILE_TYPE_DISK ? "disk:" : "closed";
      out(1, "fd " + std::to_string(fd) + " -> " + kind + "\n");
    } else if (command == "close-stdout") {
      _close(1);
    } else if (command == "huge-raw") {  // huge-raw N: N 'x' bytes on stdout, no newline
      long count = number(argc, argv, ++i);
      std::string chunk(65536, 'x');
      for (long left = count; left > 0; left -= 65536) out(1, chunk.substr(0, static_cast<std::size_t>(left < 65536 ? left : 65536)));
    } else if (command == "alloc-mb") {
      // alloc-mb N: commits and touches N MiB, 1 MiB at a time, and keeps it;
      // "alloc-mb ok N" or "alloc-mb failed after K error E" (GetLastError).
      long wanted = number(argc, argv, ++i);
      long done = 0;
      DWORD error = 0;
      for (; done < wanted; ++done) {
        auto* block = static_cast<volatile char*>(VirtualAlloc(nullptr, 1 << 20, MEM_COMMIT | MEM_RESERVE, PAGE_READWRITE));
        if (block == nullptr) {
          error = GetLastError();
          break;
        }
        for (long page = 0; page < (1 << 20); page += 4096) block[page] = 1;
      }
      out(1, done == wanted ? "alloc-mb ok " + std::to_string(done) + "\n"
                            : "alloc-mb failed after " + std::to_string(done) + " error " + std::to_string(error) + "\n");
    } else if (command == "spin-ms") {
      // spin-ms N: keeps one CPU busy for N ms of wall time, then
      // "spin-ms done cpu_ms C" (its own user plus kernel time so far).
      long milliseconds = number(argc, argv, ++i);
      auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(milliseconds);
      volatile unsigned long sink = 0;
      while (std::chrono::steady_clock::now() < until) {
        for (int k = 0; k < 10000; ++k) sink = sink + static_cast<unsigned long>(k);
      }
      FILETIME creation, exit, kernel, user;
      GetProcessTimes(GetCurrentProcess(), &creation, &exit, &kernel, &user);
      auto ticks = [](FILETIME t) { return (static_cast<unsigned long long>(t.dwHighDateTime) << 32) | t.dwLowDateTime; };
      out(1, "spin-ms done cpu_ms " + std::to_string((ticks(user) + ticks(kernel)) / 10000) + "\n");
    } else if (command == "spawn-children") {
      // spawn-children N SECONDS: starts N copies of itself that sleep
      // SECONDS (in its Job); "spawn-children started K error E" (E: the
      // GetLastError of the first CreateProcessW that failed, else 0).
      long wanted = number(argc, argv, ++i);
      std::string seconds = argv[++i];
      wchar_t self[MAX_PATH];
      GetModuleFileNameW(nullptr, self, MAX_PATH);
      long started = 0;
      DWORD error = 0;
      for (long k = 0; k < wanted; ++k) {
        std::wstring line = L"\"" + std::wstring(self) + L"\" sleep " + widen(seconds);
        STARTUPINFOW startup{};
        startup.cb = sizeof startup;
        PROCESS_INFORMATION info{};
        if (!CreateProcessW(self, line.data(), nullptr, nullptr, FALSE, CREATE_NO_WINDOW, nullptr, nullptr, &startup,
                            &info)) {
          error = GetLastError();
          break;
        }
        CloseHandle(info.hThread);
        CloseHandle(info.hProcess);
        ++started;
      }
      out(1, "spawn-children started " + std::to_string(started) + " error " + std::to_string(error) + "\n");
#endif
    } else if (command == "read-stdin") {  // read stdin to EOF, then go on
      char buffer[256];
      long total = 0;
      for (;;) {
#ifdef _WIN32
        int count = _read(0, buffer, sizeof buffer);
#else
        auto count = read(0, buffer, sizeof buffer);
#endif
        if (count <= 0) break;
        total += static_cast<long>(count);
      }
      out(1, "stdin eof after " + std::to_string(total) + " bytes\n");
    } else {
      out(2, "test_child: unknown command " + command + "\n");
      return 98;
    }
  }
  return 0;
}
