#!/usr/bin/env bash
# What the per-connection message rate limit (issue #11) costs: the server's CPU per canonical
# heartbeat (bench_heartbeat, the dispatcher's fast path, where the limiter's share is largest)
# with the limiter off (--rate-limit 0) and on at a rate no connection reaches
# (--rate-limit 100000000 --rate-limit-burst 65535: every heartbeat goes through the bucket's
# refill and take, none is refused). The two alternate on fresh servers, --runs times each, in
# one run of this script, so both see the same machine; the figure is heartbeats per
# core-second and the on/off ratio.
#
# Usage: bench/run-limits.sh [--quick] [--runs N] [--no-build]
# Env:   BUILD (default build-bench), OUT (default a new /tmp directory)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
OUT=${OUT:-$(mktemp -d /tmp/pd-bench-limits.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

quick=0
build=1
runs=3
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1 ;;
    --no-build) build=0 ;;
    --runs) runs=$2; shift ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
    esac
    shift
done
if [ $quick = 1 ]; then
    conns=1000 count=2000000
else
    conns=10000 count=20000000
fi
canonical='{"type":"heartbeat","device":"web"}'
base=(--dev-auth --ephemeral --listen 127.0.0.1:0 --heartbeat-ttl 3600
      --max-connections-per-user 0)
off=(--rate-limit 0)
on=(--rate-limit 100000000 --rate-limit-burst 65535)

if [ $build = 1 ]; then
    bench_build || exit 1
fi

echo
echo "== machine"
bench_machine
echo "logs:    $OUT"

kv() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1"; }

# one LABEL RUN FLAGS...: one heartbeat measurement on a fresh server.
one() {
    local label=$1 r=$2 pid port
    shift 2
    bench_start presenced "$OUT/$label-$r.log" "$(bench_server_bin)" "${base[@]}" "$@"
    pid=$BENCH_PID port=$BENCH_PORT
    bench_run timeout 300 "$BUILD/bench/bench_heartbeat" --port "$port" --pid "$pid" --metrics \
        --conns "$conns" --count "$count" --frame "$canonical" --users "lim$label$r" \
        --src-base 90 --label "$label" >>"$OUT/figures.txt" ||
        { echo "bench_heartbeat failed ($label, run $r)" >&2; exit 1; }
    bench_stop "$pid"
    grep "label=$label " "$OUT/figures.txt" | tail -n 1
}

: >"$OUT/figures.txt"
for r in $(seq 1 "$runs"); do
    echo
    echo "== run $r: $conns connections, $count canonical heartbeats, limiter off then on"
    one limiter-off "$r" "${off[@]}"
    one limiter-on "$r" "${on[@]}"
done

echo
echo "== summary (heartbeats per core-second)"
awk '
    / label=limiter-(off|on) / {
        for (i = 1; i <= NF; i++) if ($i ~ /^label=/) l = substr($i, 7);
        for (i = 1; i <= NF; i++) if ($i ~ /^per_core_per_s=/) v = substr($i, 16);
        n[l]++; sum[l] += v; vals[l] = vals[l] " " v;
    }
    END {
        if (!n["limiter-off"] || !n["limiter-on"]) exit 1;
        off = sum["limiter-off"] / n["limiter-off"]; on = sum["limiter-on"] / n["limiter-on"];
        printf "limiter off: mean %.0f (runs:%s)\n", off, vals["limiter-off"];
        printf "limiter on:  mean %.0f (runs:%s)\n", on, vals["limiter-on"];
        printf "on/off: %.3f\n", on / off;
    }' "$OUT/figures.txt" | tee "$OUT/summary.txt"
