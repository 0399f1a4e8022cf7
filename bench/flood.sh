#!/usr/bin/env bash
# The durable-write flood, BEFORE and AFTER in the same run (bench/flood.mjs does the
# measuring): one connection pipelines add_contact/remove_contact as fast as it can for
# --seconds against the embedded store with a data directory on disk, while a bystander on
# another connection pings every 10 ms; printed per run: the bystander's p50/p99/max and lost
# pings, the flooder's sent/acked/refused and when its last answer came, and the machine.
#
# Runs without the per-connection rate limit (--rate-limit 0 where the build has it): the
# store must stand on its own against one connection that pipelines.
#
# BEFORE is the parent of the commit that took SQLite off the loop thread (the first commit
# whose persist.h has persist_start); AFTER is --after (default HEAD). Each is built from a
# clean git worktree (/tmp/pd-before, /tmp/pd-after: uncommitted work in this checkout is not
# measured), RelWithDebInfo, and both run the same way, alternately, --runs times each.
#
# Usage: bench/flood.sh [--seconds N] [--runs N] [--before REV] [--after REV] [--no-build]
#                       [--window N]
# Env:   OUT (logs; default a new /tmp directory), DATA (where the data directories go; default
#        $OUT: it must be a disk, not tmpfs, for the figures to mean anything)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$(mktemp -d /tmp/pd-bench-flood.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=${DATA:-$OUT}
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

seconds=2
runs=3
before=
after=HEAD
build=1
window=0
while [ $# -gt 0 ]; do
    case $1 in
    --seconds) seconds=$2; shift ;;
    --runs) runs=$2; shift ;;
    --before) before=$2; shift ;;
    --after) after=$2; shift ;;
    --no-build) build=0 ;;
    --window) window=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "$before" ]; then
    first=$(git -C "$ROOT" log --reverse --format=%H -S persist_start -- src/store/persist.h | head -n1)
    [ -n "$first" ] || { echo "no commit adds persist_start: pass --before REV" >&2; exit 2; }
    before=$(git -C "$ROOT" rev-parse "$first^")
fi
after=$(git -C "$ROOT" rev-parse "$after")
# worktree DIR REV: a clean checkout of REV at DIR, built into DIR/build-rel.
worktree() {
    local dir=$1 rev=$2
    if [ -d "$dir" ] && [ "$(git -C "$dir" rev-parse HEAD 2>/dev/null)" != "$rev" ]; then
        git -C "$ROOT" worktree remove --force "$dir"
    fi
    [ -d "$dir" ] || git -C "$ROOT" worktree add --detach "$dir" "$rev" >/dev/null
    cmake -S "$dir" -B "$dir/build-rel" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$OUT/cmake-$(basename "$dir").log"
    cmake --build "$dir/build-rel" -j"$(nproc)" --target presenced >>"$OUT/cmake-$(basename "$dir").log"
}
if [ "$build" = 1 ]; then
    worktree /tmp/pd-before "$before"
    worktree /tmp/pd-after "$after"
fi
BIN_BEFORE=/tmp/pd-before/build-rel/presenced
BIN_AFTER=/tmp/pd-after/build-rel/presenced

bench_machine
echo "disk:    $(df -T "$DATA" | awk 'NR == 2 { print $2 " (" $1 ")" }') for the data directories"
echo "before:  $(git -C "$ROOT" log -1 --format='%h %s' "$before" | cut -c1-100)"
echo "after:   $(git -C "$ROOT" log -1 --format='%h %s' "$after" | cut -c1-100)"
echo "flood:   ${seconds} s, window ${window} (0: only socket backpressure), ping every 10 ms, ${runs} runs each"
echo

run_one() {
    local label=$1 bin=$2 n=$3
    local dir="$DATA/data-$label-$n" log="$OUT/presenced-$label-$n.log"
    rm -rf "$dir"
    # The store must stand on its own: no per-connection rate limit where the build has one.
    local extra=()
    local help
    help=$("$bin" --help 2>&1 || true) # not piped into grep -q: pipefail and SIGPIPE
    case $help in *--rate-limit*) extra=(--rate-limit 0) ;; esac
    bench_start "presenced ($label)" "$log" "$bin" --dev-auth --listen 127.0.0.1:0 \
        --data-dir "$dir" --heartbeat-ttl 5 "${extra[@]}" || return 1
    local pid=$BENCH_PID
    bench_run node "$ROOT/bench/flood.mjs" --port "$BENCH_PORT" --seconds "$seconds" \
        --window "$window" --label "$label #$n" | tee "$OUT/flood-$label-$n.txt" | grep -v '^RESULT'
    bench_stop "$pid"
}

for n in $(seq 1 "$runs"); do
    run_one before "$BIN_BEFORE" "$n"
    run_one after "$BIN_AFTER" "$n"
done

echo
echo "summary (bystander round trip, ms; flooder):"
printf '%-8s %4s %9s %9s %9s %6s %9s %9s %9s %7s\n' build run p50 p99 max lost sent acked refused busy_s
for f in "$OUT"/flood-*.txt; do
    grep '^RESULT' "$f" | sed 's/^RESULT //' | node -e '
        const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
        const [b, n] = r.label.split(" #");
        const x = r.bystander, y = r.flooder;
        console.log([b.padEnd(8), n.padStart(4), String(x.p50_ms).padStart(9), String(x.p99_ms).padStart(9),
            String(x.max_ms).padStart(9), String(x.lost).padStart(6), String(y.sent).padStart(9),
            String(y.acked).padStart(9), String(y.refused).padStart(9), String(y.busy_s).padStart(7)].join(" "));'
done
echo "logs: $OUT"
