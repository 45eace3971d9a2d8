#!/usr/bin/env bash
# Relay benchmark: wsgate as a WebSocket reverse proxy against nginx and
# HAProxy, all three in front of the same upstream (bare_echo). Each relay has
# one worker/process/thread and is pinned to CPU 1; the upstream and the load
# generator share CPU 0, so CPU 1 carries only relays, and only one of them
# has traffic at a time.
# Measures, per relay: closed-loop messages/s at 64 B and 4 KiB with 100 and
# 1,000 connections and the relay's CPU time per relayed message; open-loop
# latency at a fixed rate; new relayed connections per second; RSS per idle
# relayed connection. The load tests are interleaved across the relays and
# repeated (BENCH_ROUNDS), keeping each relay's best figure, so that a burst
# of unrelated load on this shared machine does not land on one relay only.
# See README.md ("Relay benchmark") for how to read the table.
# Knobs (environment):
#   WSGATE_BIN (../build/wsgate)    BENCH_DURATION (3 s measured per run)
#   BENCH_PORT_BASE (18800)         BENCH_IDLE_CONNS (9000)
#   BENCH_RELAYS ("nginx haproxy wsgate")   BENCH_ROUNDS (3)
#   BENCH_RATE (10000 msg/s)        BENCH_CONNECT_CONNS (30000, at most)
# Starts and stops only its own processes, by PID, also on failure.
set -u
cd "$(dirname "$0")" || exit 2
. ./lib.sh
. ./relay_conf.sh

BIN=../build/bench
WSGATE=${WSGATE_BIN:-../build/wsgate}
NGINX=/usr/sbin/nginx
HAPROXY=/usr/sbin/haproxy
PORT_BASE=${BENCH_PORT_BASE:-18800}
DUR=${BENCH_DURATION:-3}
ROUNDS=${BENCH_ROUNDS:-3}
TIME_BUDGET=390          # seconds: no new round starts after this (total < 8 min)
WARM=1
WINDOW=4                 # throughput: messages in flight per connection
TP_CONNS=(100 1000)
TP_SIZES=(64 4096)
RATE=${BENCH_RATE:-10000}
RATE_CONNS=100
RATE_SIZE=512
CONNECT_CONNS=${BENCH_CONNECT_CONNS:-30000}
CONNECT_PAR=32           # connect test: handshakes in progress at a time
CONNECT_DUR=3            # connect test: time limit, seconds
IDLE_CONNS=${BENCH_IDLE_CONNS:-9000}
RELAYS=(${BENCH_RELAYS:-nginx haproxy wsgate})
WS_PATH=/relay/bench     # any path: every relay forwards it unchanged
CLK_TCK=$(getconf CLK_TCK)

TMP=$(mktemp -d /tmp/wsgate-relay-bench.XXXXXX)
RESULTS=$BIN/relay-results.txt
UP_PID=""
RELAY_PID=""              # set by start_relay
declare -A PID            # relay name -> PID, while it runs
LOADGEN_PID=""
STATUS=0

cleanup() {
    [ -n "$LOADGEN_PID" ] && stop_pid "$LOADGEN_PID"
    local n
    for n in "${!PID[@]}"; do stop_pid "${PID[$n]}"; done
    [ -n "$RELAY_PID" ] && stop_pid "$RELAY_PID"
    [ -n "$UP_PID" ] && stop_pid "$UP_PID"
    LOADGEN_PID=""; RELAY_PID=""; UP_PID=""; PID=()
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

require_tools "$BIN"

# nginx and HAProxy come from Debian; install them when missing (needs root).
need_pkgs=()
[ -x "$NGINX" ] || need_pkgs+=(nginx-light)
[ -x "$HAPROXY" ] || need_pkgs+=(haproxy)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]} with apt-get"
    if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo -n); fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${need_pkgs[@]}" >"$TMP/apt.log" 2>&1 ||
        { "${SUDO[@]}" apt-get update >>"$TMP/apt.log" 2>&1 &&
          "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
              --no-install-recommends "${need_pkgs[@]}" >>"$TMP/apt.log" 2>&1; } ||
        { log "apt-get failed:"; tail -n 5 "$TMP/apt.log" >&2; }
    # Debian starts the packaged services on install; they listen on :80,
    # not on our ports, and are not ours to stop.
