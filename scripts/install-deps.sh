#!/usr/bin/env bash
# install-deps.sh: installs what building and testing wsgate needs, on Debian
# 12, and only what is missing (so a second run costs a second, not a minute).
# Debian packages via apt-get (chromium for the browser test: never a
# downloaded browser); npm packages from the lock files in tests/node, bench/,
# web/ (xterm.js for the terminal page) and tests/browser/ (playwright-core).
# The deployment checks (tests/integration/test_deploy.py) need promtool
# (Debian ships it in the prometheus package), systemd-analyze (systemd) and
# PyYAML (python3-yaml). The Redis backend links Debian's hiredis
# (libhiredis-dev); its tests start a real redis-server.
set -eu
cd "$(dirname "$0")/.."

PKGS="build-essential pkg-config libssl-dev zlib1g-dev libjansson-dev clang libclang-rt-14-dev
      python3 python3-pytest python3-websockets openssl curl procps util-linux chromium
      prometheus systemd python3-yaml libhiredis-dev redis-server
      libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler python3-grpcio python3-protobuf
      python3-h2 python3-cryptography"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# Node.js may come from Debian or from another build (whose npm is part of
# its nodejs package): ask for the commands, not the packages.
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
    echo "install-deps: apt-get install$missing"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
    # The tests need only promtool. On a host booted with systemd the package
    # also starts a Prometheus server (port 9090, wsgate's default gRPC port):
    # stop and disable the one this script just installed.
    # The tests start their own redis-server on free ports: the packaged
    # service (port 6379) is not needed.
    case " $missing " in
        *" redis-server "*)
            if [ -d /run/systemd/system ]; then
                $SUDO systemctl disable --now redis-server.service >/dev/null 2>&1 || true
            fi
            ;;
    esac
    case " $missing " in
        *" prometheus "*)
            if [ -d /run/systemd/system ]; then
                echo "install-deps: disabling the prometheus service (only promtool is needed)"
                $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
            fi
            ;;
    esac
fi

for dir in tests/node bench web tests/browser; do
    if [ -f "$dir/package.json" ] && [ ! -d "$dir/node_modules" ]; then
        echo "install-deps: npm ci in $dir"
        (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    fi
done
