# Switchyard — the README's commands. Each target installs missing Debian packages first.
#   make demo    build and run the main job
#   make test    build (warnings as errors) and run every test
#   make test-sanitize   the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench   build optimised and run the benchmarks; ends with `name: value` lines
#   make install libswitchyard.so, switchyard.h and the Python package under /usr/local
#   make fuzz    build the libFuzzer harnesses (clang) and run each FUZZ_SECONDS; fails on a crash
JOBS ?= $(shell nproc)
BUILD ?= build
CMAKE_FLAGS ?=

FUZZ_SECONDS ?= 60
FUZZ_BUILD ?= build-fuzz
FUZZ_TARGETS ?=

.PHONY: all deps build test test-sanitize fuzz demo bench install clean format

all: build

deps:
	@scripts/install-deps.sh

$(BUILD)/CMakeCache.txt: | deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSWITCHYARD_WERROR=ON $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

# scripts/with-blas-core.sh: OpenBLAS's fast kernels where it would fall back to generic ones.
BLAS := $(CURDIR)/scripts/with-blas-core.sh

test: build
	cd $(BUILD) && $(BLAS) ctest --output-on-failure -j $(JOBS)

test-sanitize: deps
	cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=Debug -DSWITCHYARD_WERROR=ON -DSWITCHYARD_SANITIZE=ON \
	  -DSWITCHYARD_CUDA=OFF -DSWITCHYARD_BUILD_BENCH=OFF
	cmake --build build-sanitize -j $(JOBS)
	cd build-sanitize && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  $(BLAS) ctest --output-on-failure -j $(JOBS) -LE learning

# libFuzzer + ASan + UBSan over the parsers and the servers' message checks (fuzz/).
fuzz: deps
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSWITCHYARD_FUZZ=ON \
	  -DSWITCHYARD_CUDA=OFF -DSWITCHYARD_BUILD_TESTS=OFF -DSWITCHYARD_BUILD_BENCH=OFF $(CMAKE_FLAGS)
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_all
	scripts/run-fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

demo: build
	$(BLAS) scripts/demo.sh $(BUILD)

bench: build
	$(BLAS) scripts/run-bench.sh $(BUILD)

install: build
	cmake --install $(BUILD) --prefix /usr/local
	ldconfig

format:
	git ls-files '*.cc' '*.h' '*.cu' | xargs clang-format -i

clean:
	rm -rf $(BUILD) build-sanitize $(FUZZ_BUILD)
