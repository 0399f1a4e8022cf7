#!/usr/bin/env bash
# Installs what presenced needs on Debian 12, skipping whatever is already there.
#   scripts/setup.sh build   what building and running the daemon needs
#   scripts/setup.sh test    that, plus compilers, test tools, Redis, Chromium, npm packages
# Runs as root, or through sudo when it is available.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-build}
build_pkgs=(build-essential cmake pkg-config libuv1-dev libhttp-parser-dev libcjson-dev
            libssl-dev libsodium-dev libsqlite3-dev libjwt-dev
            libinih-dev libcurl4-openssl-dev libhiredis-dev)
test_pkgs=(clang clang-format libclang-rt-14-dev libcmocka-dev python3 python3-websockets
           python3-prometheus-client chromium
           redis-server redis-tools
           curl)

pkgs=("${build_pkgs[@]}")
[ "$mode" = test ] && pkgs+=("${test_pkgs[@]}")
if [ "$mode" = test ] && ! command -v node >/dev/null 2>&1; then
    pkgs+=(nodejs npm)
fi

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "setup: need root (or sudo) to install: ${missing[*]}" >&2
            exit 1
        }
        sudo=sudo
    fi
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if [ "$mode" = test ]; then
    # Test-only Node packages, exactly as locked; reinstalled only when the lock changes.
    stamp=node_modules/.presenced-lock.sha256
    want=$(sha256sum package-lock.json | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "setup: npm ci"
        npm ci --no-audit --no-fund --loglevel=error
        echo "$want" >"$stamp"
    fi
fi
