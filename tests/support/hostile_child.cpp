// Hostile modules for the regression tests: each command misbehaves in one
// way a module can (see tests/regression/). Usage: hostile_child <command> ...
//
// Like test_child, the arguments are a script of commands run in order, e.g.
// `hostile_child out armed await-usr1 10 out go sleep 30`. Output is written
// with unbuffered write(), so nothing is lost when a signal ends the program.
// Every wait is bounded: a hostile module left behind ends by itself.
//
//   out TEXT            TEXT and a newline on stdout
//   err TEXT            TEXT and a newline on stderr
//   sleep SECONDS       sleep (fractions allowed)
//   exit CODE           exit at once with CODE
//   stop-self           raise(SIGSTOP): the module stops itself; once
//                       continued it goes on with the script
//   await-usr1 SECONDS  wait (at most SECONDS) until SIGUSR1 arrives, then go
//                       on; SIGUSR1 is blocked from the start of the program,
//                       so it may be sent as soon as "armed" (or any earlier
//                       line) has been read
//   stopped-grandchild SECONDS
//                       fork a grandchild (same process group, holding the
//                       output pipes) that stops itself with SIGSTOP and, once
//                       continued, sleeps SECONDS; prints
//                       "grandchild stopped PID" once it is stopped
//   fd-open N           "fd N open" or "fd N closed" (fcntl, no /proc needed)
//   ignore-term         ignore SIGTERM from here on (only a kill ends the
//                       module; descendants forked later inherit it)
//
// Escapes (tests/regression/containment_test.cpp): each forks a descendant
// that tries to outlive a stop, and goes on with the script at once (it does
// not wait for it). Every escapee ignores SIGTERM and SIGHUP, appends one
// line "PID START\n" (START: field 22 of /proc/self/stat, the start time
// that tells a recycled pid apart; left out where /proc cannot be read) to
// FILE (which must exist) with a single O_APPEND write() once its escape is
// in place, and ends by itself SECONDS after the command ran (a hostile
// module left behind must not live forever).
//
//   escape-setsid FILE SECONDS
//                       a descendant that calls setsid() (its own session
//                       and process group) and puts /dev/null over its
//                       stdout and stderr: it holds none of the pipes
//   escape-respawn FILE SECONDS
//                       a setsid daemon (holding the pipes) that keeps
//                       forking to a new pid: every 10-20 ms a generation
//                       forks the next and exits; each generation records
//                       itself; after SECONDS none forks again and the last
//                       one exits
//   escape-scm-rights FILE SECONDS
//                       a setsid daemon that parks its copies of the output
//                       pipes in an SCM_RIGHTS message in flight on a
//                       socketpair it keeps, then closes every descriptor
//                       but the socketpair (0, 1 and 2 become /dev/null): no
//                       process holds the pipes as a descriptor, yet they
//                       stay open
//   escape-nondumpable FILE SECONDS
//                       a setsid daemon that made itself non-dumpable
//                       (prctl PR_SET_DUMPABLE 0: an unprivileged host may
//                       not read its /proc/PID/fd) and keeps the pipes
//   fork-bomb FILE COUNT SECONDS
//                       COUNT descendants, forked as a binary tree (each
//                       forks its share of the rest, index 0 first, then
//                       its first child's subtree, then its second's). Those
//                       with an odd index call setsid() before they fork;
//                       those whose index is 3 modulo 4 also put /dev/null
//                       over stdout and stderr once they have forked (so
//                       exactly COUNT/4 of them are outside the group and
//                       hold no pipe); the others keep the pipes. Each
//                       records itself last
#ifdef _WIN32
int main() { return 99; }
#else

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

void out(int fd, const std::string& text) {
  std::size_t done = 0;
  while (done < text.size()) {
    ssize_t count = write(fd, text.data() + done, text.size() - done);
    if (count < 0 && errno == EINTR) continue;
    if (count <= 0) return;
    done += static_cast<std::size_t>(count);
  }
}

const char* argument(int argc, char** argv, int index) {
  if (index >= argc) {
    out(2, "hostile_child: missing argument\n");
    std::exit(99);
  }
  return argv[index];
}

void sleep_seconds(double seconds) {
  if (seconds <= 0) return;
  timespec left{};
  left.tv_sec = static_cast<time_t>(seconds);
  left.tv_nsec = static_cast<long>((seconds - static_cast<double>(left.tv_sec)) * 1e9);
  while (nanosleep(&left, &left) != 0 && errno == EINTR) {
  }
}

// --- Escapes -----------------------------------------------------------------

// The monotonic time `seconds` from now: when an escapee ends by itself.
timespec deadline_after(double seconds) {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  if (seconds < 0) seconds = 0;
  auto whole = static_cast<time_t>(seconds);
  long nanoseconds = now.tv_nsec + static_cast<long>((seconds - static_cast<double>(whole)) * 1e9);
  now.tv_sec += whole + nanoseconds / 1000000000L;
  now.tv_nsec = nanoseconds % 1000000000L;
  return now;
}

