# The library's sources, shared by CMakeLists.txt. The Makefile keeps the same
# lists (core, posix) for builds without CMake.
set(MODKIT_CORE_SOURCES
  src/core/cancellation.cpp
  src/core/config_validation.cpp
  src/core/level.cpp
  src/core/line_splitter.cpp
  src/core/local_process_backend.cpp
  src/core/log_sinks.cpp
  src/core/result.cpp
  src/core/types.cpp
  src/core/utf8.cpp
  src/core/uuid.cpp)
set(MODKIT_POSIX_SOURCES
  src/posix/environment.cpp
  src/posix/exit_monitor.cpp
  src/posix/pipe_reader.cpp
  src/posix/process.cpp
  src/posix/system.cpp
  src/posix/thread.cpp)
set(MODKIT_WIN32_SOURCES
  src/win32/command_line.cpp
  src/win32/environment_block.cpp
  src/win32/exit_monitor.cpp
  src/win32/pipe_reader.cpp
  src/win32/process.cpp
  src/win32/system.cpp
  src/win32/thread.cpp)
