#!/usr/bin/env bash
# Redis store benchmarks (issue #8). Builds a Release presenced and bench_redis in $BUILD,
# starts a redis-server on a free loopback port (a temporary directory, no persistence) and
# three presenced nodes on 127.0.0.1: A and B sharing that Redis (--redis), L with the local
# store; then bench_redis measures, from the client side:
#   1. Redis commands per heartbeat (INFO commandstats over a heartbeat window, minus an idle
#      window of the same length: the nodes' lease refreshes and sweeps; MONITOR attributes
#      each command);
#   2. Redis commands per status change (set_status away/online), without and with watchers
#      on node B;
#   3. fan-out latency of a status change: publishers on A, watchers on B (through Redis),
#      next to publishers and watchers on one node (A: Redis store; L: local store);
#   4. heartbeats per second with the Redis store (A) next to the local store (L), same
#      client, in turn;
# and prints the figures with the machine. Everything it started is stopped on exit. About
# 2 minutes (plus the build); bounded: bench_redis stops after 230 s.
#
# This machine has 2 cores shared by Redis, the three nodes and the client: the loads are
# kept modest (1,000 connections per figure, one client process).
#
# Usage: bench/run-redis.sh [--quick] [--no-build]
#   --quick     a smoke run: fewer connections, changes and heartbeats (under a minute)
#   --no-build  use the binaries already in $BUILD
# Env:   BUILD (default build-bench), OUT (logs and raw figures; default a new /tmp directory),
#        PRESENCED_BIN (the server to measure; default $BUILD/presenced),
#        BENCH_REDIS_ARGS (more bench_redis options, e.g. "--phases 4 --tp-rounds 3"),
#        REDIS_NODE_ARGS (more presenced flags for nodes A and B, e.g. "--redis-timeout 0.5")
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
OUT=${OUT:-$(mktemp -d /tmp/pd-bench-redis.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

quick=0
build=1
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1 ;;
    --no-build) build=0 ;;
    *) sed -n '2,30p' "$0" >&2; exit 2 ;;
    esac
    shift
done
for tool in redis-server redis-cli; do
    command -v $tool >/dev/null || { echo "$tool is needed (Debian: apt-get install redis-server)" >&2; exit 1; }
done

if [ $quick = 1 ]; then
    args=(--conns 200 --hb-rounds 30 --hb-interval-ms 100 --changes 200 --watchers 10
          --fan-users 20 --fan-watchers 10 --fan-changes 300 --fan-warmup 40
          --tp-conns 200 --tp-count 5000000 --tp-rounds 1)
else
    args=(--conns 1000 --hb-rounds 200 --hb-interval-ms 50 --changes 1000 --watchers 10
          --fan-users 100 --fan-watchers 10 --fan-changes 2000 --fan-warmup 100
          --tp-conns 1000 --tp-count 40000000 --tp-rounds 2)
fi
# BENCH_REDIS_ARGS: more bench_redis options, after these (e.g. "--phases 4 --tp-rounds 3").
read -r -a extra <<<"${BENCH_REDIS_ARGS:-}"
args+=("${extra[@]}")
grace=5 # presenced's --offline-grace default: bench_redis waits it out after closing connections
common=(--dev-auth --ephemeral --listen 127.0.0.1:0 --heartbeat-ttl 3600 --rate-limit 0 --max-connections-per-user 0)
read -r -a node_extra <<<"${REDIS_NODE_ARGS:-}"

start=$(date +%s)
if [ $build = 1 ]; then
    bench_build presenced bench_redis || exit 1
fi
SERVER=$(bench_server_bin)

echo
echo "== machine"
bench_machine
echo "redis:   $(redis-server --version)"
echo "hiredis: $(pkg-config --modversion hiredis 2>/dev/null || echo '?')"
echo "server:  $SERVER ($(env -u PRESENCED_BIN "$SERVER" --version 2>&1 | head -n1))"
if [ -z "${PD_BENCH_SOURCE:-}" ] && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    # The exact tree measured when src/ differs from the commit: a digest of the difference.
    d=$(git -C "$ROOT" diff HEAD -- src CMakeLists.txt | sha1sum | cut -c1-12)
    echo "src diff: $(git -C "$ROOT" diff HEAD --stat -- src CMakeLists.txt | tail -n1 | sed 's/^ *//') (git diff HEAD -- src CMakeLists.txt | sha1sum: $d)"