fi

# Pinning: relay on CPU 1; upstream and load generator on CPU 0.
pin_cpus
PIN_RELAY=("${PIN_SERVER[@]}")

# The relay holds 2 descriptors per idle relayed connection; the upstream and
# the load generator one each. Every process started from here inherits this.
raise_nofile 20000 2 200
# Relayed connections the relays must accept at once: the most any test opens.
MAXCONN=$IDLE_CONNS
for c in "${TP_CONNS[@]}" "$RATE_CONNS" "$CONNECT_PAR"; do [ "$c" -gt "$MAXCONN" ] && MAXCONN=$c; done
MAXCONN=$((MAXCONN + 500))
NGINX_CONNS=$((2 * MAXCONN + 2 * MAXCONN / 15))
[ "$NOFILE" != unlimited ] && [ "$NGINX_CONNS" -gt "$NOFILE" ] && NGINX_CONNS=$NOFILE


# The load generator (lib.sh) keeps its stderr here, for the idle test to show.
LG_ERR=$TMP/lg.cur

cpu_ticks() { { sed "s/.*) //" "/proc/$1/stat" 2>/dev/null || echo; } | awk '{print $12 + $13}'; }

per_unit() { # ticks count -> microseconds of CPU per unit
    awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" \
        'BEGIN{ if (n + 0 > 0) printf "%.2f", t / hz * 1e6 / n; else print "?" }'
}

# One real WebSocket echo through port $1: errors 0 and something echoed.
smoke() { # name port
    loadgen --mode rate --port "$2" --path "$WS_PATH" --conns 2 --size 64 --rate 200 \
        --duration 0.2 --warmup 0 --drain 2 --label "smoke-$1"
    if [ "$(kv "$LINE" errors)" != 0 ] || [ "$(kv "$LINE" echoed)" = 0 ] ||
        [ "$(kv "$LINE" echoed)" = '?' ]; then
        log "$1: does not echo on $WS_PATH (${LINE:-no result})"
        return 1
    fi
}

start_upstream() {
    UP_PORT=$(free_port "$PORT_BASE")
    "${PIN_LOAD[@]}" "$BIN/bare_echo" "$UP_PORT" >"$TMP/upstream.log" 2>&1 &
    UP_PID=$!
    local i
    for i in $(seq 50); do
        port_busy "$UP_PORT" && break
        kill -0 "$UP_PID" 2>/dev/null || break
        sleep 0.1
    done
    smoke upstream "$UP_PORT" || { cat "$TMP/upstream.log" >&2; exit 2; }
}

