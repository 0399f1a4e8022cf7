#!/usr/bin/env bash
# Builds presenced and starts it for a person to try: embedded store, no other service,
# development identities (?user=NAME), listening on 127.0.0.1:7070 (PRESENCED_LISTEN to
# change it). Extra arguments go to presenced (see build/presenced --help). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh build
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)"

listen=${PRESENCED_LISTEN:-127.0.0.1:7070}
echo
echo "presenced: open http://$listen/ in a browser (Ctrl-C to stop)"
echo
exec build/presenced --dev-auth --listen "$listen" "$@"