fi
echo "logs:    $OUT"

# redis_start: a redis-server of our own on a free loopback port: no RDB, no AOF, its files in
# $OUT/redis. Sets REDIS_PORT and REDIS_PID. A port taken by someone else makes our server
# exit at once ("Address already in use"): another random port is tried.
redis_start() {
    local dir=$OUT/redis port pid i
    mkdir -p "$dir"
    for i in $(seq 1 20); do
        port=$((20000 + RANDOM % 30000))
        (cd "$dir" && exec redis-server --port "$port" --bind 127.0.0.1 --save '' \
            --appendonly no --dir "$dir" --daemonize no --protected-mode yes \
            >"$dir/redis-$port.log" 2>&1) &
        pid=$!
        BENCH_PIDS+=("$pid")
        for _ in $(seq 1 50); do
            bench_alive "$pid" || break
            if grep -q 'Ready to accept connections' "$dir/redis-$port.log" 2>/dev/null &&
                [ "$(redis-cli -p "$port" INFO server 2>/dev/null | tr -d '\r' |
                    sed -n 's/^process_id://p')" = "$pid" ]; then
                REDIS_PORT=$port REDIS_PID=$pid
                return 0
            fi
            sleep 0.1
        done
        bench_stop "$pid"
    done
    echo "could not start redis-server on a free port" >&2
    return 1
}

# node_start NAME ARGS...: a presenced node; sets NODE_PID and NODE_PORT. A node with Redis
# must also report it ready.
node_start() {
    local name=$1 log=$OUT/node-$1.log i
    shift
    # presenced reads PRESENCED_* variables as settings: PRESENCED_BIN (ours) is not one.
    bench_start "node $name" "$log" env -u PRESENCED_BIN "$SERVER" "${common[@]}" "$@"
    NODE_PID=$BENCH_PID NODE_PORT=$BENCH_PORT
    case " $* " in
    *" --redis "*)
        for i in $(seq 1 50); do
            grep -q 'redis: ready' "$log" && return 0
            sleep 0.1
        done
        echo "node $name did not report Redis ready:" >&2
        cat "$log" >&2
        return 1
        ;;
    esac
}

redis_start
nodes_up=$(date +%s)
node_start A --redis "redis://127.0.0.1:$REDIS_PORT" --node-id A "${node_extra[@]}"
a_pid=$NODE_PID a_port=$NODE_PORT
node_start B --redis "redis://127.0.0.1:$REDIS_PORT" --node-id B "${node_extra[@]}"
b_pid=$NODE_PID b_port=$NODE_PORT
node_start L
l_pid=$NODE_PID l_port=$NODE_PORT
echo
echo "== servers"
echo "redis-server pid $REDIS_PID on 127.0.0.1:$REDIS_PORT: --save '' --appendonly no (in $OUT/redis)"
echo "node A pid $a_pid on 127.0.0.1:$a_port: ${common[*]} --redis redis://127.0.0.1:$REDIS_PORT --node-id A${node_extra[*]:+ ${node_extra[*]}}"
echo "node B pid $b_pid on 127.0.0.1:$b_port: ${common[*]} --redis redis://127.0.0.1:$REDIS_PORT --node-id B${node_extra[*]:+ ${node_extra[*]}}"
echo "node L pid $l_pid on 127.0.0.1:$l_port: ${common[*]} (local store)"
echo "bench_redis ${args[*]} --grace-s $grace"

# A node sweeps others only once it has been connected for a whole lease TTL (10 s by
# default): the background (idle) window is measured in that steady state.
echo
echo "== bench_redis"
while [ $(($(date +%s) - nodes_up)) -lt 11 ]; do sleep 0.5; done
status=0
bench_run timeout 260 "$BUILD/bench/bench_redis" --redis-port "$REDIS_PORT" \
    --a-port "$a_port" --a-pid "$a_pid" --b-port "$b_port" --b-pid "$b_pid" \
    --l-port "$l_port" --l-pid "$l_pid" --grace-s "$grace" --timeout 230 "${args[@]}" \
    >"$OUT/figures.txt" || status=$?