# Starts relay $1 on port $2 pinned to CPU 1 -> RELAY_PID; 1 when it is not
# available (missing binary, does not start, does not relay).
start_relay() { # name port
    local name=$1 port=$2 i
    case $name in
    nginx|haproxy)
        launch_relay "$name" "$port" || return 1
        ;;
    wsgate)
        [ -x "$WSGATE" ] || { log "wsgate: $WSGATE not found (run make at the top level)"; return 1; }
        printf '{"routes":[{"path":"/","kind":"proxy","upstream":"http://127.0.0.1:%s"}]}\n' \
            "$UP_PORT" >"$TMP/routes.json"
        # A clean environment for the gateway: only the variables we set.
        (
            for v in $(compgen -e | grep '^GATEWAY_'); do unset "$v"; done
            export GATEWAY_PUBLIC_HTTP_ADDR=127.0.0.1:$port GATEWAY_WORKERS=1 \
                GATEWAY_LOG_LEVEL=warn GATEWAY_AUTHENTICATED_GRPC_ADDR= \
                GATEWAY_SHUTDOWN_TIMEOUT=2s GATEWAY_ROUTES_FILE=$TMP/routes.json
            exec "${PIN_RELAY[@]}" "$WSGATE" serve
        ) >"$TMP/$name.log" 2>&1 &
        ;;
    esac
    RELAY_PID=$!
    for i in $(seq 100); do
        kill -0 "$RELAY_PID" 2>/dev/null || break
        if [ "$name" = wsgate ]; then
            [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ] && break
        else
            port_busy "$port" && break
        fi
        sleep 0.1
    done
    if ! kill -0 "$RELAY_PID" 2>/dev/null || [ "$i" -ge 100 ] || ! smoke "$name" "$port"; then
        log "$name: not relaying; its output:"
        tail -n 5 "$TMP/$name.log" >&2
        [ "$name" = nginx ] && tail -n 5 "$TMP/nginx/error.log" >&2 2>/dev/null
        stop_pid "$RELAY_PID"; RELAY_PID=""
        return 1
    fi
}

declare -A R        # R[name.figure] = value (best over the rounds)
declare -A UNAVAIL  # relays that could not be measured -> why
declare -A ERRS     # relay -> errors over all its runs
declare -A OTHER    # relay -> most CPU (in cores) other processes used in one of its runs
TP_KEYS=()
for size in "${TP_SIZES[@]}"; do
    for c in "${TP_CONNS[@]}"; do TP_KEYS+=("$size.$c"); done
done

upstream_alive() {
    kill -0 "$UP_PID" 2>/dev/null && return 0
    log "upstream died"; cat "$TMP/upstream.log" >&2; exit 2
}

