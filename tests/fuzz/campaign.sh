#!/usr/bin/env bash
# A long fuzzing campaign over the libFuzzer targets of a PD_FUZZ=ON build.
#
#   tests/fuzz/campaign.sh [-j N] MINUTES [TARGET...]
#
# TARGET is a name such as proto or fuzz_proto; none means every tests/fuzz/fuzz_*.c. Each
# target runs for MINUTES minutes (-max_total_time) on a fresh work corpus seeded with a copy
# of its committed corpus, tests/fuzz/corpus/<target>/. A crash, leak, timeout or OOM stops
# libFuzzer: its artifact is kept in the findings directory and the target restarts for the
# time left (at most MAX_RESTARTS times), so one cheap finding does not end the campaign.
# Afterwards the new inputs are merged (-merge=1) into the committed corpus, which gains only
# the inputs that add coverage; review and commit them as usual.
#
# The binaries are copied before the first run, so rebuilding the tree during a campaign does
# not change what is fuzzed. Everything runs under nice -n 19 and every step is bounded by a
# timeout: the script stops by itself after about MINUTES * ceil(targets / N) minutes plus the
# merges.
#
# Environment:
#   BUILD_DIR     build directory whose tests/ (or tests/fuzz/) holds the fuzz_* binaries
#                 (default build-test; relative to the repository root unless absolute)
#   JOBS          targets fuzzed at once (default 1; -j N overrides)
#   WORK_DIR      scratch directory: binaries, work corpora, logs (default a new mktemp dir)
#   BIN_DIR       where the binaries are copied (default $WORK_DIR/bin)
#   FINDINGS_DIR  where crash/leak/timeout/oom artifacts go (default $WORK_DIR/findings)
#   MERGE         0 skips the merge into the committed corpus (default 1)
#   MAX_RESTARTS  restarts after a finding per target (default 5)
#   FUZZ_FLAGS    extra libFuzzer flags for the fuzzing runs
#
# Exit status: 0 when no target had findings, 1 when one had, 2 on a usage or setup error.
set -eu -o pipefail

usage() {
    echo "usage: $0 [-j N] MINUTES [TARGET...]" >&2
    exit 2
}

jobs=${JOBS:-1}
while getopts "j:h" opt; do
    case $opt in
    j) jobs=$OPTARG ;;
    *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
