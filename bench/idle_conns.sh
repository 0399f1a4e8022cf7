#!/usr/bin/env bash
# Server memory per idle, upgraded WebSocket (issue #2): starts a Release presenced (or, with
# --node, the Node.js `ws` baseline) on a free loopback port, opens idle connections to it in
# steps with bench_idle_conns, prints the figures, stops the server.
#
# Usage: bench/idle_conns.sh [--node] [--steps 1000,5000,10000,19000,19900] [--hello MESSAGE]
#   --hello  a text message each connection sends once upgraded, e.g.
#            '{"type":"set_online","device":"web"}' (a present session, not only a socket)
# Env:   BUILD (default build-bench, built by bench/run-core.sh), OUT (logs; default a new
#        directory under /tmp), PRESENCED_BIN (default $BUILD/presenced).
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

target=presenced
steps=
src_base=2
extra=()
while [ $# -gt 0 ]; do
    case $1 in
    --node) target=node-ws src_base=20 ;;
    --steps) steps=$2; shift ;;
    --hello) extra=(--hello "$2"); shift ;;
    *) sed -n '2,11p' "$0" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$steps" ]; then
    [ $target = presenced ] && steps=1000,5000,10000,19000,19900 || steps=1000,5000,10000
fi
[ -x "$BUILD/bench/bench_idle_conns" ] || { echo "build first: bench/run-core.sh" >&2; exit 2; }
bench_idle "$target" "$steps" "$src_base" "$OUT/idle-$target.txt" "${extra[@]}"
cat "$OUT/idle-$target.txt"