cat "$OUT/figures.txt"
[ $status = 0 ] || echo "note: bench_redis reported a failure (exit $status; see its messages above)" >&2

# The nodes' own complaints (start-up notices aside).
declare -A node_pid=([A]=$a_pid [B]=$b_pid [L]=$l_pid)
for n in A B L; do
    if grep -E ' (WARN|ERROR) ' "$OUT/node-$n.log" |
        grep -v -e 'main: --ephemeral' -e 'DEVELOPMENT AUTH' >"$OUT/node-$n.warn"; then
        echo "note: node $n logged warnings or errors:" >&2
        head -n 20 "$OUT/node-$n.warn" >&2
        status=1
    fi
    bench_alive "${node_pid[$n]}" ||
        { echo "note: node $n is gone (see $OUT/node-$n.log)" >&2; status=1; }
done

# kv LINE KEY: the value of KEY=VALUE in a figures line.
kv() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1"; }

echo
echo "== summary"
{
    set +e # a figure missing (a phase left out or failed) only leaves its line out
    f=$OUT/figures.txt
    l=$(grep '^background ' "$f" || true)
    [ -n "$l" ] && printf 'background (A and B idle, no client traffic): %s commands in %s s (%s/s): %s\n' \
        "$(kv "$l" calls)" "$(kv "$l" secs)" "$(kv "$l" per_s)" "$(kv "$l" top)"
    l=$(grep '^per_heartbeat ' "$f" || true)
    [ -n "$l" ] && printf '1. Redis commands per heartbeat: %s (%s heartbeats from %s connections on A in %s s; %s commands in the window against %s in the idle one; commands other than lease/sweep: %s)\n' \
        "$(kv "$l" per_heartbeat)" "$(kv "$l" heartbeats)" "$(kv "$l" conns)" "$(kv "$l" secs)" \
        "$(kv "$l" calls)" "$(kv "$l" idle_calls)" "$(kv "$l" not_lease_or_sweep)"
    grep '^per_status_change ' "$f" | while read -r l; do
        printf '2. Redis commands per status change, %s watchers on B: %s sent by presenced (%s), %s in all with those its scripts ran; %s updates reached B (expected %s)\n' \
            "$(kv "$l" watchers_on_B)" "$(kv "$l" top_per_change)" "$(kv "$l" top)" \
            "$(kv "$l" per_change)" "$(kv "$l" updates)" "$(kv "$l" expected_updates)"
    done
    grep '^fanout ' "$f" | while read -r l; do
        printf '3. fan-out %-17s %s samples: p50 %s us, p90 %s, p99 %s, max %s (last watcher of a change: p50 %s, p99 %s); missing %s\n' \
            "$(kv "$l" label)" "$(kv "$l" samples)" "$(kv "$l" p50_us)" "$(kv "$l" p90_us)" \
            "$(kv "$l" p99_us)" "$(kv "$l" max_us)" "$(kv "$l" last_p50_us)" \
            "$(kv "$l" last_p99_us)" "$(kv "$l" missing)"
    done
    grep '^throughput ' "$f" | while read -r l; do
        printf '4. heartbeats %-5s (%s) %s from %s connections: %s/s wall, %s per core-second (%s ns each); loop lag %s ms; Redis commands per heartbeat %s, resyncs %s\n' \
            "$(kv "$l" label)" "$(kv "$l" mode)" "$(kv "$l" heartbeats)" "$(kv "$l" conns)" "$(kv "$l" wall_per_s)" \
            "$(kv "$l" per_core_per_s)" "$(kv "$l" server_ns_per_hb)" "$(kv "$l" loop_lag_ms)" \
            "$( [ "$(kv "$l" label)" = redis ] && kv "$l" redis_net_per_hb || echo '-')" \
            "$( [ "$(kv "$l" label)" = redis ] && kv "$l" redis_resyncs || echo '-')"
    done
} | tee "$OUT/summary.txt" || true
echo
echo "== done in $(($(date +%s) - start)) s; load $(cut -d' ' -f1-3 /proc/loadavg); raw figures and logs in $OUT"
exit $status
