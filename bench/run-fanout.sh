#!/usr/bin/env bash
# run-fanout.sh: push fan-out (`make bench-fanout`, not part of `make test`).
# Starts wsgate (embedded store, GATEWAY_WORKERS=${WORKERS:-2}), records one
# session, and for each N in SUBS (default "5000 10000 50000") opens N
# /ws/events streams of that session's user and publishes RATE_FOR_N events/s
# (DELIVERIES / N, default 100000 deliveries/s) for SECONDS (default 10) through
# POST /v1/events. Prints bench/fanout's JSON line per N: delivery latency
# (publish to receipt) p50/p99/p999, deliveries/s, gateway CPU per delivery.
# N needs N + 64 file descriptors in both processes (`ulimit -n`); an N past
# the limit is skipped with a note. Nchan and a Node `ws` broadcast server are
# not run yet (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
SUBS=${SUBS:-"5000 10000 50000"}
DELIVERIES=${DELIVERIES:-100000}
SECONDS_=${SECONDS:-10}
mkdir -p build/bench
cc -std=c17 -O2 -Wall -Wextra -Werror -o build/bench/fanout bench/fanout.c
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
APORT=$(free_port)
TOKEN=bench-admin-token
LOG=$(mktemp /tmp/wsgate-fanout-XXXXXX.log)
GATEWAY_PUBLIC_HTTP_ADDR=127.0.0.1:$PORT GATEWAY_ADMIN_HTTP_ADDR=127.0.0.1:$APORT GATEWAY_ADMIN_TOKEN=$TOKEN \
GATEWAY_WORKERS=${WORKERS:-2} GATEWAY_LOG_LEVEL=warn GATEWAY_PUSH_QUEUE_LIMIT=100000 GATEWAY_WS_PING_INTERVAL=0 \
GATEWAY_AUTHENTICATED_GRPC_ADDR= build/wsgate serve 2>"$LOG" &
GPID=$!
trap 'kill "$GPID" 2>/dev/null; wait "$GPID" 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.05
done
SHA=$(printf '%s' bench-bearer | sha256sum | cut -d' ' -f1)
curl -fs -X POST "http://127.0.0.1:$APORT/v1/sessions" -H "Authorization: Bearer $TOKEN" \
    -d "{\"device_session_id\":\"bench\",\"user_id\":\"bench-user\",\"status\":\"active\",\"token_sha256\":\"$SHA\",\"version\":1}" >/dev/null
LIMIT=$(ulimit -n)
echo "fanout: embedded store, $(nproc) cores, gateway workers ${WORKERS:-2}, ${DELIVERIES} deliveries/s offered, ${SECONDS_}s per run"
for N in $SUBS; do
    if [ $((N + 64)) -gt "$LIMIT" ]; then
        echo "{\"subscribers\":$N,\"skipped\":\"needs $((N + 64)) file descriptors, ulimit -n is $LIMIT\"}"
        continue
    fi
    RATE=$(( DELIVERIES / N )); [ "$RATE" -ge 1 ] || RATE=1
    build/bench/fanout 127.0.0.1 "$PORT" "$APORT" "$TOKEN" bench-bearer bench-user "$N" "$RATE" "$SECONDS_" "$GPID"
    sleep 1
done
