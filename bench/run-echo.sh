#!/usr/bin/env bash
# Echo benchmark: wsgate against a bare C epoll echo (the floor) and Node's
# `ws` (a familiar reference). Each server runs alone, pinned to CPU 1; the
# load generator is pinned to CPU 0. For 64 B, 512 B and 16 KiB messages it
# measures closed-loop throughput, open-loop latency at a fixed rate, and the
# server's CPU time per echoed message; then RSS per idle connection.
# See README.md for how to read the table. Knobs (environment):
#   WSGATE_BIN (../build/wsgate)   BENCH_DURATION (4 s measured per run)
#   BENCH_PORT_BASE (18700)        BENCH_IDLE_CONNS (10000)
#   BENCH_SERVERS ("wsgate bare node")
# Starts and stops only its own processes, by PID, also on failure.
set -u
cd "$(dirname "$0")" || exit 2
. ./lib.sh

BIN=../build/bench
WSGATE=${WSGATE_BIN:-../build/wsgate}
PORT_BASE=${BENCH_PORT_BASE:-18700}
DUR=${BENCH_DURATION:-4}
WARM=1
CONNS=50           # connections for throughput and rate runs
WINDOW=8           # throughput mode: messages in flight per connection
RATE_CONNS=50
SIZES=(64 512 16384)
declare -A RATE=([64]=20000 [512]=20000 [16384]=5000)
IDLE_CONNS=${BENCH_IDLE_CONNS:-10000}
IDLE_HOLD=4
SERVERS=(${BENCH_SERVERS:-wsgate bare node})
CLK_TCK=$(getconf CLK_TCK)

TMP=$(mktemp -d /tmp/wsgate-bench.XXXXXX)
RESULTS=$BIN/echo-results.txt
SERVER_PID=""
LOADGEN_PID=""
STATUS=0

cleanup() {
    [ -n "$LOADGEN_PID" ] && stop_pid "$LOADGEN_PID"
    [ -n "$SERVER_PID" ] && stop_pid "$SERVER_PID"
    LOADGEN_PID=""; SERVER_PID=""
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

require_tools "$BIN"

# Pinning: server on CPU 1, load generator on CPU 0, when there are 2 CPUs.
pin_cpus

# Both the server and the load generator hold IDLE_CONNS sockets.
raise_nofile 65536 1 200

# Runs the load generator pinned, in the background of this shell (not in a
# $(...) subshell) so that the trap knows its PID and can stop it. Its
# key=value result line is left in LINE; its stderr goes to lg.err.
LINE=""
loadgen() {
    : >"$TMP/lg.out"
    "${PIN_LOAD[@]}" "$BIN/loadgen" "$@" >"$TMP/lg.out" 2>>"$TMP/lg.err" &
    LOADGEN_PID=$!
    wait "$LOADGEN_PID"
    local rc=$?
    LOADGEN_PID=""
    LINE=$(grep -m1 '^mode=' "$TMP/lg.out")
    return $rc
}

cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# Waits until the server answers: /readyz 200 for wsgate, a TCP accept for
# the others. Then one real WebSocket echo on the benchmark path.
wait_ready() { # name port path
    local name=$1 port=$2 path=$3 i
    for i in $(seq 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || { log "$name: exited during startup"; return 1; }
        if [ "$name" = wsgate ]; then
            [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ] && break
        else
            port_busy "$port" && break
        fi
        sleep 0.1
    done
    [ "$i" -lt 100 ] || { log "$name: not ready after 10 s"; return 1; }
    local line
    loadgen --mode rate --port "$port" --path "$path" --conns 2 --size 64 --rate 200 \
        --duration 0.2 --warmup 0 --drain 2 --label smoke
    line=$LINE
    if [ "$(kv "$line" errors)" != 0 ] || [ "$(kv "$line" echoed)" = 0 ]; then
        log "$name: does not echo on $path ($line)"
        tail -n 5 "$TMP/lg.err" >&2
        return 1
    fi
}

start_server() { # name port -> sets SERVER_PID, PATH_WS
    local name=$1 port=$2
    case $name in
    wsgate)
        PATH_WS=/probe/ws
        if [ ! -x "$WSGATE" ]; then
            log "wsgate: $WSGATE not found (run make at the top level); skipping it"
            return 1
        fi
        # A clean environment for the gateway: only the variables we set.
        (
            for v in $(compgen -e | grep '^GATEWAY_'); do unset "$v"; done
            export GATEWAY_PUBLIC_HTTP_ADDR=127.0.0.1:$port GATEWAY_WORKERS=1 \
                GATEWAY_LOG_LEVEL=warn GATEWAY_AUTHENTICATED_GRPC_ADDR= \
                GATEWAY_SHUTDOWN_TIMEOUT=2s
            exec "${PIN_SERVER[@]}" "$WSGATE" serve
        ) >"$TMP/$name.log" 2>&1 &
        ;;
    bare)
        PATH_WS=/
        "${PIN_SERVER[@]}" "$BIN/bare_echo" "$port" >"$TMP/$name.log" 2>&1 &
        ;;
    node)
        PATH_WS=/
        if ! command -v node >/dev/null 2>&1 || [ ! -d node_modules/ws ]; then
            log "node: node or node_modules/ws missing (npm ci in bench/); skipping it"
            return 1
        fi
        "${PIN_SERVER[@]}" node node_echo.js "$port" >"$TMP/$name.log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    if ! wait_ready "$name" "$port" "$PATH_WS"; then
        tail -n 5 "$TMP/$name.log" >&2
        stop_pid "$SERVER_PID"; SERVER_PID=""
        return 1
    fi
}

