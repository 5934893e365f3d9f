// Footprint host (b), without modkit: the same as host_modkit.cpp with
// posix_spawn and a reader std::thread, using the same libstdc++ parts
// (std::string, std::thread, std::mutex, std::condition_variable,
// std::function, std::shared_ptr), so that the difference is modkit's own.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

extern char** environ;

int main() {
  auto state = std::make_shared<std::pair<std::mutex, std::condition_variable>>();
  bool ended = false;
  int code = -1;
  std::function<void(int)> on_exit = [&](int status) {
    std::lock_guard<std::mutex> lock(state->first);
    ended = true;
    code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    state->second.notify_all();
  };
  std::thread runner([&] {
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, out[1], 2);
    std::string binary = "/bin/true";
    char* argv[] = {binary.data(), nullptr};
    pid_t pid = -1;
    int error = posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    if (error != 0) return;
    std::string line;
    char buffer[4096];
    for (ssize_t got; (got = read(out[0], buffer, sizeof buffer)) > 0;) {
      for (ssize_t i = 0; i < got; ++i) {
        if (buffer[i] != '\n') {
          line += buffer[i];
          continue;
        }
        std::fprintf(stderr, "true: %s\n", line.c_str());
        line.clear();
      }
    }
    close(out[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
    }
    on_exit(status);
  });
  {
    std::unique_lock<std::mutex> lock(state->first);
    state->second.wait(lock, [&] { return ended; });
  }
  runner.join();
  std::fprintf(stderr, "module ended with code %d\n", code);
  return ended && code == 0 ? 0 : 1;
}
