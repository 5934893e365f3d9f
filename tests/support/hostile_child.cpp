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
#ifdef _WIN32
int main() { return 99; }
#else

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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
    } else {
      out(2, "hostile_child: unknown command '" + command + "'\n");
      return 99;
    }
  }
  return 0;
}

#endif  // !_WIN32
