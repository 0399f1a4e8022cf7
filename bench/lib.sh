# shellcheck shell=bash
# Shell helpers for the benchmark scripts (sourced, not run): start a server on an ephemeral
# loopback port, stop it, and stop everything this script started when it exits, even on
# failure. Processes are ended by their recorded pid only.

BENCH_PIDS=()

# The server under test, as an absolute path (servers start in their own directory).
bench_server_bin() {
    local bin=${PRESENCED_BIN:-$BUILD/presenced}
    case $bin in
    /*) echo "$bin" ;;
    *) echo "$PWD/$bin" ;;
    esac
}

# bench_start NAME LOG CMD [ARGS...]: starts CMD in the background with stderr to LOG and waits
# (10 s at most) for its "listening on http://127.0.0.1:PORT/" line. Sets BENCH_PID and
# BENCH_PORT.
bench_start() {
    local name=$1 log=$2
    shift 2
    # A fresh working directory per server: anything it writes relative to it (presenced keeps
    # ./data) stays out of the repository and does not carry over from one run to the next.
    local cwd
    cwd=$(mktemp -d "${log%.log}.cwd.XXXXXX")
    (cd "$cwd" && exec "$@" >/dev/null 2>"$log") &
    BENCH_PID=$!
    BENCH_PIDS+=("$BENCH_PID")
    BENCH_PORT=
    local i
    for i in $(seq 1 100); do
        BENCH_PORT=$(grep -o 'listening on http://127\.0\.0\.1:[0-9]*' "$log" 2>/dev/null |
            head -n1 | grep -o '[0-9]*$' || true)
        [ -n "$BENCH_PORT" ] && return 0
        if ! bench_alive "$BENCH_PID"; then
            echo "$name exited at startup:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "$name did not report its port within 10 s" >&2
    return 1
}

# bench_alive PID: true while PID runs (a zombie does not count).
bench_alive() {
    local state
    state=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# bench_stop PID: SIGTERM, up to 10 s for a graceful exit, then SIGKILL.
bench_stop() {
    local pid=$1 i
    if bench_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do
            bench_alive "$pid" || break
            sleep 0.1
        done
        bench_alive "$pid" && kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null || true
}

# Stops what was started, newest first: load generators before the servers they measure.
bench_cleanup() {
    local i
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
        bench_stop "${BENCH_PIDS[i]}"
    done
    BENCH_PIDS=()
}

# The load generators drive one connection (or one user) far past what any client sends, to
# measure the engine: the per-connection message rate and the per-user connection cap are off
# for them. bench/run-limits.sh measures what the rate limiter costs.
BENCH_LIMITS="--rate-limit 0 --max-connections-per-user 0"

# bench_build [TARGET...]: a Release build with the benchmarks in $BUILD (all of it, or the
# targets named), its output in $OUT/build.log, shown when it fails. Needs ROOT, BUILD, OUT.
bench_build() {
    local targets=()
    [ $# -gt 0 ] && targets=(--target "$@")
    echo "== build (Release) in $BUILD"
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DPD_TESTS=OFF -DPD_BENCH=ON \
        >"$OUT/build.log" 2>&1 || { cat "$OUT/build.log" >&2; return 1; }
    cmake --build "$BUILD" "${targets[@]}" -j"$(nproc)" >>"$OUT/build.log" 2>&1 ||
        { tail -n 40 "$OUT/build.log" >&2; return 1; }
}

# bench_machine: the machine the figures come from.
bench_machine() {
    echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "cpu:     $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
    echo "kernel:  $(uname -sr)"
    echo "memory:  $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "libc:    $(ldd --version 2>/dev/null | head -n1 | sed 's/^ldd //')"
    echo "libuv:   $(pkg-config --modversion libuv 2>/dev/null || echo '?')"
    echo "cc:      $(${CC:-cc} --version 2>/dev/null | head -n1)"
    echo "node:    $(node --version 2>/dev/null || echo none), ws $(node -p "require('$ROOT/node_modules/ws/package.json').version" 2>/dev/null || echo none)"
    echo "nofile:  $(ulimit -n) open files per process"
    local head dirty=0
    if [ -n "${PD_BENCH_SOURCE:-}" ]; then
        head=$PD_BENCH_SOURCE
    else
        head=$(git -C "$ROOT" log -1 --format='%h %s' 2>/dev/null || echo '?')
        dirty=$({ git -C "$ROOT" status --porcelain -- src CMakeLists.txt 2>/dev/null || true; } |
            wc -l)
    fi
    echo "source:  $head$([ "$dirty" -gt 0 ] && echo " (+ $dirty uncommitted paths in src/)")"
    echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min; other work on the machine skews the rates)"
}

# bench_run CMD [ARGS...]: runs CMD in the background and waits for it, so a signal to this
# script is handled at once (and the cleanup ends CMD by its pid). Returns CMD's status.
bench_run() {
    "$@" &
    local pid=$!
    BENCH_PIDS+=("$pid")
    local rc=0
    wait "$pid" || rc=$?
    return $rc
}

# bench_idle TARGET STEPS SRC_BASE OUTFILE [ARGS...]: starts TARGET (presenced or node-ws) on a
# free loopback port, runs bench_idle_conns against it (with ARGS), stops it. Needs ROOT, BUILD
# and OUT.
bench_idle() {
    local target=$1 steps=$2 src_base=$3 outfile=$4
    shift 4
    local log="${outfile%.txt}.log"
    local extra=()
    if [ "$target" = presenced ]; then
        # shellcheck disable=SC2086
        bench_start presenced "$log" "$(bench_server_bin)" --dev-auth --listen 127.0.0.1:0 \
            --heartbeat-ttl 3600 $BENCH_LIMITS || return 1
        extra=(--metrics)
        if command -v gdb >/dev/null; then
            extra+=(--malloc-stats "$log")
        fi
    else
        bench_start node-ws "$log" node "$ROOT/bench/baseline_ws_echo.mjs" || return 1
    fi
    local pid=$BENCH_PID rc=0
    bench_run timeout 300 "$BUILD/bench/bench_idle_conns" --port "$BENCH_PORT" --pid "$pid" \
        --steps "$steps" --label "$target" --src-base "$src_base" "${extra[@]}" "$@" \
        >"$outfile" || rc=$?
    bench_stop "$pid"
    return $rc
}

# bench_rate TARGET SRC_BASE OUTFILE CONFIG...: starts TARGET, runs bench_msg_rate once per
# CONFIG ("conns window messages"), each from its own source address, stops it.
bench_rate() {
    local target=$1 src=$2 outfile=$3
    shift 3
    local log="$OUT/rate-$target.log"
    if [ "$target" = presenced ]; then
        # shellcheck disable=SC2086
        bench_start presenced "$log" "$(bench_server_bin)" --dev-auth --listen 127.0.0.1:0 \
            --heartbeat-ttl 3600 $BENCH_LIMITS || return 1
    else
        bench_start node-ws "$log" node "$ROOT/bench/baseline_ws_echo.mjs" || return 1
    fi
    local pid=$BENCH_PID rc=0 cfg c w m
    : >"$outfile"
    for cfg in "$@"; do
        read -r c w m <<<"$cfg"
        bench_run timeout 120 "$BUILD/bench/bench_msg_rate" --port "$BENCH_PORT" --pid "$pid" \
            --conns "$c" --window "$w" --messages "$m" --label "$target" \
            --src "127.0.0.$src" >>"$outfile" || rc=$?
        src=$((src + 1))
        [ $rc -eq 0 ] || break
    done
    bench_stop "$pid"
    return $rc
}