minutes=$1
shift
case $minutes in '' | *[!0-9]*) usage ;; esac
case $jobs in '' | *[!0-9]* | 0) usage ;; esac
[ "$minutes" -ge 1 ] || usage

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD_DIR:-build-test}
case $build in /*) ;; *) build=$root/$build ;; esac
work=${WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/pd-campaign.XXXXXX")}
bindir=${BIN_DIR:-$work/bin}
findings=${FINDINGS_DIR:-$work/findings}
merge=${MERGE:-1}
max_restarts=${MAX_RESTARTS:-5}
extra=${FUZZ_FLAGS:-}
seconds=$((minutes * 60))

targets=()
if [ $# -eq 0 ]; then
    for src in "$root"/tests/fuzz/fuzz_*.c; do
        t=$(basename "$src" .c)
        targets+=("${t#fuzz_}")
    done
else
    for t in "$@"; do targets+=("${t#fuzz_}"); done
fi

mkdir -p "$work" "$bindir" "$findings"
for t in "${targets[@]}"; do
    bin=$build/tests/fuzz_$t
    [ -x "$bin" ] || bin=$build/tests/fuzz/fuzz_$t
    if [ ! -x "$bin" ]; then
        echo "campaign: no fuzz binary fuzz_$t in $build/tests (configure with -DPD_FUZZ=ON, build)" >&2
        exit 2
    fi
    if [ ! -d "$root/tests/fuzz/corpus/$t" ]; then
        echo "campaign: no corpus directory tests/fuzz/corpus/$t" >&2
        exit 2
    fi
    # Copy unless BIN_DIR already holds this very binary (a second campaign on the same copies).
    if [ "$(readlink -f "$bin")" != "$(readlink -f "$bindir/fuzz_$t")" ]; then
        cp -f "$bin" "$bindir/fuzz_$t.tmp"
        mv -f "$bindir/fuzz_$t.tmp" "$bindir/fuzz_$t"
    fi
done

echo "campaign: ${#targets[@]} target(s) x ${minutes} min, ${jobs} at once; build $build"
echo "campaign: work $work, binaries $bindir, findings $findings"
echo "campaign: started $(date -u +%FT%TZ)"

count_files() { find "$1" -maxdepth 1 -type f | wc -l | tr -d ' '; }

# Fuzzes one target, merges, and writes "key=value" lines to $work/<target>/summary.
run_target() {
    local t=$1 bin=$bindir/fuzz_$1 committed=$root/tests/fuzz/corpus/$1
    local dir=$work/$1 corpus=$work/$1/corpus art=$findings/$1
    mkdir -p "$corpus" "$art"
    cp -f "$committed"/* "$corpus"/ 2>/dev/null || true
    local seeded before after start left runs=0 execs=0 n last=""
    seeded=$(count_files "$committed")
    start=$(date +%s)
    left=$seconds
    while [ "$left" -gt 0 ] && [ "$runs" -le "$max_restarts" ]; do
        runs=$((runs + 1))
        local log=$dir/fuzz.$runs.log
        # -timeout: one input running over 10 s is a finding; the outer timeout bounds the run
        # itself should libFuzzer ever hang (it kills the process group after a grace period).
        # shellcheck disable=SC2086
        (cd "$dir" && timeout -k 30 $((left + 120)) nice -n 19 "$bin" \
            -max_total_time="$left" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="$art/" $extra "$corpus") >"$log" 2>&1 || true
        n=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
        if [ -z "$n" ]; then # killed before its final stats: the last status line's count
            n=$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
        fi
        execs=$((execs + ${n:-0}))
        if grep -q 'cov: ' "$log"; then last=$(grep 'cov: ' "$log" | tail -n 1); fi
        # A clean end of -max_total_time is a DONE line; anything else ended on a finding
        # (or the outer timeout): restart for the time left.
        if grep -q '	DONE ' "$log"; then break; fi
        left=$((seconds - ($(date +%s) - start)))
    done
    local cov ft
    cov=$(printf '%s\n' "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(printf '%s\n' "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    # Counted just before the merge: files added to the committed corpus meanwhile (by hand,
    # or by another campaign) are not counted as merged.
    before=$(count_files "$committed")
    if [ "$merge" = 1 ]; then
        # Only the work corpus's inputs that add coverage to the committed corpus are copied
        # into it. The merge runs each input once, so it is bounded like a corpus replay.
        (cd "$dir" && timeout -k 30 $((seconds + 600)) nice -n 19 "$bin" -merge=1 \
            -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$art/" \
            "$committed" "$corpus") >"$dir/merge.log" 2>&1 || echo "merge_failed=1" >>"$dir/summary.tmp"
    fi
    after=$(count_files "$committed")
    local found
    found=$(find "$art" -maxdepth 1 -type f | sort | tr '\n' ' ')
    {
        echo "runs=$runs"
        echo "execs=$execs"
        echo "cov=${cov:-?}"
        echo "ft=${ft:-?}"
        echo "seeded=$seeded"
        echo "before=$before"
        echo "after=$after"
        echo "findings=$found"
        echo "last=$last"
    } >>"$dir/summary.tmp"
    mv "$dir/summary.tmp" "$dir/summary"
}

pids=()
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    mkdir -p "$work/$t"
    rm -f "$work/$t/summary" "$work/$t/summary.tmp"
    echo "campaign: fuzz_$t started $(date -u +%T)"
    run_target "$t" &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done

status=0
echo "campaign: finished $(date -u +%FT%TZ)"
for t in "${targets[@]}"; do
    s=$work/$t/summary
    echo "== fuzz_$t"
    if [ ! -f "$s" ]; then
        echo "   no summary (the run failed; logs in $work/$t)"
        status=1
        continue
    fi
    get() { sed -n "s/^$1=//p" "$s" | head -n 1; }
    echo "   executions: $(get execs) in $(get runs) run(s) of ${minutes} min total"
    echo "   coverage:   cov: $(get cov) ft: $(get ft)"
    if [ "$merge" = 1 ]; then
        b=$(get before) a=$(get after)
        echo "   corpus:     $b files before merge, $a after (+$((a - b))); seeded with $(get seeded)"
        if grep -q '^merge_failed=1' "$s"; then echo "   merge:      FAILED, see $work/$t/merge.log"; fi
    else
        echo "   corpus:     $(get before) files (merge skipped); seeded with $(get seeded)"
    fi
    f=$(get findings)
    if [ -z "$f" ]; then
        echo "   findings:   none"
    else
        status=1
        echo "   findings:"
        for a in $f; do echo "     $a"; done
    fi
    echo "   last line:  $(get last)"
done
exit $status
