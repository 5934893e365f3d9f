// Hostile modules for the regression tests: each command misbehaves in one
// way a module can (see tests/regression/). Usage: hostile_child <command> ...
#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: hostile_child <command>\n");
    return 99;
  }
  std::fprintf(stderr, "hostile_child: unknown command '%s'\n", argv[1]);
  return 99;
}
