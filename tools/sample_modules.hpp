// The built-in example's modules: modkit-run re-runs itself as each of them.
#pragma once

#include <string_view>

namespace modkit_run {

/// Runs the sample module `kind` ("api", "worker", "flaky", "hog"); returns its exit code,
/// or -1 if there is no such sample.
int run_sample_module(std::string_view kind);

}  // namespace modkit_run
