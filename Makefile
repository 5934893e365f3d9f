# modkit's plain Makefile.
#
#   make lib     libmodkit.a with nothing but a C++17 compiler and ar (no CMake)
#   make run     build with CMake and run the demo supervisor on its built-in example
#                (a crash loop backing off and giving up, modules becoming ready, a module
#                ended by its address-space limit, a clean shutdown)
#   make test    build with CMake and run the test suite through ctest
#   make bench   the footprint (bench/footprint.sh), then build and run the benchmarks (see bench/)
#   make soak    the long stress run;  make fuzz: the fuzzers, longer than CI
#   make win32   cross-build for Windows with MinGW-w64 and run the suite under Wine
#
# `make lib` warns but does not stop on warnings (a vendoring host's newer
# compiler may warn where ours does not); WERROR=1 makes them errors, as CI does:
#   make lib WERROR=1

CXX      ?= c++
AR       ?= ar
CXXFLAGS ?= -O2 -g
WERROR   ?= 0
MODKIT_CXXFLAGS = -std=c++17 -Wall -Wextra -Wpedantic $(if $(filter 1,$(WERROR)),-Werror) -Iinclude -Isrc -pthread
BUILD    ?= build
OUT      ?= out

CORE_SOURCES  = $(wildcard src/core/*.cpp src/mock/*.cpp src/supervision/*.cpp)
POSIX_SOURCES = $(wildcard src/posix/*.cpp)
LIB_OBJECTS   = $(patsubst src/%.cpp,$(OUT)/obj/%.o,$(CORE_SOURCES) $(POSIX_SOURCES))

.PHONY: lib run test bench soak fuzz win32 clean

lib: $(OUT)/libmodkit.a

$(OUT)/libmodkit.a: $(LIB_OBJECTS)
	$(AR) rcs $@ $^

$(OUT)/obj/%.o: src/%.cpp $(wildcard include/modkit/*.hpp src/*/*.hpp)
	@mkdir -p $(dir $@)
	$(CXX) $(MODKIT_CXXFLAGS) $(CXXFLAGS) -c $< -o $@

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

run: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) --target modkit-run -j2
	@# The example's "flaky" module gives up by design, so modkit-run exits with 3.
	$(BUILD)/tools/modkit-run --seconds 5 --grace 2000 --example; code=$$?; \
	  echo "modkit-run exited with $$code (3: a module gave up, as the example's flaky one does)"; \
	  test $$code -eq 3

test: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j2
	cd $(BUILD) && ctest --output-on-failure -j2

bench:
	@# Footprint first: it compiles (no timing), so it must not overlap the timed runs.
	bash bench/footprint.sh $(BUILD)-footprint
	cmake -S . -B $(BUILD)-bench -DCMAKE_BUILD_TYPE=Release -DMODKIT_BUILD_BENCH=ON -DMODKIT_BUILD_TESTS=OFF
	cmake --build $(BUILD)-bench -j2
	bash scripts/bench.sh $(BUILD)-bench

soak:
	bash scripts/soak.sh

fuzz:
	bash scripts/fuzz.sh $${FUZZ_SECONDS:-600}

win32:
	bash scripts/win32-test.sh

clean:
	rm -rf $(OUT) $(BUILD) $(BUILD)-bench $(BUILD)-footprint
