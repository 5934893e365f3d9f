// libuv's uv_spawn: the child's stdout and stderr as uv_pipe_t, read to EOF,
// exit observed by the loop's SIGCHLD handling.
#include <uv.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "bench_common.hpp"
#include "peers/peers.hpp"

namespace modkit_bench {
namespace {

struct Cycle {
  uv_process_t process;
  uv_pipe_t pipes[2];
  int open_handles = 0;
  bool exited = false;
  char buffer[4096];
};

void check(int result, const char* what) {
  if (result < 0) {
    std::fprintf(stderr, "bench: libuv %s: %s\n", what, uv_strerror(result));
    std::abort();
  }
}

void on_close(uv_handle_t* handle) { --static_cast<Cycle*>(handle->data)->open_handles; }

void on_alloc(uv_handle_t* handle, size_t, uv_buf_t* buf) {
  auto* cycle = static_cast<Cycle*>(handle->data);
  *buf = uv_buf_init(cycle->buffer, sizeof cycle->buffer);
}

void on_read(uv_stream_t* stream, ssize_t count, const uv_buf_t*) {
  if (count < 0) uv_close(reinterpret_cast<uv_handle_t*>(stream), on_close);  // UV_EOF or error
}

void on_exit(uv_process_t* process, int64_t, int) {
  static_cast<Cycle*>(process->data)->exited = true;
  uv_close(reinterpret_cast<uv_handle_t*>(process), on_close);
}

class LibuvSpawner {
 public:
  LibuvSpawner() { check(uv_loop_init(&loop_), "uv_loop_init"); }
  ~LibuvSpawner() {
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
  }
  LibuvSpawner(const LibuvSpawner&) = delete;
  LibuvSpawner& operator=(const LibuvSpawner&) = delete;

  void operator()() {
    Cycle cycle;
    for (auto& pipe : cycle.pipes) {
      check(uv_pipe_init(&loop_, &pipe, 0), "uv_pipe_init");
      pipe.data = &cycle;
      ++cycle.open_handles;
    }
    uv_stdio_container_t stdio[3];
    stdio[0].flags = UV_IGNORE;  // libuv opens /dev/null
    for (int i = 0; i < 2; ++i) {
      stdio[i + 1].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
      stdio[i + 1].data.stream = reinterpret_cast<uv_stream_t*>(&cycle.pipes[i]);
    }
    char* args[] = {const_cast<char*>(child_path()), const_cast<char*>("exit"), nullptr};
    uv_process_options_t options{};
    options.file = child_path();
    options.args = args;
    options.exit_cb = on_exit;
    options.stdio_count = 3;
    options.stdio = stdio;
    cycle.process.data = &cycle;
    check(uv_spawn(&loop_, &cycle.process, &options), "uv_spawn");
    ++cycle.open_handles;
    for (auto& pipe : cycle.pipes) {
      check(uv_read_start(reinterpret_cast<uv_stream_t*>(&pipe), on_alloc, on_read), "uv_read_start");
    }
    while (cycle.open_handles > 0) uv_run(&loop_, UV_RUN_ONCE);
    if (!cycle.exited) std::abort();
  }

 private:
  uv_loop_t loop_;
};

}  // namespace

std::function<void()> make_libuv_spawner() {
  auto spawner = std::make_shared<LibuvSpawner>();
  return [spawner] { (*spawner)(); };
}

}  // namespace modkit_bench
