#!/usr/bin/env bash
# run-fanout.sh: push fan-out (`make bench-fanout`, not part of `make test`).
# For each N in SUBS (default "5000 10000 50000") and each server in SERVERS
# (default "wsgate nchan node"), one after the other in the same run: opens N
# WebSocket subscribers of one channel (wsgate: N /ws/events streams of one
# session's user) and publishes DELIVERIES / N events per second (default
# 100000 deliveries/s) for SECONDS (default 10) over keep-alive HTTP POSTs.
#   wsgate: embedded store, GATEWAY_WORKERS=${WORKERS:-2}, POST /v1/events.
#   nchan:  nginx + Debian's libnginx-mod-nchan, ${WORKERS:-2} worker
#           processes, nchan_subscriber websocket / nchan_publisher.
#   node:   bench/node_fanout.js (Node `ws`, one thread, frame built once).
# Prints bench/fanout's JSON line per (N, server): delivery latency (publish
# to receipt) p50/p99/p999, deliveries/s, server CPU per delivery (summed over
# the server's processes), then the CPU ratios against wsgate.
# N needs N + 64 file descriptors in both processes (`ulimit -n`); an N past
# the limit is skipped with a note. A server whose binary or module is
# missing is skipped with a note.
set -euo pipefail
cd "$(dirname "$0")/.."
SUBS=${SUBS:-"5000 10000 50000"}
SERVERS=${SERVERS:-"wsgate nchan node"}
DELIVERIES=${DELIVERIES:-100000}
SECONDS_=${SECONDS:-10}
W=${WORKERS:-2}
mkdir -p build/bench
cc -std=c17 -O2 -Wall -Wextra -Werror -o build/bench/fanout bench/fanout.c
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d /tmp/wsgate-fanout-XXXXXX)
SPID=""
stop_server() {
    if [ -n "$SPID" ]; then
        kill "$SPID" 2>/dev/null || true
        wait "$SPID" 2>/dev/null || true
        SPID=""
    fi
}
trap 'stop_server; rm -rf "$WORK"' EXIT
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "run-fanout: nothing listens on $1" >&2
    return 1
}
NCHAN_MOD=/usr/lib/nginx/modules/ngx_nchan_module.so
LIMIT=$(ulimit -n)
TOKEN=bench-admin-token
echo "fanout: $(nproc) cores, ${W} workers per server, ${DELIVERIES} deliveries/s offered, ${SECONDS_}s per run"
RESULTS=$WORK/results.jsonl
for N in $SUBS; do
    if [ $((N + 64)) -gt "$LIMIT" ]; then
        echo "{\"subscribers\":$N,\"skipped\":\"needs $((N + 64)) file descriptors, ulimit -n is $LIMIT\"}"
        continue
    fi
    RATE=$(( DELIVERIES / N )); [ "$RATE" -ge 1 ] || RATE=1
    for S in $SERVERS; do
        PORT=$(free_port)
        case "$S" in
        wsgate)
            APORT=$(free_port)
            GATEWAY_PUBLIC_HTTP_ADDR=127.0.0.1:$PORT GATEWAY_ADMIN_HTTP_ADDR=127.0.0.1:$APORT \
            GATEWAY_ADMIN_TOKEN=$TOKEN GATEWAY_WORKERS=$W GATEWAY_LOG_LEVEL=warn GATEWAY_PUSH_QUEUE_LIMIT=100000 \
            GATEWAY_WS_PING_INTERVAL=0 GATEWAY_MAX_CONNECTIONS=$((N + 1000)) GATEWAY_PUSH_MAX_STREAMS_PER_SESSION=$((N + 1)) \
                build/wsgate serve 2>"$WORK/wsgate.log" &
            SPID=$!
            wait_port "$PORT"; wait_port "$APORT"
            SHA=$(printf '%s' bench-bearer | sha256sum | cut -d' ' -f1)
            curl -fs -X POST "http://127.0.0.1:$APORT/v1/sessions" -H "Authorization: Bearer $TOKEN" \
                -d "{\"device_session_id\":\"bench\",\"user_id\":\"bench-user\",\"status\":\"active\",\"token_sha256\":\"$SHA\",\"version\":1}" >/dev/null
            PIDS=$SPID
            ARGS=(/ws/events bench-bearer "$APORT" /v1/events "$TOKEN")
            ;;
        nchan)
            if [ ! -f "$NCHAN_MOD" ] || ! command -v nginx >/dev/null; then
                echo "{\"server\":\"nchan\",\"subscribers\":$N,\"skipped\":\"nginx or $NCHAN_MOD missing (apt-get install libnginx-mod-nchan)\"}"
                continue
            fi
            mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
            cat > "$WORK/nginx/nginx.conf" <<CONF
load_module $NCHAN_MOD;
daemon off;
worker_processes $W;
worker_rlimit_nofile $((N + 1000));
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections $((N + 1000)); }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    client_body_temp_path $WORK/nginx/tmp;
    proxy_temp_path $WORK/nginx/tmp;
    fastcgi_temp_path $WORK/nginx/tmp;
    uwsgi_temp_path $WORK/nginx/tmp;
    scgi_temp_path $WORK/nginx/tmp;
    server {
        listen 127.0.0.1:$PORT;
        location = /sub { nchan_subscriber websocket; nchan_channel_id bench; }
        location = /pub { nchan_publisher; nchan_channel_id bench; nchan_message_buffer_length 16; }
    }
}
CONF
            nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>"$WORK/nginx/stderr.log" &
            SPID=$!
            wait_port "$PORT"
            PIDS=$(pgrep -P "$SPID" | paste -sd, -)
            PIDS="$SPID${PIDS:+,$PIDS}"
            ARGS=(/sub - "$PORT" /pub -)
            ;;
        node)
            if ! command -v node >/dev/null || [ ! -d bench/node_modules/ws ]; then
                echo "{\"server\":\"node\",\"subscribers\":$N,\"skipped\":\"node or bench/node_modules/ws missing (npm ci in bench)\"}"
                continue
            fi
            node bench/node_fanout.js "$PORT" 2>"$WORK/node.log" &
            SPID=$!
            wait_port "$PORT"
            PIDS=$SPID
            ARGS=(/ws - "$PORT" /pub -)
            ;;
        *) echo "run-fanout: unknown server $S" >&2; exit 2 ;;
        esac
        build/bench/fanout "$S" 127.0.0.1 "$PORT" "${ARGS[0]}" "${ARGS[1]}" "${ARGS[2]}" "${ARGS[3]}" "${ARGS[4]}" \
            bench-user "$N" "$RATE" "$SECONDS_" "$PIDS" | tee -a "$RESULTS"
        stop_server
        sleep 1
    done
done
# CPU per delivery of each server as a ratio to wsgate's at the same N.
/usr/bin/python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["subscribers"], {})[r["server"]] = r
for n, servers in sorted(by.items()):
    w = servers.get("wsgate")
    if not w:
        continue
    for s, r in servers.items():
        if s != "wsgate" and r["server_cpu_us_per_delivery"]:
            both = lambda x: x["server_cpu_us_per_delivery"] + x["client_cpu_us_per_delivery"]
            print(json.dumps({"subscribers": n, "ratio": f"wsgate/{s}",
                              "cpu_per_delivery": round(w["server_cpu_us_per_delivery"] / r["server_cpu_us_per_delivery"], 3),
                              "server_plus_client_cpu": round(both(w) / both(r), 3),
                              "p99": round(w["p99_ms"] / r["p99_ms"], 3) if r["p99_ms"] else None}))
PY
