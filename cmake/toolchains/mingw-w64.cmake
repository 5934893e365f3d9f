# Cross-building modkit for Windows (x86_64) with MinGW-w64 on Debian/Ubuntu.
#
#   cmake -S . -B build-win32 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/mingw-w64.cmake
#
# Needs g++-mingw-w64-x86-64-posix: only the posix thread model has std::thread,
# std::mutex and std::condition_variable under GCC 12, so the compilers are
# named with their -posix suffix (the plain names may point at the win32 model).
# Everything is linked statically: the executables import only system DLLs
# (KERNEL32, msvcrt, ...), so nothing has to be copied next to them.
# ctest runs each test through wine (CMAKE_CROSSCOMPILING_EMULATOR); see
# scripts/win32-test.sh for the sequence that keeps wine from hanging ctest.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(MODKIT_MINGW_PREFIX x86_64-w64-mingw32 CACHE STRING "MinGW-w64 target triple")
set(CMAKE_C_COMPILER   ${MODKIT_MINGW_PREFIX}-gcc-posix)
set(CMAKE_CXX_COMPILER ${MODKIT_MINGW_PREFIX}-g++-posix)
set(CMAKE_RC_COMPILER  ${MODKIT_MINGW_PREFIX}-windres)

set(CMAKE_FIND_ROOT_PATH /usr/${MODKIT_MINGW_PREFIX})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Fully static: libstdc++, libgcc and winpthreads are linked in.
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static")

if(NOT DEFINED CMAKE_CROSSCOMPILING_EMULATOR)
  set(CMAKE_CROSSCOMPILING_EMULATOR wine)
endif()
