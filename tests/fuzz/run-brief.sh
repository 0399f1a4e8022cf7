#!/bin/sh
# Runs a libFuzzer target for a few seconds from its committed corpus. New inputs go to a
# scratch directory, so the source tree is not modified; a crash fails the test and leaves
# the reproducer in the scratch directory, whose path is printed.
set -eu
bin=$1 corpus=$2 seconds=$3
scratch=$(mktemp -d "${TMPDIR:-/tmp}/pd-fuzz.XXXXXX")
echo "fuzzing $(basename "$bin") for ${seconds}s; scratch corpus: $scratch"
cd "$scratch"
"$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "$scratch" "$corpus"
rm -rf "$scratch"