# What else ran on this shared machine during a run: all CPUs' user + system
# + steal ticks from /proc/stat, minus our relays', the upstream's and this
# script's children's (the load generator's) own. Interrupt and softirq time
# is left out on both sides (this kernel accounts it apart from processes).
# Runs in this shell, not in $(...), for `times` to see the load generator.
SAMPLE=""
cpu_sample() {
    local n ours t ch
    ours=$(cpu_ticks "$UP_PID")
    for n in "${!PID[@]}"; do ours=$((ours + $(cpu_ticks "${PID[$n]}"))); done
    t=$(times); ch=${t#*$'\n'}
    SAMPLE=$(awk -v r="$ours" -v ch="$ch" -v hz="$CLK_TCK" '
        function secs(s,  m) { m = s; sub(/m.*/, "", m); sub(/^[0-9]+m/, "", s); sub(/s$/, "", s);
                               return m * 60 + s }
        /^cpu /{ split(ch, c, " "); print $2 + $3 + $4 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9,
                 r + (secs(c[1]) + secs(c[2])) * hz }' /proc/stat)
}
note_other() { # name "before" "after": keeps the most CPU others used, in cores
    local cores
    cores=$(awk -v a="$2" -v b="$3" -v ncpu="$(nproc)" 'BEGIN{ split(a, x, " "); split(b, y, " ");
        t = (y[2] - x[2]) / ncpu; o = (y[1] - x[1]) - (y[3] - x[3]); if (o < 0) o = 0;
        printf "%.2f", (t > 0 ? o / t : 0) }')
    OTHER_NOW=$cores
    awk -v a="$cores" -v b="${OTHER[$1]:-0}" 'BEGIN{exit !(a + 0 > b + 0)}' && OTHER[$1]=$cores
}
best() { # name.key value max|min: keeps the better of the stored and new value
    local k=$1 v=$2 old=${R[$1]:-}
    case $v in ''|'?') return;; esac
    if [ -z "$old" ] || awk -v a="$v" -v b="$old" -v d="$3" \
        'BEGIN{ exit !(d == "max" ? a + 0 > b + 0 : a + 0 < b + 0) }'; then
        R[$k]=$v
    fi
}
count_errors() { # name line
    ERRS[$1]=$(( ${ERRS[$1]:-0} + $(num "$(kv "$2" errors)") ))
}

# Idle relayed connections, on a fresh relay, so that memory freed by
# earlier runs does not hide what connections cost.
idle_test() { # name port
    local name=$1 port=$2 pid=${PID[$1]} rss0 rss1 line up i
    upstream_alive
    idle_rss "$pid" "$port" "$WS_PATH" "$name"
    rss0=$RSS0 rss1=$RSS1
    grep -q ' errors=0' "$TMP/idle.out" ||
        grep -v 'connections up in' "$TMP/lg.cur" | head -n 3 | sed 's/^/     /' >&2
    line=$(grep '^idle_up' "$TMP/idle.out")
    echo "$line" >>"$RESULTS"; grep '^mode=' "$TMP/idle.out" >>"$RESULTS"
    up=$(kv "$line" up)
    R[$name.idle_up]=$up
    if [ "$up" != '?' ] && [ "$up" -gt 0 ]; then
        R[$name.idle_b]=$(awk -v a="$rss0" -v b="$rss1" -v n="$up" \
            'BEGIN{printf "%.0f", (b - a) * 1024 / n}')
    fi
    R[$name.idle_kb]="$rss0 -> $rss1"
    [ "$up" = "$IDLE_CONNS" ] || ERRS[$name]=$(( ${ERRS[$name]:-0} + 1 ))
    log "   $name idle: $up/$IDLE_CONNS up, VmRSS $rss0 -> $rss1 KiB," \
        "$(( ${R[$name.idle_b]:-0} )) B/connection"
}

throughput_test() { # name port size conns
    local name=$1 port=$2 k=$3.$4 c0 c1 s0 s1 line cpu
    upstream_alive
    cpu_sample; s0=$SAMPLE; c0=$(cpu_ticks "${PID[$name]}")
    loadgen --mode throughput --port "$port" --path "$WS_PATH" --conns "$4" \
        --window "$WINDOW" --size "$3" --duration "$DUR" --warmup "$WARM" \
        --connect-timeout 20 --label "$name"
    line=$LINE
    c1=$(cpu_ticks "${PID[$name]}"); cpu_sample; s1=$SAMPLE
    note_other "$name" "$s0" "$s1"
    cpu=$(per_unit $((c1 - c0)) "$(kv "$line" echoed)")
    best "$name.tp.$k" "$(kv "$line" msgs_per_s)" max
    best "$name.cpu.$k" "$cpu" min
    count_errors "$name" "$line"
    log "   $name $3 B x $4: $(kv "$line" msgs_per_s) msg/s, $cpu us CPU/msg," \
        "errors $(kv "$line" errors); others used $OTHER_NOW cores"
}

rate_test() { # name port
    local name=$1 port=$2 line k s0 s1
    upstream_alive
    cpu_sample; s0=$SAMPLE
    loadgen --mode rate --port "$port" --path "$WS_PATH" --conns "$RATE_CONNS" \
        --size "$RATE_SIZE" --rate "$RATE" --duration "$DUR" --warmup "$WARM" --label "$name"
    line=$LINE
    cpu_sample; s1=$SAMPLE
    note_other "$name" "$s0" "$s1"
    # The best round is the one with the lowest p99; its other percentiles
    # go with it, so that one row is one run.
    if [ "$(kv "$line" p99_us)" != '?' ] && { [ -z "${R[$name.p99_us]:-}" ] ||
        awk -v a="$(kv "$line" p99_us)" -v b="${R[$name.p99_us]}" 'BEGIN{exit !(a + 0 < b + 0)}'; }; then
        for k in rate_achieved p50_us p99_us p999_us; do R[$name.$k]=$(kv "$line" "$k"); done
    fi
    count_errors "$name" "$line"
    log "   $name rate $RATE msg/s: achieved $(kv "$line" rate_achieved), p50/p99/p999" \
        "$(kv "$line" p50_us)/$(kv "$line" p99_us)/$(kv "$line" p999_us) us," \
        "errors $(kv "$line" errors); others used $OTHER_NOW cores"
}

connect_test() { # name port
    local name=$1 port=$2 line c0 c1 s0 s1 cpu
    upstream_alive
    cpu_sample; s0=$SAMPLE; c0=$(cpu_ticks "${PID[$name]}")
    loadgen --mode connect --port "$port" --path "$WS_PATH" --conns "$CONNECT_CONNS" \
        --connect-parallel "$CONNECT_PAR" --size 64 --duration "$CONNECT_DUR" --drain 5 \
        --label "$name"
    line=$LINE
    c1=$(cpu_ticks "${PID[$name]}"); cpu_sample; s1=$SAMPLE
    note_other "$name" "$s0" "$s1"
    cpu=$(per_unit $((c1 - c0)) "$(kv "$line" completed)")
    best "$name.cps" "$(kv "$line" conns_per_s)" max
    best "$name.cpu_conn" "$cpu" min
    count_errors "$name" "$line"
    log "   $name connect: $(kv "$line" conns_per_s) conn/s ($cpu us CPU/conn)," \
        "errors $(kv "$line" errors); others used $OTHER_NOW cores"
}

T0=$(date +%s)
: >"$RESULTS"
log "relay benchmark: relays ${RELAYS[*]}; $ROUNDS rounds of ${DUR}s runs after ${WARM}s warm-up;"
log "every run's result line goes to $RESULTS"
start_upstream
log "upstream bare_echo on port $UP_PORT (pid $UP_PID)"

declare -A PORT
LIVE=()
port=$((UP_PORT + 1))
for name in "${RELAYS[@]}"; do
    port=$(free_port "$port")
    if start_relay "$name" "$port"; then
        PID[$name]=$RELAY_PID; RELAY_PID=""
        PORT[$name]=$port
        LIVE+=("$name")
        log "$name relaying on port $port (pid ${PID[$name]})"
    else
        UNAVAIL[$name]="not relaying"
        [ "$name" = wsgate ] || STATUS=1
    fi
    port=$((port + 1))
done

alive() { # name: false (and marks it) once the relay has died
    kill -0 "${PID[$1]}" 2>/dev/null && return 0
    log "$1: died"; tail -n 5 "$TMP/$1.log" >&2
    UNAVAIL[$1]="died during the run"; STATUS=1
    unset "PID[$1]"
    return 1
}
live_now() { local n out=(); for n in "${LIVE[@]}"; do [ -n "${PID[$n]:-}" ] && out+=("$n"); done; LIVE=("${out[@]}"); }

log "== idle: $IDLE_CONNS relayed connections each"
for name in "${LIVE[@]}"; do
    idle_test "$name" "${PORT[$name]}"
    alive "$name"
    sleep 1 # let the relay finish closing them
done
live_now

DONE_ROUNDS=0
for round in $(seq "$ROUNDS"); do
    if [ "$round" -gt 1 ] && [ $(( $(date +%s) - T0 )) -gt "$TIME_BUDGET" ]; then
        log "== time budget spent: stopping after $DONE_ROUNDS rounds"
        break
    fi
    log "== round $round/$ROUNDS"
    for k in "${TP_KEYS[@]}"; do
        for name in "${LIVE[@]}"; do
            throughput_test "$name" "${PORT[$name]}" "${k%.*}" "${k#*.}"
        done
    done
    for name in "${LIVE[@]}"; do rate_test "$name" "${PORT[$name]}"; done
    for name in "${LIVE[@]}"; do connect_test "$name" "${PORT[$name]}"; done
    for name in "${LIVE[@]}"; do alive "$name"; done
    live_now
    DONE_ROUNDS=$round
done

for name in "${LIVE[@]}"; do
    if [ "${ERRS[$name]:-0}" -ne 0 ]; then
        STATUS=1
        log "$name: ${ERRS[$name]} errors; its log says:"
        tail -n 3 "$TMP/$name.log" >&2
        [ "$name" = nginx ] && sort "$TMP/nginx/error.log" | uniq -c | sort -rn | head -n 3 >&2
    fi
    R[$name.errors]=${ERRS[$name]:-0}
    R[$name.ran]=1
    stop_pid "${PID[$name]}"; unset "PID[$name]"
done
stop_pid "$UP_PID"; UP_PID=""

ran() { [ -n "${R[$1.ran]:-}" ]; }
ratio() { # a b
    awk -v a="$1" -v b="$2" 'BEGIN{ if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "-" }'
}

# One table: a row per test, a column per relay, then wsgate/nginx and
# wsgate/HAProxy (above 1: wsgate's figure is larger, which is better for
# msgs/s and connections/s and worse for everything else).
COLS=(nginx haproxy wsgate)
row() { # label key [noratio]
    local label=$1 key=$2 n v vals=()
    for n in "${COLS[@]}"; do
        if ran "$n"; then v=${R[$n.$key]:-?}; else v=-; fi
        vals+=("$v")
    done
    local rn=- rh=-
    if ran wsgate && [ $# -lt 3 ]; then
        ran nginx && rn=$(ratio "${R[wsgate.$key]:-}" "${R[nginx.$key]:-}")
        ran haproxy && rh=$(ratio "${R[wsgate.$key]:-}" "${R[haproxy.$key]:-}")
    fi
    printf '%-30s %10s %10s %10s %9s %9s\n' "$label" "${vals[@]}" "$rn" "$rh"
}
sizelabel() { case $1 in 4096) echo 4K;; *) echo "$1";; esac; }

