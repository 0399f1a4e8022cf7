#!/usr/bin/env bash
# Presence-engine benchmarks (issue #3). Builds a Release presenced and the load generators in
# $BUILD, then measures on loopback, each figure --runs times (2 by default) on a fresh server:
#   1. server CPU per heartbeat (bench_heartbeat): the canonical spelling
#      {"type":"heartbeat","device":"web"} (the dispatcher's fast path), the same fields in
#      another order and with an id as clients/js sends it (the full JSON path), and a Node.js
#      `ws` server that only JSON.parse's each message (bench/baseline_json_ws.mjs);
#   2. fan-out latency of one status change to 10,000 subscribers, and the floor: a raw relay
#      doing one 64-byte send() per subscriber, their changes interleaved in one run
#      (bench_fanout --with-floor);
#   3. get_presence of 1,000 users: server CPU per request and round trip (bench_get_presence);
# and prints the figures with the machine. About 4 minutes with 2 runs.
#
# Usage: bench/run-presence.sh [--quick] [--runs N] [--no-baseline] [--no-build]
#                              [--only heartbeat|fanout|get]
#   --quick        a smoke run: fewer connections and messages (under a minute)
#   --no-baseline  skip the Node.js baseline
#   --no-build     use the binaries already in $BUILD
# Env:   BUILD (default build-bench), OUT (logs and raw figures; default a new /tmp directory),
#        PD_BENCH_SOURCE (what to print as the source measured, when not a git checkout),
#        PRESENCED_BIN (the server to measure; default $BUILD/presenced)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
OUT=${OUT:-$(mktemp -d /tmp/pd-bench-presence.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

quick=0
baseline=1
build=1
runs=2
only=all
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1 ;;
    --no-baseline) baseline=0 ;;
    --no-build) build=0 ;;
    --runs) runs=$2; shift ;;
    --only) only=$2; shift ;;
    *) sed -n '2,21p' "$0" >&2; exit 2 ;;
    esac
    shift
done
if [ $baseline = 1 ] && ! { command -v node >/dev/null && [ -d "$ROOT/node_modules/ws" ]; }; then
    echo "note: node or node_modules/ws missing: no baseline" >&2
    baseline=0
fi

canonical='{"type":"heartbeat","device":"web"}'
reordered='{"device":"web","type":"heartbeat"}'
# What clients/js sends: every heartbeat carries an id (and is acknowledged).
with_id='{"type":"heartbeat","device":"web","id":"hb1"}'
if [ $quick = 1 ]; then
    hb_conns=1000 hb_fast=2000000 hb_slow=500000 hb_node=200000
    fan_subs=2000 fan_changes=10
    gp_requests=300
else
    hb_conns=10000 hb_fast=20000000 hb_slow=5000000 hb_node=2000000
    fan_subs=10000 fan_changes=20
    gp_requests=2000
fi
# The server as the benchmarks run it: nothing on disk, no session expiry during a run.
server_flags=(--dev-auth --ephemeral --listen 127.0.0.1:0 --heartbeat-ttl 3600 --rate-limit 0 --max-connections-per-user 0)

start=$(date +%s)
if [ $build = 1 ]; then
    bench_build || exit 1
fi

echo
echo "== machine"
bench_machine
echo "logs:    $OUT"

# kv LINE KEY: the value of KEY=VALUE in a figures line.
kv() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1"; }
# failed NAME: notes a generator that exited non-zero (its figures line, if any, is kept).
status=0
failed() {
    echo "note: $1 reported a failure (see its messages above)" >&2
    status=1
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else printf "-" }'; }

# --- 1. heartbeats ---
heartbeat_run() {
    local r=$1 out=$OUT/heartbeat-$1.txt pid port
    : >"$out"
    bench_start presenced "$OUT/heartbeat-$r.log" "$(bench_server_bin)" "${server_flags[@]}"
    pid=$BENCH_PID port=$BENCH_PORT
    bench_run timeout 300 "$BUILD/bench/bench_heartbeat" --port "$port" --pid "$pid" --metrics \
        --conns "$hb_conns" --count "$hb_fast" --frame "$canonical" --users "hbc$r" \
        --src-base 60 --label presenced-canonical >>"$out" || failed bench_heartbeat
    bench_run timeout 300 "$BUILD/bench/bench_heartbeat" --port "$port" --pid "$pid" --metrics \
        --conns "$hb_conns" --count "$hb_slow" --frame "$reordered" --users "hbr$r" \
        --src-base 62 --label presenced-reordered >>"$out" || failed bench_heartbeat
    bench_run timeout 300 "$BUILD/bench/bench_heartbeat" --port "$port" --pid "$pid" --metrics \
        --conns "$hb_conns" --count "$hb_slow" --frame "$with_id" --users "hbi$r" \
        --src-base 66 --label presenced-with-id >>"$out" || failed bench_heartbeat
    bench_stop "$pid"
    if [ $baseline = 1 ]; then
        bench_start node-ws "$OUT/heartbeat-node-$r.log" node "$ROOT/bench/baseline_json_ws.mjs"
        pid=$BENCH_PID port=$BENCH_PORT
        bench_run timeout 300 "$BUILD/bench/bench_heartbeat" --port "$port" --pid "$pid" \
            --conns "$hb_conns" --count "$hb_node" --frame "$canonical" --users "hbn$r" \
            --src-base 64 --label node-ws-json >>"$out" || failed bench_heartbeat
        bench_stop "$pid"
    fi
    cat "$out"
}

