#!/usr/bin/env bash
# What stays in the server after announced connections close: one server, four rounds of
# 19,000 connections that each send set_online, stay idle, then close. The rounds use user ids
# a-*, b-*, b-* again, c-*, and the server's malloc in use is read after each round once the
# offline grace (5 s) has passed. Memory that stays per new user id, and not for a reused one,
# is a record kept per distinct user.
#
# Usage: bench/idle_churn.sh [CONNECTIONS]   (default 19000; about 90 s)
# Env:   BUILD (default build-bench), OUT, PRESENCED_BIN (default $BUILD/presenced).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
OUT=${OUT:-$(mktemp -d /tmp/pd-bench.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

n=${1:-19000}
[ -x "$BUILD/bench/bench_idle_conns" ] || { echo "build first: bench/run-core.sh" >&2; exit 2; }
log="$OUT/churn-presenced.log"
# shellcheck disable=SC2086
bench_start presenced "$log" "$(bench_server_bin)" --dev-auth \
    --listen 127.0.0.1:0 --heartbeat-ttl 3600 $BENCH_LIMITS
pid=$BENCH_PID
stats=()
command -v gdb >/dev/null && stats=(--malloc-stats "$log")
src=60
for users in a b b c; do
    echo "== round: $n connections, user ids $users-*, each sends set_online, then all close"
    bench_run timeout 200 "$BUILD/bench/bench_idle_conns" --port "$BENCH_PORT" --pid "$pid" \
        --steps "$n" --metrics --src-base "$src" --users "$users" --settle-ms 8000 \
        --hello '{"type":"set_online","device":"web"}' "${stats[@]}" >"$OUT/churn-$src.txt"
    grep -v '^# \(idle\|each\|per conn\)' "$OUT/churn-$src.txt"
    src=$((src + 10))
done
bench_stop "$pid"