declare -A TPUT P50 P99 P999 CPU ERR ACH IDLE_B IDLE_UP
RAN=()

bench_server() { # name port
    local name=$1 port=$2 line size rss0 rss1 c0 c1 echoed errs i
    log "== $name (port $port)"
    start_server "$name" "$port" || return 1
    local pid=$SERVER_PID

    # Idle connections first, on a fresh server, so that memory freed by
    # earlier runs does not hide what connections cost.
    rss0=$(rss_kb "$pid")
    "${PIN_LOAD[@]}" "$BIN/loadgen" --mode idle --port "$port" --path "$PATH_WS" \
        --conns "$IDLE_CONNS" --hold "$IDLE_HOLD" --connect-timeout 60 \
        --label "$name" >"$TMP/idle.out" 2>>"$TMP/lg.err" &
    LOADGEN_PID=$!
    await_idle_up "$TMP/idle.out" "$LOADGEN_PID" 600
    sleep 1
    rss1=$(rss_kb "$pid")
    wait "$LOADGEN_PID"; LOADGEN_PID=""
    line=$(grep '^idle_up' "$TMP/idle.out")
    echo "$line" >>"$RESULTS"; grep '^mode=' "$TMP/idle.out" >>"$RESULTS"
    IDLE_UP[$name]=$(kv "$line" up)
    if [ "${IDLE_UP[$name]}" != '?' ] && [ "${IDLE_UP[$name]}" -gt 0 ]; then
        IDLE_B[$name]=$(awk -v a="$rss0" -v b="$rss1" -v n="${IDLE_UP[$name]}" \
            'BEGIN{printf "%.0f", (b - a) * 1024 / n}')
        IDLE_B[$name.kb]="$rss0 -> $rss1 KiB"
    fi
    [ "${IDLE_UP[$name]}" = "$IDLE_CONNS" ] || STATUS=1
    log "   idle: ${IDLE_UP[$name]}/$IDLE_CONNS up, VmRSS $rss0 -> $rss1 KiB"
    sleep 0.5

    for size in "${SIZES[@]}"; do
        c0=$(cpu_ticks "$pid")
        loadgen --mode throughput --port "$port" --path "$PATH_WS" --conns "$CONNS" \
            --window "$WINDOW" --size "$size" --duration "$DUR" --warmup "$WARM" --label "$name"
        line=$LINE
        c1=$(cpu_ticks "$pid")
        echo "$line" >>"$RESULTS"
        TPUT[$name.$size]=$(kv "$line" msgs_per_s)
        echoed=$(kv "$line" echoed)
        errs=$(num "$(kv "$line" errors)")
        CPU[$name.$size]=$(awk -v t="$((c1 - c0))" -v hz="$CLK_TCK" -v n="$echoed" \
            'BEGIN{ if (n > 0) printf "%.2f", t / hz * 1e6 / n; else print "?" }')
        loadgen --mode rate --port "$port" --path "$PATH_WS" --conns "$RATE_CONNS" \
            --size "$size" --rate "${RATE[$size]}" --duration "$DUR" --warmup "$WARM" --label "$name"
        line=$LINE
        echo "$line" >>"$RESULTS"
        P50[$name.$size]=$(kv "$line" p50_us)
        P99[$name.$size]=$(kv "$line" p99_us)
        P999[$name.$size]=$(kv "$line" p999_us)
        ACH[$name.$size]=$(kv "$line" rate_achieved)
        errs=$((errs + $(num "$(kv "$line" errors)")))
        ERR[$name.$size]=$errs
        [ "$errs" -eq 0 ] || STATUS=1
        log "   ${size} B: ${TPUT[$name.$size]} msg/s, ${CPU[$name.$size]} us CPU/msg," \
            "p50/p99/p999 ${P50[$name.$size]}/${P99[$name.$size]}/${P999[$name.$size]} us, errors $errs"
        kill -0 "$pid" 2>/dev/null || { log "$name: died"; SERVER_PID=""; STATUS=1; return 1; }
    done
    stop_pid "$SERVER_PID"; SERVER_PID=""
    RAN+=("$name")
}

