#!/usr/bin/env bash
# Rooms benchmarks (issue #4). Builds a Release presenced and the load generators in $BUILD,
# then measures on loopback, each figure --runs times (2 by default) on a fresh server:
#   1. a join storm (bench_rooms --mode storm): 10,000 connections join one room at once, with
#      --max-room-members 20000 and the default --room-announce-max (100), so the room switches
#      to interval mode; once with the default --out-max (1 MiB) and once with --out-max 4M;
#   2. cursor fan-out (bench_rooms --mode cursor): 50 editors in one document, --cursor-hz 30,
#      each moving its cursor at 30 Hz for 20 s; and at 20 Hz (under the server's limit);
# and prints the figures with the machine. About 3 minutes with 2 runs.
#
# Usage: bench/run-rooms.sh [--quick] [--runs N] [--no-build] [--only storm|cursor]
#   --quick     a smoke run: 2,000 connections, 5-s cursor runs
#   --no-build  use the binaries already in $BUILD
# Env:   BUILD (default build-bench), OUT (logs and raw figures; default a new /tmp directory),
#        PD_BENCH_SOURCE (what to print as the source measured, when not a git checkout),
#        PRESENCED_BIN (the server to measure; default $BUILD/presenced)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
OUT=${OUT:-$(mktemp -d /tmp/pd-bench-rooms.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

quick=0
build=1
runs=2
only=all
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1 ;;
    --no-build) build=0 ;;
    --runs) runs=$2; shift ;;
    --only) only=$2; shift ;;
    *) sed -n '2,17p' "$0" >&2; exit 2 ;;
    esac
    shift
done

if [ $quick = 1 ]; then
    storm_conns=2000 cursor_seconds=5
else
    storm_conns=10000 cursor_seconds=20
fi
server_flags=(--dev-auth --ephemeral --listen 127.0.0.1:0 --heartbeat-ttl 3600 --rate-limit 0 --max-connections-per-user 0)

start=$(date +%s)
if [ $build = 1 ]; then
    bench_build || exit 1
fi

echo
echo "== machine"
bench_machine
echo "logs:    $OUT"

status=0
failed() {
    echo "note: $1 reported a failure (see its messages above)" >&2
    status=1
}

# storm RUN NAME OUT_MAX: one join storm against a fresh server.
storm() {
    local r=$1 name=$2 out_max=$3 pid port
    bench_start presenced "$OUT/$name-$r.log" "$(bench_server_bin)" "${server_flags[@]}" \
        --max-room-members 20000 --out-max "$out_max"
    pid=$BENCH_PID port=$BENCH_PORT
    bench_run timeout 300 "$BUILD/bench/bench_rooms" --mode storm --port "$port" --pid "$pid" \
        --conns "$storm_conns" --procs 2 --src-base 90 --users "st$r" --timeout 120 \
        --label "$name" >>"$OUT/storm-$r.txt" || failed "bench_rooms --mode storm ($name)"
    bench_stop "$pid"
    # The server's own account of connections it closed for slow output.
    echo "$name: server log lines 'closing (1008)': $(grep -c 'closing (1008)' "$OUT/$name-$r.log" || true)"
}

# cursor RUN HZ: 50 editors at HZ against a fresh server with --cursor-hz 30.
cursor() {
    local r=$1 hz=$2 pid port
    bench_start presenced "$OUT/cursor-$hz-$r.log" "$(bench_server_bin)" "${server_flags[@]}" \
        --cursor-hz 30
    pid=$BENCH_PID port=$BENCH_PORT
    bench_run timeout 300 "$BUILD/bench/bench_rooms" --mode cursor --port "$port" --pid "$pid" \
        --conns 50 --hz "$hz" --seconds "$cursor_seconds" --src-base 96 --users "cur$r" \
        --label "presenced-$hz-hz" >>"$OUT/cursor-$r.txt" || failed "bench_rooms --mode cursor"
    bench_stop "$pid"
}

for r in $(seq 1 "$runs"); do
    if [ "$only" = all ] || [ "$only" = storm ]; then
        echo
        echo "== 1. join storm, run $r: $storm_conns connections join one room"
        : >"$OUT/storm-$r.txt"
        storm "$r" storm-outmax-1M 1M
        storm "$r" storm-outmax-4M 4M
        cat "$OUT/storm-$r.txt"
    fi
    if [ "$only" = all ] || [ "$only" = cursor ]; then
        echo
        echo "== 2. cursors, run $r: 50 editors, --cursor-hz 30, ${cursor_seconds} s"
        : >"$OUT/cursor-$r.txt"
        cursor "$r" 30
        cursor "$r" 20
        cat "$OUT/cursor-$r.txt"
    fi
done
echo
echo "== done in $(($(date +%s) - start)) s; load $(cut -d' ' -f1-3 /proc/loadavg); raw figures and server logs in $OUT"
exit $status