echo
echo "Relay benchmark: loadgen -> relay -> bare_echo over loopback. Relays pinned to CPU 1 (one"
echo "worker/process/thread each, one relay loaded at a time); upstream and load generator on CPU 0."
echo "msgs/s: closed loop, $WINDOW messages in flight per connection, ${DUR}s. cpu: the relay's"
echo "utime+stime / messages echoed (or connections completed) in that run. Latency: open loop at"
echo "$RATE msg/s over $RATE_CONNS connections, $RATE_SIZE B, from the scheduled send time."
echo "Connections: up to $CONNECT_CONNS, $CONNECT_PAR at a time, ${CONNECT_DUR}s limit, each a handshake, one"
echo "64 B echo and a close. Idle: VmRSS growth over $IDLE_CONNS idle relayed connections."
echo "Best of $DONE_ROUNDS interleaved rounds (latency: the round with the lowest p99)."
echo
printf '%-30s %10s %10s %10s %9s %9s\n' test nginx haproxy wsgate gw/nginx gw/haprx
for k in "${TP_KEYS[@]}"; do
    row "msgs/s $(sizelabel "${k%.*}") x ${k#*.} conns" "tp.$k"
done
for k in "${TP_KEYS[@]}"; do
    row "cpu us/msg $(sizelabel "${k%.*}") x ${k#*.} conns" "cpu.$k"
done
row "rate achieved msg/s" rate_achieved
row "latency p50 us" p50_us
row "latency p99 us" p99_us
row "latency p999 us" p999_us
row "new connections/s" cps
row "cpu us/connection" cpu_conn
row "idle RSS bytes/connection" idle_b
row "idle connections up" idle_up noratio
row "errors (all runs)" errors noratio
echo
for n in "${COLS[@]}"; do
    if ran "$n"; then
        printf '%-8s VmRSS %s KiB around the idle test; other processes used up to %s cores in a run\n' \
            "$n" "${R[$n.idle_kb]}" "${OTHER[$n]:-0}"
    else
        printf '%-8s unavailable (%s)\n' "$n" "${UNAVAIL[$n]:-not in BENCH_RELAYS}"
    fi
done
echo "total time $(( $(date +%s) - T0 )) s"
exit $STATUS