: >"$RESULTS"
log "echo benchmark: ${DUR}s per run after ${WARM}s warm-up; results also in $RESULTS"
port=$PORT_BASE
for name in "${SERVERS[@]}"; do
    while port_busy "$port"; do port=$((port + 1)); done
    bench_server "$name" "$port" || STATUS=1
    rm -f "$TMP/lg.out"
    port=$((port + 1))
done

ratio() { # a b
    awk -v a="$1" -v b="$2" 'BEGIN{ if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "-" }'
}
has() { local x; for x in "${RAN[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }

echo
echo "Echo benchmark: server pinned to CPU 1, load generator to CPU 0; throughput with"
echo "$CONNS connections x $WINDOW in flight; latency at a fixed open-loop rate over $RATE_CONNS"
echo "connections (64 B and 512 B: ${RATE[64]} msg/s, 16 KiB: ${RATE[16384]} msg/s), measured from the"
echo "scheduled send time. CPU us/msg = server utime+stime / messages echoed in the throughput run."
echo
printf '%-7s %6s %10s %8s %9s %9s %9s %10s %8s %8s %6s\n' server size msgs/s rate p50_us p99_us \
    p999_us cpu_us/msg gw/bare gw/node errors
for name in "${SERVERS[@]}"; do
    has "$name" || { printf '%-7s %s\n' "$name" "(not measured)"; continue; }
    for size in "${SIZES[@]}"; do
        k=$name.$size
        rb=-; rn=-
        if [ "$name" = wsgate ]; then
            has bare && rb=$(ratio "${CPU[$k]}" "${CPU[bare.$size]}")
            has node && rn=$(ratio "${CPU[$k]}" "${CPU[node.$size]}")
        fi
        label=$size; [ "$size" = 16384 ] && label=16K
        printf '%-7s %6s %10s %8s %9s %9s %9s %10s %8s %8s %6s\n' "$name" "$label" "${TPUT[$k]}" \
            "${ACH[$k]}" "${P50[$k]}" "${P99[$k]}" "${P999[$k]}" "${CPU[$k]}" "$rb" "$rn" "${ERR[$k]}"
    done
done
echo
for name in "${SERVERS[@]}"; do
    has "$name" || continue
    printf 'idle RSS %-7s %6s bytes/connection (%s connections up; VmRSS %s)\n' "$name" \
        "${IDLE_B[$name]:-?}" "${IDLE_UP[$name]:-?}" "${IDLE_B[$name.kb]:-?}"
done
has wsgate || echo "wsgate was not measured (see messages above)."
exit $STATUS