bool past(const timespec& deadline) {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec > deadline.tv_sec || (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec);
}

// Sleeps until `deadline` (CLOCK_MONOTONIC).
void sleep_until(const timespec& deadline) {
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, nullptr) == EINTR) {
  }
}

[[noreturn]] void live_until(const timespec& deadline) {
  sleep_until(deadline);
  _exit(0);
}

// An escapee shrugs off the graceful stop: only a kill ends it.
void ignore_stop_signals() {
  signal(SIGTERM, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
}

// Field 22 of /proc/self/stat (start time in clock ticks), or empty.
std::string own_start_time() {
  int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  char buffer[1024];
  ssize_t got;
  do {
    got = read(fd, buffer, sizeof buffer - 1);
  } while (got < 0 && errno == EINTR);
  close(fd);
  if (got <= 0) return {};
  std::string stat(buffer, static_cast<std::size_t>(got));
  std::size_t at = stat.rfind(')');
  if (at == std::string::npos) return {};
  at += 2;  // field 3, the state
  for (int field = 3; field < 22 && at != std::string::npos; ++field) {
    at = stat.find(' ', at);
    if (at != std::string::npos) ++at;
  }
  if (at == std::string::npos) return {};
  return stat.substr(at, stat.find(' ', at) - at);
}

// Appends "PID START\n" to `file` with one write(): lines of concurrent
// escapees never mix. The file must exist (the test makes it): an escapee
// that outlives its test does not make it again once the test removed it.
void record_self(const char* file) {
  int fd;
  do {
    fd = open(file, O_WRONLY | O_APPEND | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return;
  std::string start = own_start_time();
  out(fd, std::to_string(getpid()) + (start.empty() ? "" : " " + start) + "\n");
  close(fd);
}

// Puts /dev/null over the output descriptors: this process no longer holds
// the module's pipes.
void drop_output_pipes() {
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0) {
    close(1);
    close(2);
    return;
  }
  dup2(null, 1);
  dup2(null, 2);
  close(null);
}

// Parks copies of descriptors 1 and 2 in an SCM_RIGHTS message sent on one
// end of a new socketpair, which this process keeps (both ends, so the
// message stays in flight). False on failure.
bool park_output_pipes(int sockets[2]) {
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sockets) != 0) return false;
  int parked[2] = {1, 2};
  char payload = 'p';
  iovec data{&payload, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof parked)] = {};
  msghdr message{};
  message.msg_iov = &data;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  cmsghdr* header = CMSG_FIRSTHDR(&message);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_RIGHTS;
  header->cmsg_len = CMSG_LEN(sizeof parked);
  std::memcpy(CMSG_DATA(header), parked, sizeof parked);
  ssize_t sent;
  do {
    sent = sendmsg(sockets[0], &message, 0);
  } while (sent < 0 && errno == EINTR);
  return sent == 1;
}

// Closes every descriptor but `keep_a` and `keep_b`, then opens /dev/null as
// 0, 1 and 2. Bounded by the descriptor table (sysconf, at most 65536).
void close_all_but(int keep_a, int keep_b) {
  long limit = sysconf(_SC_OPEN_MAX);
  if (limit < 0 || limit > 65536) limit = 65536;
  for (int fd = 0; fd < static_cast<int>(limit); ++fd) {
    if (fd != keep_a && fd != keep_b) close(fd);
  }
  for (int fd = 0; fd < 3; ++fd) {
    int null = open("/dev/null", O_RDWR);
    if (null >= 0 && null != fd) {
      dup2(null, fd);
      close(null);
    }
  }
}

