#!/usr/bin/env bash
# Builds presenced and runs every test: the format check, unit tests, fuzz corpora and short
# fuzzing runs, integration tests against the real daemon, browser tests in headless
# Chromium. The test build uses clang with AddressSanitizer + UndefinedBehaviorSanitizer and
# libFuzzer instrumentation; a gcc release build is also made so both compilers stay clean.
#   PD_FUZZ_SECONDS=N   seconds per fuzz target (default 10)
#   CTEST_ARGS="..."    extra arguments for ctest (e.g. "-L unit" or "-R integration/")
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh test

jobs=$(nproc)
echo "== release build (gcc)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPD_TESTS=OFF >/dev/null
cmake --build build -j"$jobs"

echo "== test build (clang, ASan + UBSan, libFuzzer)"
cmake -S . -B build-test -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DPD_SANITIZE=ON \
    -DPD_FUZZ=ON -DPD_BENCH=OFF -DPD_FUZZ_SECONDS="${PD_FUZZ_SECONDS:-10}" \
    -DPD_RELEASE_BIN="$PWD/build/presenced" >/dev/null
cmake --build build-test -j"$jobs"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
echo "== tests"
# shellcheck disable=SC2086
ctest --test-dir build-test --output-on-failure -j"$jobs" ${CTEST_ARGS:-}
