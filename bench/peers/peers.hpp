// The peers a user would pick instead of modkit, each in its own translation
// unit so the bench builds without them (MODKIT_BENCH_HAVE_LIBUV,
// MODKIT_BENCH_HAVE_BOOST_PROCESS_V2 are defined only when they were found).
#pragma once

#include <functional>

namespace modkit_bench {

// Each returns a callable doing one spawn cycle of the helper child in "exit"
// mode, as the library's users would write it: stdout and stderr piped, both
// read to EOF, the child reaped. The callable owns its event loop / context,
// which is reused across calls. It aborts on failure.
#ifdef MODKIT_BENCH_HAVE_LIBUV
std::function<void()> make_libuv_spawner();
#endif
#ifdef MODKIT_BENCH_HAVE_BOOST_PROCESS_V2
std::function<void()> make_boost_process_v2_spawner();
#endif

}  // namespace modkit_bench