// One process of the fork bomb, with index `index`, that must start
// `descendants` more below it (a binary tree: half to each of two children).
[[noreturn]] void bomb_process(const char* file, int index, int descendants, const timespec& deadline) {
  ignore_stop_signals();
  if (index % 2 == 1) setsid();
  int first = descendants > 0 ? (descendants - 1) / 2 : 0;
  int second = descendants > 0 ? descendants - 1 - first : 0;
  // Indices: this process's subtree is index .. index + descendants; the
  // first child's is index+1 .. index+1+first, the second's follows it.
  if (descendants >= 1) {
    pid_t child = fork();
    if (child == 0) bomb_process(file, index + 1, first, deadline);
  }
  if (descendants >= 2) {
    pid_t child = fork();
    if (child == 0) bomb_process(file, index + 2 + first, second - 1, deadline);
  }
  // After the forks: the children keep the pipes whatever their parent does.
  if (index % 4 == 3) drop_output_pipes();
  record_self(file);
  live_until(deadline);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: hostile_child <command> ...\n");
    return 99;
  }
  // SIGUSR1 is blocked before anything is written, so a host that saw any
  // output line may send it without killing the module.
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, nullptr);

  for (int i = 1; i < argc; ++i) {
    std::string command = argv[i];
    if (command == "out") {
      out(1, std::string(argument(argc, argv, ++i)) + "\n");
    } else if (command == "err") {
      out(2, std::string(argument(argc, argv, ++i)) + "\n");
    } else if (command == "sleep") {
      sleep_seconds(std::strtod(argument(argc, argv, ++i), nullptr));
    } else if (command == "exit") {
      return static_cast<int>(std::strtol(argument(argc, argv, ++i), nullptr, 10));
    } else if (command == "stop-self") {
      raise(SIGSTOP);
    } else if (command == "await-usr1") {
      double seconds = std::strtod(argument(argc, argv, ++i), nullptr);
      timespec timeout{};
      timeout.tv_sec = static_cast<time_t>(seconds);
      int got;
      do {
        got = sigtimedwait(&usr1, nullptr, &timeout);
      } while (got < 0 && errno == EINTR);
      if (got != SIGUSR1) {
        out(2, "hostile_child: no SIGUSR1 in time\n");
        return 98;
      }
    } else if (command == "stopped-grandchild") {
      double seconds = std::strtod(argument(argc, argv, ++i), nullptr);
      pid_t pid = fork();
      if (pid == 0) {
        raise(SIGSTOP);
        sleep_seconds(seconds);
        _exit(0);
      }
      if (pid < 0) return 97;
      int status = 0;
      pid_t got;
      do {
        got = waitpid(pid, &status, WUNTRACED);
      } while (got < 0 && errno == EINTR);
      if (got != pid || !WIFSTOPPED(status)) {
        out(2, "hostile_child: the grandchild did not stop\n");
        return 97;
      }
      out(1, "grandchild stopped " + std::to_string(pid) + "\n");
    } else if (command == "join-parent-group") {  // leaves its own group for its parent's
      if (setpgid(0, getpgid(getppid())) != 0) {
        out(2, "hostile_child: setpgid failed\n");
        return 96;
      }
      out(1, "joined\n");
    } else if (command == "fd-open") {
      int fd = static_cast<int>(std::strtol(argument(argc, argv, ++i), nullptr, 10));
      out(1, "fd " + std::to_string(fd) + (fcntl(fd, F_GETFD) != -1 ? " open\n" : " closed\n"));
    } else if (command == "ignore-term") {
      signal(SIGTERM, SIG_IGN);
    } else if (command == "escape-setsid") {
      const char* file = argument(argc, argv, ++i);
      timespec deadline = deadline_after(std::strtod(argument(argc, argv, ++i), nullptr));
      pid_t pid = fork();
      if (pid == 0) {
        ignore_stop_signals();
        setsid();
        drop_output_pipes();
        record_self(file);
        live_until(deadline);
      }
      if (pid < 0) return 95;
    } else if (command == "escape-respawn") {
      const char* file = argument(argc, argv, ++i);
      timespec deadline = deadline_after(std::strtod(argument(argc, argv, ++i), nullptr));
      pid_t pid = fork();
      if (pid == 0) {
        ignore_stop_signals();
        setsid();
        for (;;) {
          record_self(file);
          if (past(deadline)) _exit(0);
          // 10 to 20 ms per generation.
          sleep_seconds(0.010 + 0.001 * static_cast<double>(getpid() % 11));
          if (past(deadline)) _exit(0);
          pid_t next = fork();
          if (next > 0) _exit(0);  // the next generation goes on
          // next == 0: the new generation; next < 0: this one stays and tries again
        }
      }
      if (pid < 0) return 95;
    } else if (command == "escape-scm-rights") {
      const char* file = argument(argc, argv, ++i);
      timespec deadline = deadline_after(std::strtod(argument(argc, argv, ++i), nullptr));
      pid_t pid = fork();
      if (pid == 0) {
        ignore_stop_signals();
        setsid();
        int sockets[2] = {-1, -1};
        if (!park_output_pipes(sockets)) _exit(94);
        close_all_but(sockets[0], sockets[1]);
        record_self(file);
        live_until(deadline);
      }
      if (pid < 0) return 95;
    } else if (command == "escape-nondumpable") {
      const char* file = argument(argc, argv, ++i);
      timespec deadline = deadline_after(std::strtod(argument(argc, argv, ++i), nullptr));
#ifndef __linux__
      (void)deadline;
      (void)file;
      out(2, "hostile_child: escape-nondumpable needs Linux (prctl)\n");
      return 99;
#else
      pid_t pid = fork();
      if (pid == 0) {
        ignore_stop_signals();
        if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) _exit(94);
        setsid();
        record_self(file);
        live_until(deadline);
      }
      if (pid < 0) return 95;
#endif
    } else if (command == "fork-bomb") {
      const char* file = argument(argc, argv, ++i);
      long count = std::strtol(argument(argc, argv, ++i), nullptr, 10);
      timespec deadline = deadline_after(std::strtod(argument(argc, argv, ++i), nullptr));
      if (count > 0) {
        pid_t pid = fork();
        if (pid == 0) bomb_process(file, 0, static_cast<int>(count - 1), deadline);
        if (pid < 0) return 95;
      }
    } else {
      out(2, "hostile_child: unknown command '" + command + "'\n");
      return 99;
    }
  }
  return 0;
}

#endif  // !_WIN32
