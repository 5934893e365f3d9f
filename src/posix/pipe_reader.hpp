// The POSIX PipeReader: a non-blocking read end plus a shared eventfd that
// interrupts it.
#pragma once

#include <memory>

#include "platform/pipe.hpp"
#include "posix/unique_fd.hpp"

namespace modkit::posix {

class PosixPipeReader final : public platform::PipeReader {
 public:
  /// `pipe` must be O_NONBLOCK; `wake` is an eventfd shared with the sibling reader.
  PosixPipeReader(UniqueFd pipe, std::shared_ptr<UniqueFd> wake) : pipe_(std::move(pipe)), wake_(std::move(wake)) {}
  std::ptrdiff_t read(char* buffer, std::size_t size) override;
  void interrupt() override;

 private:
  UniqueFd pipe_;
  std::shared_ptr<UniqueFd> wake_;
};

}  // namespace modkit::posix
