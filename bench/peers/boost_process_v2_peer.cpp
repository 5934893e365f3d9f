// Boost.Process v2 (Boost 1.81): header-only by default (config.hpp defines
// BOOST_PROCESS_V2_HEADER_ONLY unless BOOST_PROCESS_V2_SEPARATE_COMPILATION
// is set), so no compiled part is needed. It uses Boost.Filesystem unless
// BOOST_PROCESS_USE_STD_FS is defined, and Debian's libboost1.81-dev ships no
// compiled Boost.Filesystem, so the build defines BOOST_PROCESS_USE_STD_FS.
// Its default launcher on POSIX is fork() + execve().
//
// With BOOST_PROCESS_USE_STD_FS, 1.81's headers use boost::optional and
// boost::decay without including them: include both first.
#include <boost/optional.hpp>
#include <boost/type_traits/decay.hpp>
//
#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/readable_pipe.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/process/v2/process.hpp>
#include <boost/process/v2/stdio.hpp>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "bench_common.hpp"
#include "peers/peers.hpp"

namespace modkit_bench {
namespace {

namespace asio = boost::asio;
namespace bp = boost::process::v2;

class BoostSpawner {
 public:
  void operator()() {
    asio::readable_pipe out(context_), err(context_);
    bp::process child(context_, child_path(), {"exit"}, bp::process_stdio{nullptr, out, err});
    // Both streams concurrently, as a user must (a sequential read could
    // deadlock on a full pipe); the completion handlers count EOFs.
    int open_streams = 2;
    char out_buffer[4096], err_buffer[4096];
    std::function<void(asio::readable_pipe&, char*)> read_more = [&](asio::readable_pipe& pipe, char* buffer) {
      pipe.async_read_some(asio::buffer(buffer, 4096), [&, buffer](boost::system::error_code error, std::size_t) {
        if (error) {
          --open_streams;
          return;
        }
        read_more(pipe, buffer);
      });
    };
    read_more(out, out_buffer);
    read_more(err, err_buffer);
    context_.restart();
    context_.run();
    if (open_streams != 0) std::abort();
    int code = child.wait();
    if (code != 0) std::abort();
  }

 private:
  asio::io_context context_;
};

}  // namespace

std::function<void()> make_boost_process_v2_spawner() {
  auto spawner = std::make_shared<BoostSpawner>();
  return [spawner] { (*spawner)(); };
}

}  // namespace modkit_bench
