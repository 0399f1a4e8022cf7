#!/usr/bin/env bash
# Network-core benchmarks (issue #2). Builds a Release presenced and the load generators in
# build-bench, then measures on loopback:
#   1. server memory per idle, upgraded WebSocket, at 1k to 19.9k connections, silent and
#      after one set_online (bench_idle_conns);
#   2. ping/pong round trips per second, server CPU per message and round-trip latency at 1 to
#      1000 connections (bench_msg_rate),
# each against presenced and, where node and node_modules/ws are present, against the minimal
# Node.js `ws` server bench/baseline_ws_echo.mjs, and prints the figures with the machine.
# About 3 minutes (under 5).
#
# Usage: bench/run-core.sh [--quick] [--no-baseline]
#   --quick        a smoke run: fewer connections and messages (about 30 s)
#   --no-baseline  skip the Node.js baseline
# Env:   BUILD (default build-bench), OUT (logs and raw figures; default a new /tmp directory),
#        PD_BENCH_SOURCE (what to print as the source measured, when not a git checkout),
#        PRESENCED_BIN (the server to measure; default $BUILD/presenced)
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

quick=0
baseline=1
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1 ;;
    --no-baseline) baseline=0 ;;
    *) sed -n '2,19p' "$0" >&2; exit 2 ;;
    esac
    shift
done
if [ $baseline = 1 ] && ! { command -v node >/dev/null && [ -d "$ROOT/node_modules/ws" ]; }; then
    echo "note: node or node_modules/ws missing: no baseline" >&2
    baseline=0
fi

announce='{"type":"set_online","device":"web"}'
if [ $quick = 1 ]; then
    idle_steps=1000,2000,4000
    announce_steps=1000,2000
    node_idle_steps=1000,2000
    big=100000
    small=20000
else
    idle_steps=1000,5000,10000,19000,19900
    announce_steps=1000,5000,10000,19000
    node_idle_steps=1000,5000,10000
    big=1000000
    small=100000
fi
# "conns window messages": a strict request-response on one connection (latency), then a
# pipeline of 16 on 1 to 1000 connections (throughput).
rate_configs=("1 1 $small" "1 16 $big" "10 16 $big" "100 16 $big" "1000 16 $big")

start=$(date +%s)
echo "== build (Release) in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DPD_TESTS=OFF -DPD_BENCH=ON \
    >"$OUT/build.log" 2>&1 || { cat "$OUT/build.log" >&2; exit 1; }
cmake --build "$BUILD" -j"$(nproc)" >>"$OUT/build.log" 2>&1 || { tail -n 40 "$OUT/build.log" >&2; exit 1; }

echo
echo "== machine"
bench_machine
echo "logs:    $OUT"

echo
echo "== 1. idle WebSocket connections: presenced (goal: < 1024 B per connection)"
bench_idle presenced "$idle_steps" 2 "$OUT/idle-presenced.txt"
cat "$OUT/idle-presenced.txt"
echo
echo "== 1b. the same, each connection having announced itself once: $announce"
bench_idle presenced "$announce_steps" 8 "$OUT/idle-presenced-announced.txt" --hello "$announce"
cat "$OUT/idle-presenced-announced.txt"
if [ $baseline = 1 ]; then
    echo
    echo "== 1c. idle WebSocket connections: Node.js ws baseline (V8 heap: indicative only)"
    bench_idle node-ws "$node_idle_steps" 20 "$OUT/idle-node-ws.txt"
    cat "$OUT/idle-node-ws.txt"
fi

echo
echo "== 2. message rate: {\"type\":\"ping\"} -> {\"type\":\"pong\"} round trips"
bench_rate presenced 40 "$OUT/rate-presenced.txt" "${rate_configs[@]}"
if [ $baseline = 1 ]; then
    bench_rate node-ws 50 "$OUT/rate-node-ws.txt" "${rate_configs[@]}"
else
    : >"$OUT/rate-node-ws.txt"
fi
cat "$OUT/rate-presenced.txt" "$OUT/rate-node-ws.txt"
echo
awk '
    function kv(line, key,    re, m) {
        re = " " key "=[^ ]*"
        if (match(" " line, re)) return substr(" " line, RSTART + length(key) + 2, RLENGTH - length(key) - 2)
        return ""
    }
    /^msg_rate / {
        k = kv($0, "conns") " " kv($0, "window")
        if (!(k in seen)) { seen[k] = 1; order[n++] = k }
        l = kv($0, "label")
        rate[l, k] = kv($0, "msgs_per_s"); cpu[l, k] = kv($0, "server_cpu_us_per_msg")
        p50[l, k] = kv($0, "p50_us"); p99[l, k] = kv($0, "p99_us"); msgs[k] = kv($0, "messages")
    }
    END {
        printf "%-6s %-6s %-8s | %-10s %-9s %-8s %-8s | %-9s %-9s %-8s %-8s | %-7s %-7s\n",
            "conns", "window", "messages", "presenced", "cpu_us", "p50_us", "p99_us",
            "node-ws", "cpu_us", "p50_us", "p99_us", "x_rate", "x_cpu"
        printf "%-6s %-6s %-8s | %-10s %-9s %-8s %-8s | %-9s %-9s %-8s %-8s | %-7s %-7s\n",
            "", "", "", "msgs/s", "/msg", "", "", "msgs/s", "/msg", "", "", "", ""
        for (i = 0; i < n; i++) {
            k = order[i]; split(k, cw, " ")
            r1 = rate["presenced", k]; r2 = rate["node-ws", k]
            c1 = cpu["presenced", k]; c2 = cpu["node-ws", k]
            xr = (r1 != "" && r2 > 0) ? sprintf("%.1f", r1 / r2) : "-"
            xc = (c1 > 0 && c2 != "") ? sprintf("%.1f", c2 / c1) : "-"
            printf "%-6s %-6s %-8s | %-10s %-9s %-8s %-8s | %-9s %-9s %-8s %-8s | %-7s %-7s\n",
                cw[1], cw[2], msgs[k], r1, c1, p50["presenced", k], p99["presenced", k],
                (r2 == "" ? "-" : r2), (c2 == "" ? "-" : c2), (p50["node-ws", k] == "" ? "-" : p50["node-ws", k]),
                (p99["node-ws", k] == "" ? "-" : p99["node-ws", k]), xr, xc
        }
        print "x_rate = presenced msgs/s / node-ws msgs/s; x_cpu = node-ws server CPU per message / presenced"
    }' "$OUT/rate-presenced.txt" "$OUT/rate-node-ws.txt" | tee "$OUT/rate-summary.txt"
echo
echo "== done in $(($(date +%s) - start)) s; load $(cut -d' ' -f1-3 /proc/loadavg); raw figures and server logs in $OUT"