# --- 2. fan-out ---
fanout_run() {
    local r=$1 out=$OUT/fanout-$1.txt pid port
    : >"$out"
    bench_start presenced "$OUT/fanout-$r.log" "$(bench_server_bin)" "${server_flags[@]}"
    pid=$BENCH_PID port=$BENCH_PORT
    # presenced and the raw relay in one run, their changes interleaved.
    bench_run timeout 300 "$BUILD/bench/bench_fanout" --port "$port" --pid "$pid" --with-floor \
        --subs "$fan_subs" --changes "$fan_changes" --users "fan$r" --src-base 70 >>"$out" ||
        failed bench_fanout
    bench_stop "$pid"
    cat "$out"
}

# --- 3. get_presence ---
get_run() {
    local r=$1 out=$OUT/get-$1.txt pid port
    : >"$out"
    bench_start presenced "$OUT/get-$r.log" "$(bench_server_bin)" "${server_flags[@]}"
    pid=$BENCH_PID port=$BENCH_PORT
    bench_run timeout 300 "$BUILD/bench/bench_get_presence" --port "$port" --pid "$pid" \
        --metrics --users 1000 --requests "$gp_requests" --window 1 --prefix "gp$r" \
        --src 127.0.0.80 >>"$out" || failed bench_get_presence
    bench_stop "$pid"
    cat "$out"
}

for r in $(seq 1 "$runs"); do
    if [ "$only" = all ] || [ "$only" = heartbeat ]; then
        echo
        echo "== 1. heartbeats, run $r: $hb_conns connections, one set_online each, then only heartbeats"
        heartbeat_run "$r"
    fi
    if [ "$only" = all ] || [ "$only" = fanout ]; then
        echo
        echo "== 2. fan-out, run $r: $fan_subs subscribers of one user, $fan_changes status changes"
        fanout_run "$r"
    fi
    if [ "$only" = all ] || [ "$only" = get ]; then
        echo
        echo "== 3. get_presence of 1,000 users, run $r"
        get_run "$r"
    fi
done

echo
echo "== summary"
for r in $(seq 1 "$runs"); do
    if [ -s "$OUT/heartbeat-$r.txt" ]; then
        c=$(grep 'label=presenced-canonical ' "$OUT/heartbeat-$r.txt" || true)
        s=$(grep 'label=presenced-reordered ' "$OUT/heartbeat-$r.txt" || true)
        i=$(grep 'label=presenced-with-id ' "$OUT/heartbeat-$r.txt" || true)
        n=$(grep 'label=node-ws-json ' "$OUT/heartbeat-$r.txt" || true)
        printf 'run %s heartbeats per core-second: canonical %s (%s ns), reordered %s (%s ns), with id %s (%s ns), node-ws JSON.parse %s (%s ns); reordered/canonical %sx, with-id/canonical %sx, node/canonical %sx, node/reordered %sx, node/with-id %sx\n' \
            "$r" "$(kv "$c" per_core_per_s)" "$(kv "$c" server_ns_per_msg)" \
            "$(kv "$s" per_core_per_s)" "$(kv "$s" server_ns_per_msg)" \
            "$(kv "$i" per_core_per_s)" "$(kv "$i" server_ns_per_msg)" \
            "$(kv "$n" per_core_per_s)" "$(kv "$n" server_ns_per_msg)" \
            "$(ratio "$(kv "$s" server_ns_per_msg)" "$(kv "$c" server_ns_per_msg)")" \
            "$(ratio "$(kv "$i" server_ns_per_msg)" "$(kv "$c" server_ns_per_msg)")" \
            "$(ratio "$(kv "$n" server_ns_per_msg)" "$(kv "$c" server_ns_per_msg)")" \
            "$(ratio "$(kv "$n" server_ns_per_msg)" "$(kv "$s" server_ns_per_msg)")" \
            "$(ratio "$(kv "$n" server_ns_per_msg)" "$(kv "$i" server_ns_per_msg)")"
    fi
    if [ -s "$OUT/fanout-$r.txt" ]; then
        p=$(grep '^fanout label=presenced ' "$OUT/fanout-$r.txt" || true)
        f=$(grep '^fanout label=floor ' "$OUT/fanout-$r.txt" || true)
        printf 'run %s fan-out (us) presenced/floor: p50 %s/%s = %sx, p99 %s/%s = %sx, max %s/%s = %sx, last-recipient p50 %s/%s = %sx\n' \
            "$r" "$(kv "$p" p50_us)" "$(kv "$f" p50_us)" "$(ratio "$(kv "$p" p50_us)" "$(kv "$f" p50_us)")" \
            "$(kv "$p" p99_us)" "$(kv "$f" p99_us)" "$(ratio "$(kv "$p" p99_us)" "$(kv "$f" p99_us)")" \
            "$(kv "$p" max_us)" "$(kv "$f" max_us)" "$(ratio "$(kv "$p" max_us)" "$(kv "$f" max_us)")" \
            "$(kv "$p" last_p50_us)" "$(kv "$f" last_p50_us)" \
            "$(ratio "$(kv "$p" last_p50_us)" "$(kv "$f" last_p50_us)")"
    fi
    if [ -s "$OUT/get-$r.txt" ]; then
        g=$(cat "$OUT/get-$r.txt")
        printf 'run %s get_presence(1000): server %s us/request, round trip p50 %s us, p99 %s us\n' \
            "$r" "$(kv "$g" server_us_per_req)" "$(kv "$g" p50_us)" "$(kv "$g" p99_us)"
    fi
done | tee "$OUT/summary.txt"
echo
echo "== done in $(($(date +%s) - start)) s; load $(cut -d' ' -f1-3 /proc/loadavg); raw figures and server logs in $OUT"
exit $status
