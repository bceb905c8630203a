# Thin wrapper around CMake, Ninja, CTest and pytest. `make demo` and `make test` are each the
# only command needed on a fresh Debian 12 machine: they install missing packages first.

BUILD      ?= build
TEST_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
JOBS       ?= $(shell nproc)
PYTHON     ?= /usr/bin/python3
CMAKE_ARGS ?=

# CI treats warnings as errors.
ifdef CI
CMAKE_ARGS += -DHQ_WERROR=ON
endif

.PHONY: all deps build demo test unit integration bench fuzz format clean

all: build

deps:
	@tools/install-deps

# Release build (optimized, with debug info): the binary of the demo and the benchmarks.
build: deps
	@[ -f $(BUILD)/build.ninja ] || cmake -S . -B $(BUILD) -G Ninja \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_ARGS)
	ninja -C $(BUILD) -j $(JOBS)

# Builds only the `hq` binary, then runs the demo with it.
demo: deps
	@[ -f $(BUILD)/build.ninja ] || cmake -S . -B $(BUILD) -G Ninja \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_ARGS)
	ninja -C $(BUILD) -j $(JOBS) hq
	tools/demo $(BUILD)/hq

# Every test suite, on an ASan + UBSan build: unit tests (CTest) and integration tests (pytest).
test: deps
	@[ -f $(TEST_BUILD)/build.ninja ] || cmake -S . -B $(TEST_BUILD) -G Ninja \
	  -DCMAKE_BUILD_TYPE=Debug -DHQ_SANITIZE=ON -DHQ_BUILD_BENCHMARKS=OFF $(CMAKE_ARGS)
	ninja -C $(TEST_BUILD) -j $(JOBS)
	$(MAKE) unit integration

unit:
	ctest --test-dir $(TEST_BUILD) --output-on-failure -j $(JOBS)

integration:
	HQ_BIN=$(abspath $(TEST_BUILD))/hq $(PYTHON) -m pytest tests/integration -q -ra \
	  -n $(JOBS) --dist loadgroup

bench: build
	tools/bench-throughput --hq $(BUILD)/hq --baseline $(BUILD)/tools/spawn-baseline
	tools/bench-throughput --hq $(BUILD)/hq --zero-work --cpus 64 --repeat 2
	tools/bench-startup --hq $(BUILD)/hq
	tools/bench-journal --hq $(BUILD)/hq --tools $(BUILD)/tools
	tools/bench-journal --bytes-only --hq $(BUILD)/hq --cpus 2
	tools/bench-memory --hq $(BUILD)/hq
	$(BUILD)/tools/scheduler_bench
	tools/bench-graph --hq $(BUILD)/hq --repeat 1

# libFuzzer targets (clang, ASan + UBSan), each run for FUZZ_SECONDS.
fuzz: deps
	@[ -f $(FUZZ_BUILD)/build.ninja ] || CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -G Ninja \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHQ_SANITIZE=ON -DHQ_FUZZ=ON -DHQ_BUILD_BENCHMARKS=OFF
	ninja -C $(FUZZ_BUILD) -j $(JOBS) frame_decoder_fuzz journal_record_fuzz stream_reader_fuzz resources_fuzz
	for t in frame_decoder journal_record stream_reader resources; do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t && \
	  $(FUZZ_BUILD)/tests/fuzz/$${t}_fuzz -max_total_time=$(FUZZ_SECONDS) \
	    $(FUZZ_BUILD)/corpus/$$t || exit 1; \
	done

format:
	git ls-files '*.cc' '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD) $(TEST_BUILD)
