// Fuzzes validate_config against an independent statement of the rules: it
// accepts exactly the configs the rules allow, the request it builds carries
// the config unchanged, and a refusal is an invalid_argument with a message.
//
// Input: [flags][kind] then fields separated by 0x01: name, binary, working
// directory, then args and env entries ("key=value" split at the first 0x02)
// until the end. NUL bytes pass through into the fields.
#include <cstdint>
#include <string>

#include "core/config_validation.hpp"
#include "fuzz_support.hpp"

using namespace modkit;
using namespace modkit::fuzz;

namespace {

bool has_nul(const std::string& text) { return text.find('\0') != std::string::npos; }

bool allowed(const OopModuleConfig& config) {
  if (config.backend != BackendKind::LocalProcess) return false;
  if (config.name.empty() || has_nul(config.name)) return false;
  if (!config.binary || config.binary->empty() || has_nul(*config.binary)) return false;
  for (const auto& arg : config.args) {
    if (has_nul(arg)) return false;
  }
  for (const auto& [key, value] : config.env) {
    if (key.empty() || key.find('=') != std::string::npos || has_nul(key) || has_nul(value)) return false;
  }
  if (config.working_directory && (config.working_directory->empty() || has_nul(*config.working_directory))) {
    return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input input(data, size);
  std::uint8_t flags = input.byte();
  OopModuleConfig config;
  config.backend = static_cast<BackendKind>(input.byte() % 4);
  config.name = std::string(input.until('\x01'));
  std::string binary(input.until('\x01'));
  if (flags & 1) config.binary = binary;
  std::string directory(input.until('\x01'));
  if (flags & 2) config.working_directory = directory;
  config.clear_environment = flags & 4;
  config.allow_batch_files = flags & 8;
  config.graceful_stop = static_cast<GracefulStop>((flags >> 4) % 3);
  if (flags & 64) config.version = "1.0";
  while (!input.empty()) {
    std::string_view field = input.until('\x01');
    std::size_t split = field.find('\x02');
    if (split == std::string_view::npos) {
      config.args.emplace_back(field);
    } else {
      config.env[std::string(field.substr(0, split))] = std::string(field.substr(split + 1));
    }
  }

  auto request = validate_config(config);
  MODKIT_FUZZ_CHECK(request.has_value() == allowed(config), "validate_config disagrees with the rules");
  if (!request) {
    MODKIT_FUZZ_CHECK(request.error().code == std::make_error_code(std::errc::invalid_argument), "wrong error code");
    MODKIT_FUZZ_CHECK(!request.error().message.empty(), "empty error message");
    if (config.backend == BackendKind::LocalProcess && !config.name.empty() && !has_nul(config.name)) {
      MODKIT_FUZZ_CHECK(request.error().message.find(config.name) != std::string::npos,
                        "the message does not name the module");
    }
    return 0;
  }
  MODKIT_FUZZ_CHECK(request->module == config.name, "module changed");
  MODKIT_FUZZ_CHECK(request->binary == *config.binary, "binary changed");
  MODKIT_FUZZ_CHECK(request->args == config.args, "args changed");
  MODKIT_FUZZ_CHECK(request->working_directory == config.working_directory, "working directory changed");
  MODKIT_FUZZ_CHECK(request->clear_environment == config.clear_environment, "clear_environment changed");
  MODKIT_FUZZ_CHECK(request->graceful_stop == config.graceful_stop, "graceful_stop changed");
  MODKIT_FUZZ_CHECK(request->allow_batch_files == config.allow_batch_files, "allow_batch_files changed");
  MODKIT_FUZZ_CHECK(request->env.size() == config.env.size(), "env entries lost or added");
  std::size_t i = 0;
  for (const auto& entry : config.env) {
    MODKIT_FUZZ_CHECK(request->env[i].first == entry.first && request->env[i].second == entry.second, "env changed");
    ++i;
  }
  return 0;
}
