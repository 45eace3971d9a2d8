#!/usr/bin/env bash
# Paired benchmark (`make bench-echo`, `make bench-relay`): wsgate (A) against
# a reference (B) in short interleaved runs A B B A, the ratio taken inside
# each pair, so that this machine's drifting speed (it switches between a
# fast and a slow regime every few tens of seconds) cancels out instead of
# deciding the result.
#   paired.sh echo    A = wsgate's echo route, B = bare_echo.c (the floor)
#   paired.sh relay   A = wsgate's proxy route, B = nginx and HAProxy, each in
#                     front of bare_echo (the upstream)
# For every size x messages-in-flight it runs BENCH_PAIRS pairs (half of them
# A B, half B A, interleaved as A B B A ...) of closed-loop throughput runs and
# reports, per pair, A's server CPU per message / B's: the median and the
# interquartile range over the pairs. Beside it, system calls per message
# (all of them, sends, receives, epoll waits) from perf's tracepoints.
# Then RSS growth per idle connection (on fresh servers, before any load) and
# an optional burst section (BENCH_BURSTS): K messages back-to-back per
# connection, sends per message and the burst's round trip.
# Knobs: see README.md ("Paired benchmark"). Starts and stops only its own
# processes, by PID, also on failure.
set -u
cd "$(dirname "$0")" || exit 2
. ./lib.sh
. ./relay_conf.sh

KIND=${1:-}
case $KIND in echo|relay) ;; *) log "usage: paired.sh echo|relay"; exit 2;; esac

BIN=../build/bench
WSGATE=${WSGATE_BIN:-../build/wsgate}
PORT_BASE=${BENCH_PORT_BASE:-18800}
if [ -n "${BENCH_QUICK:-}" ]; then
    PAIRS=${BENCH_PAIRS:-4}; RUN=${BENCH_RUN:-0.5}; BURST_PAIRS=${BENCH_BURST_PAIRS:-1}; SIZES=(${BENCH_SIZES:-512}); WINDOWS=(${BENCH_WINDOWS:-1})
    IDLE_CONNS=${BENCH_IDLE_CONNS:-2000}
else
    PAIRS=${BENCH_PAIRS:-12}; RUN=${BENCH_RUN:-1}; BURST_PAIRS=${BENCH_BURST_PAIRS:-4}; SIZES=(${BENCH_SIZES:-64 512 4096}); WINDOWS=(${BENCH_WINDOWS:-1 8})
    IDLE_CONNS=${BENCH_IDLE_CONNS:-10000}
fi
WARM=${BENCH_WARM:-0.3}
# Open-loop latency (loadgen --mode rate): a fixed total rate over the
# connections, RATE_PAIRS interleaved pairs per rate, p50/p99/p99.9 and CPU per
# message. An empty BENCH_RATES skips it.
if [ -n "${BENCH_QUICK:-}" ]; then RATE_PAIRS=${BENCH_RATE_PAIRS:-2}; else RATE_PAIRS=${BENCH_RATE_PAIRS:-6}; fi
if [ "$KIND" = echo ]; then RATES=(${BENCH_RATES-20000 50000 80000}); else RATES=(${BENCH_RATES-10000 25000 40000}); fi
RATE_SIZE=${BENCH_RATE_SIZE:-512}
RATE_RUN=${BENCH_RATE_RUN:-2}
CONNS=${BENCH_CONNS:-100}
BURSTS=(${BENCH_BURSTS-1 2 4 8 16})
BURST_SIZE=${BENCH_BURST_SIZE:-512}
SYSCALLS=${BENCH_SYSCALLS:-1}
if [ "$KIND" = echo ]; then REFS=(${BENCH_REFS:-bare}); else REFS=(${BENCH_REFS:-nginx haproxy}); fi
NGINX=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
HAPROXY=${HAPROXY_BIN:-$(command -v haproxy || echo /usr/sbin/haproxy)}
PERF=${PERF_BIN:-$(command -v perf || true)}
RESULTS=$BIN/$KIND-paired-results.txt

TMP=$(mktemp -d /tmp/wsgate-paired.XXXXXX)
declare -A PID PORT
LOADGEN_PID=""; PERF_PID=""; UP_PID=""; UP_PORT=""
STATUS=0

cleanup() {
    local n
    [ -n "$LOADGEN_PID" ] && stop_pid "$LOADGEN_PID"
    [ -n "$PERF_PID" ] && stop_pid "$PERF_PID"
    for n in "${!PID[@]}"; do stop_pid "${PID[$n]}"; done
    [ -n "$UP_PID" ] && stop_pid "$UP_PID"
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

require_tools "$BIN"
if [ "$SYSCALLS" = 1 ] && { [ -z "$PERF" ] || ! "$PERF" stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; }; then
    log "note: perf cannot count system calls here (linux-perf, perf_event_paranoid); CPU only"
    SYSCALLS=0
fi

# Servers on CPU 1; the load generator (and the relay's upstream) on CPU 0.
pin_cpus
raise_nofile 65536 2 300
MAXCONN=$((IDLE_CONNS + 500))
if [ "$KIND" = relay ] && [ "$NOFILE" != unlimited ]; then
    # Two descriptors per relayed connection; nginx drops connections once
    # fewer than 1/16 of its worker_connections are free, and HAProxy wants
    # 2 x maxconn descriptors: keep both within the limit.
    lim=$((NOFILE * 15 / 32 - 20))
    if [ "$MAXCONN" -gt "$lim" ]; then
        MAXCONN=$lim
        [ "$IDLE_CONNS" -gt $((MAXCONN - 100)) ] && IDLE_CONNS=$((MAXCONN - 100)) &&
            log "note: open-file limit $NOFILE; the relays' idle test uses $IDLE_CONNS connections"
    fi
fi
NGINX_CONNS=$((2 * MAXCONN + 2 * MAXCONN / 15))
[ "$NOFILE" != unlimited ] && [ "$NGINX_CONNS" -gt "$NOFILE" ] && NGINX_CONNS=$NOFILE


path_of() { case $1 in wsgate|base) [ "$KIND" = echo ] && echo /probe/ws || echo /;; *) echo /;; esac; }

smoke() { # name port
    loadgen --mode rate --port "$2" --path "$(path_of "$1")" --conns 2 --size 64 --rate 200 \
        --duration 0.2 --warmup 0 --drain 2 --label "smoke-$1"
    [ "$(kv "$LINE" errors)" = 0 ] && [ "$(kv "$LINE" echoed)" != 0 ] && [ "$(kv "$LINE" echoed)" != '?' ]
}

start_upstream() {
    UP_PORT=$(free_port "$PORT_BASE")
    "${PIN_LOAD[@]}" "$BIN/bare_echo" "$UP_PORT" >"$TMP/upstream.log" 2>&1 &
    UP_PID=$!
    local i
    for i in $(seq 50); do port_busy "$UP_PORT" && break; sleep 0.1; done
    smoke upstream "$UP_PORT" || { log "upstream does not echo"; exit 2; }
}

start_server() { # name port -> PID[name]; 1 when it does not serve
    local name=$1 port=$2 i pid
    case $name in
    wsgate|base)
        local bin=$WSGATE
        [ "$name" = base ] && bin=${WSGATE_BASE_BIN:-}
        [ -x "$bin" ] || { log "$name: '$bin' not found (wsgate: run make; base: set WSGATE_BASE_BIN)"; return 1; }
        local routes=""
        if [ "$KIND" = relay ]; then
            printf '{"routes":[{"path":"/","kind":"proxy","upstream":"http://127.0.0.1:%s"}]}\n' \
                "$UP_PORT" >"$TMP/routes.json"
            routes=$TMP/routes.json
        fi
        (
            # A clean environment: only the variables set here, then the
            # caller's WSGATE_ENV (BASE_WSGATE_ENV for base), "NAME=value ...".
            extra=${WSGATE_ENV:-}
            [ "$name" = base ] && extra=${BASE_WSGATE_ENV-$extra}
            for v in $(compgen -e | grep '^GATEWAY_'); do unset "$v"; done
            export GATEWAY_PUBLIC_HTTP_ADDR=127.0.0.1:$port GATEWAY_WORKERS=1 \
                GATEWAY_LOG_LEVEL=warn GATEWAY_AUTHENTICATED_GRPC_ADDR= GATEWAY_SHUTDOWN_TIMEOUT=2s
            for kv in $extra; do export "${kv?}"; done
            [ -n "$routes" ] && export GATEWAY_ROUTES_FILE=$routes
            exec "${PIN_SERVER[@]}" "$bin" serve
        ) >"$TMP/$name.log" 2>&1 &
        ;;
    bare)
        "${PIN_SERVER[@]}" "$BIN/bare_echo" "$port" >"$TMP/$name.log" 2>&1 &
        ;;
    nginx|haproxy)
        launch_relay "$name" "$port" || return 1
        ;;
    *) log "unknown server $name"; return 1;;
    esac
    pid=$!
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        if [ "$name" = wsgate ] || [ "$name" = base ]; then
            [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ] && break
        else
            port_busy "$port" && break
        fi
        sleep 0.1
    done
    if ! kill -0 "$pid" 2>/dev/null || ! smoke "$name" "$port"; then
        log "$name: does not serve; its output:"; tail -n 5 "$TMP/$name.log" >&2
        stop_pid "$pid"; return 1
    fi
    PID[$name]=$pid; PORT[$name]=$port
}

stop_server() { stop_pid "${PID[$1]}"; unset "PID[$1]"; }

# perf counts, for the server's threads, while the load generator runs.
EVENTS=task-clock,raw_syscalls:sys_enter
for e in sendmsg sendto write writev recvfrom recvmsg read readv epoll_wait epoll_pwait io_uring_enter; do
    EVENTS+=",syscalls:sys_enter_$e"
done
perf_start() { # pid
    PERF_PID=""
    [ "$SYSCALLS" = 1 ] || return 0
    "$PERF" stat -x, -e "$EVENTS" -p "$1" -o "$TMP/perf.out" >/dev/null 2>&1 &
    PERF_PID=$!
    sleep 0.15 # attached before the first message
}
perf_stop() { # -> SC: "all sends recvs waits" (counts), or "- - - -"; TASK_MS: CPU ms, or ""
    SC="- - - -"; TASK_MS=""
    [ -n "$PERF_PID" ] || return 0
    kill -INT "$PERF_PID" 2>/dev/null; wait "$PERF_PID" 2>/dev/null; PERF_PID=""
    TASK_MS=$(awk -F, '$3 ~ /^task-clock/ && $1 ~ /^[0-9.]+$/ { print $1 }' "$TMP/perf.out")
    SC=$(awk -F, '$3 ~ /^task-clock/ { next } $1 ~ /^[0-9]+$/ {
            if ($3 ~ /raw_syscalls/) a += $1
            else if ($3 ~ /_(send|write)/) s += $1
            else if ($3 ~ /_(recv|read)/) r += $1
            else w += $1 }
        END { printf "%d %d %d %d", a, s, r, w }' "$TMP/perf.out")
}

cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# CPU: perf's task-clock for the server's threads while the run lasts (ns
# resolution); without perf, utime+stime from /proc (10 ms ticks: a run at
# half a core is 50 ticks, so +-2 % from the tick alone).
CLK_TCK=$(getconf CLK_TCK)

# One closed-loop run of $1 -> RUN_CPU (us/msg), RUN_TP (msg/s), RUN_SC (per-message
# "all sends recvs waits"), RUN_P99 (burst round trip, us, with a burst)
one_run() { # name size window [burst]
    local name=$1 c0 c1 n extra=()
    [ -n "${4:-}" ] && extra=(--burst "$4")
    perf_start "${PID[$name]}"
    c0=$(cpu_ticks "${PID[$name]}")
    loadgen --mode throughput --port "${PORT[$name]}" --path "$(path_of "$name")" --conns "$CONNS" \
        --window "$3" "${extra[@]}" --size "$2" --duration "$RUN" --warmup "$WARM" --drain 2 \
        --connect-timeout 20 --label "$name"
    c1=$(cpu_ticks "${PID[$name]}")
    perf_stop
    n=$(kv "$LINE" echoed)
    [ "$(kv "$LINE" errors)" = 0 ] || { log "   $name: errors in a run: $LINE"; STATUS=1; }
    RUN_TP=$(kv "$LINE" msgs_per_s)
    RUN_P99=$(kv "$LINE" burst_p99_us); RUN_P50=$(kv "$LINE" burst_p50_us)
    RUN_CPU=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v ms="$TASK_MS" -v n="$n" \
        'BEGIN{ if (n + 0 <= 0) { print "?"; exit }
                if (ms != "") printf "%.4f", ms * 1e3 / n; else printf "%.4f", t / hz * 1e6 / n }')
    RUN_SC=$(awk -v s="$SC" -v n="$n" 'BEGIN{ split(s, a, " ");
        if (a[1] == "-" || n + 0 == 0) { print "- - - -"; exit }
        printf "%.3f %.3f %.3f %.3f", a[1] / n, a[2] / n, a[3] / n, a[4] / n }')
}

# One open-loop run of $1 at $2 msgs/s -> RATE_LINE: "p50 p99 p999 cpu_us_per_msg achieved"
rate_run() { # name rate
    local name=$1 c0 c1 n
    perf_start "${PID[$name]}"
    c0=$(cpu_ticks "${PID[$name]}")
    loadgen --mode rate --port "${PORT[$name]}" --path "$(path_of "$name")" --conns "$CONNS" --rate "$2" \
        --size "$RATE_SIZE" --duration "$RATE_RUN" --warmup "$WARM" --drain 2 --connect-timeout 20 --label "$name-rate"
    c1=$(cpu_ticks "${PID[$name]}")
    perf_stop
    n=$(kv "$LINE" echoed)
    [ "$(kv "$LINE" errors)" = 0 ] || [ "$(kv "$LINE" errors)" = '?' ] || { log "   $name: errors in a run: $LINE"; STATUS=1; }
    RATE_LINE="$(kv "$LINE" p50_us) $(kv "$LINE" p99_us) $(kv "$LINE" p999_us) $(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" \
        -v ms="$TASK_MS" -v n="$n" 'BEGIN{ if (n + 0 <= 0) { print "?"; exit }
            if (ms != "") printf "%.4f", ms * 1e3 / n; else printf "%.4f", t / hz * 1e6 / n }') $(kv "$LINE" rate_achieved)"
}

# Median and quartiles of the numbers on stdin -> "median q1 q3"
quartiles() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "- - -"; exit }
        printf "%.3f %.3f %.3f", q(0.5), q(0.25), q(0.75) }
        function q(p,  h, l) { h = (NR - 1) * p + 1; l = int(h); return v[l] + (h - l) * (v[l + 1 < NR ? l + 1 : NR] - v[l]) }'
}
col() { awk -v c="$1" '{print $c}'; } # column of a "pair record" file

# Pairs of wsgate and $1 at size $2, window $3: records in $TMP/pairs.<ref>.<size>.<window>:
# "ratio_cpu ratio_tp cpuA cpuB scA(4) scB(4)"
pairs() { # ref size window
    local ref=$1 size=$2 win=$3 i order f=$TMP/pairs.$1.$2.$3 a b
    : >"$f"
    for i in $(seq "$PAIRS"); do
        # A B, B A, A B, ...: each server goes first as often as second.
        if [ $((i % 2)) = 1 ]; then order="wsgate $ref"; else order="$ref wsgate"; fi
        for n in $order; do
            one_run "$n" "$size" "$win"
            if [ "$n" = wsgate ]; then a="$RUN_CPU $RUN_TP $RUN_SC"; else b="$RUN_CPU $RUN_TP $RUN_SC"; fi
        done
        awk -v a="$a" -v b="$b" 'BEGIN{ split(a, x, " "); split(b, y, " ");
            if (x[1] + 0 > 0 && y[1] + 0 > 0) printf "%.4f %.4f %s %s %s %s %s %s %s %s %s %s\n",
                x[1] / y[1], x[2] / y[2], x[1], y[1], x[3], x[4], x[5], x[6], y[3], y[4], y[5], y[6] }' >>"$f"
    done
    local r
    r=$(col 1 <"$f" | quartiles)
    log "   wsgate/$ref ${size} B x $win in flight: CPU/msg ratio median $(echo "$r" | col 1)" \
        "(IQR $(echo "$r" | col 2)-$(echo "$r" | col 3)) over $(wc -l <"$f") pairs"
}

idle_test() { # name -> IDLE_B[name]
    local name=$1 pid=${PID[$1]} rss0 rss1 up
    idle_rss "$pid" "${PORT[$name]}" "$(path_of "$name")" "$name"
    rss0=$RSS0 rss1=$RSS1
    up=$(kv "$(grep '^idle_up' "$TMP/idle.out")" up)
    grep '^mode=' "$TMP/idle.out" >>"$RESULTS"
    if [ "$up" != '?' ] && [ "$up" -gt 0 ]; then
        IDLE_B[$name]=$(awk -v a="$rss0" -v b="$rss1" -v n="$up" 'BEGIN{printf "%.0f", (b - a) * 1024 / n}')
    else
        IDLE_B[$name]='?'
    fi
    [ "$up" = "$IDLE_CONNS" ] || { log "   $name idle: only $up/$IDLE_CONNS up"; STATUS=1; }
    log "   $name idle: $up/$IDLE_CONNS up, VmRSS $rss0 -> $rss1 KiB, ${IDLE_B[$name]} B/connection"
}

T0=$(date +%s)
: >"$RESULTS"
SERVERS=(wsgate "${REFS[@]}")
log "paired $KIND benchmark: wsgate against ${REFS[*]}; $PAIRS pairs of ${RUN}s runs (+${WARM}s warm-up)" \
    "per size (${SIZES[*]} B) and messages in flight (${WINDOWS[*]}), $CONNS connections;" \
    "every run's line goes to $RESULTS"
[ "$KIND" = relay ] && { start_upstream; log "upstream bare_echo on port $UP_PORT"; }
port=$((PORT_BASE + 1))
LIVE=()
for name in "${SERVERS[@]}"; do
    port=$(free_port "$port")
    if start_server "$name" "$port"; then LIVE+=("$name"); else STATUS=1; fi
    port=$((port + 1))
done
[ -n "${PID[wsgate]:-}" ] || { log "wsgate does not serve: nothing to compare"; exit 1; }

declare -A IDLE_B
if [ "$IDLE_CONNS" -gt 0 ]; then
    log "== idle: $IDLE_CONNS connections each, fresh servers"
    for name in "${LIVE[@]}"; do idle_test "$name"; sleep 1; done
fi

for size in "${SIZES[@]}"; do
    for win in "${WINDOWS[@]}"; do
        for ref in "${REFS[@]}"; do
            [ -n "${PID[$ref]:-}" ] || continue
            pairs "$ref" "$size" "$win"
        done
    done
done

# Bursts: wsgate and the first reference, K messages per connection
# back-to-back, BURST_PAIRS interleaved pairs per K (medians shown); sends per
# message should fall as 1/K.
if [ "${#BURSTS[@]}" -gt 0 ]; then
    log "== bursts of ${BURSTS[*]} x $BURST_SIZE B, $BURST_PAIRS pairs each"
    for k in "${BURSTS[@]}"; do
        for i in $(seq "$BURST_PAIRS"); do
            if [ $((i % 2)) = 1 ]; then order=("${LIVE[@]:0:2}"); else order=("${LIVE[1]:-}" "${LIVE[0]}"); fi
            for name in "${order[@]}"; do
                [ -n "$name" ] || continue
                one_run "$name" "$BURST_SIZE" 1 "$k"
                echo "$RUN_TP $RUN_CPU $RUN_SC $RUN_P50 $RUN_P99" >>"$TMP/burst.$k.$name"
            done
        done
    done
fi

# Open-loop latency: wsgate and the first reference at fixed rates, pairs
# interleaved; the ratio of each percentile and of CPU/msg inside each pair.
if [ "${#RATES[@]}" -gt 0 ] && [ "${#LIVE[@]}" -ge 2 ]; then
    log "== open loop at ${RATES[*]} msgs/s x $RATE_SIZE B, $RATE_PAIRS pairs each"
    for r in "${RATES[@]}"; do
        : >"$TMP/rate.$r"
        for i in $(seq "$RATE_PAIRS"); do
            if [ $((i % 2)) = 1 ]; then order=("${LIVE[0]}" "${LIVE[1]}"); else order=("${LIVE[1]}" "${LIVE[0]}"); fi
            for name in "${order[@]}"; do
                rate_run "$name" "$r"
                if [ "$name" = "${LIVE[0]}" ]; then ra=$RATE_LINE; else rb=$RATE_LINE; fi
            done
            echo "$ra $rb" >>"$TMP/rate.$r"
        done
    done
fi

echo
echo "Paired $KIND benchmark: wsgate (A) against ${REFS[*]} (B), each pinned to CPU 1, one worker;"
echo "load generator${UP_PORT:+ and the upstream bare_echo} on CPU 0. $CONNS connections, closed loop,"
echo "each row $PAIRS pairs of ${RUN}s runs (after ${WARM}s warm-up) interleaved A B B A."
if [ "$SYSCALLS" = 1 ]; then
    echo "cpu: the server's CPU time (perf task-clock, its threads) over the run / messages echoed in it;"
else
    echo "cpu: the server's utime+stime (/proc/PID/stat) over the run / messages echoed in the run;"
fi
echo "ratio = A/B inside each pair; median [interquartile range] over the pairs (below 1: wsgate cheaper)."
echo "sys/msg: system calls per echoed message (perf stat -e raw_syscalls:sys_enter -p PID), and"
echo "of them sends (send*/write*), receives (recv*/read*) and waits (epoll_wait/pwait, io_uring_enter)."
echo
printf '%-8s %5s %3s | %9s %9s | %-22s | %-22s | %-21s | %-21s\n' ref size in "A us/msg" "B us/msg" \
    "cpu ratio med [IQR]" "msg/s ratio med [IQR]" "A sys/msg all/snd/rcv/wt" "B sys/msg all/snd/rcv/wt"
for size in "${SIZES[@]}"; do
    for win in "${WINDOWS[@]}"; do
        for ref in "${REFS[@]}"; do
            f=$TMP/pairs.$ref.$size.$win
            [ -s "$f" ] || continue
            rc=$(col 1 <"$f" | quartiles); rt=$(col 2 <"$f" | quartiles)
            ca=$(col 3 <"$f" | quartiles | col 1); cb=$(col 4 <"$f" | quartiles | col 1)
            sa=""; sb=""
            for c in 5 6 7 8; do sa+="$(col $c <"$f" | quartiles | awk '{printf "%.2f", $1}')/"; done
            for c in 9 10 11 12; do sb+="$(col $c <"$f" | quartiles | awk '{printf "%.2f", $1}')/"; done
            printf '%-8s %5s %3s | %9.2f %9.2f | %5.3f [%5.3f-%5.3f]  | %5.3f [%5.3f-%5.3f]  | %-25s | %-25s\n' \
                "$ref" "$size" "$win" "$ca" "$cb" $rc $rt "${sa%/}" "${sb%/}"
        done
    done
done
if [ "${#BURSTS[@]}" -gt 0 ]; then
    echo
    echo "Bursts: each connection sends K x $BURST_SIZE B back-to-back, then waits for all K echoes;"
    echo "medians over $BURST_PAIRS interleaved pairs of ${RUN}s runs. snd/msg: the server's send calls per"
    echo "message; p50/p99: the burst's round trip (first send to last echo), us."
    printf '%4s | %-8s %9s %8s %8s %8s %8s | %-8s %9s %8s %8s %8s %8s\n' K server msg/s us/msg snd/msg p50us p99us \
        server msg/s us/msg snd/msg p50us p99us
    for k in "${BURSTS[@]}"; do
        line=$(printf '%4s |' "$k")
        for name in "${LIVE[@]:0:2}"; do
            f=$TMP/burst.$k.$name
            [ -s "$f" ] || continue
            med() { col "$1" <"$f" | quartiles | col 1; }
            line+=$(printf ' %-8s %9.0f %8.2f %8.3f %8.0f %8.0f |' "$name" "$(med 1)" "$(med 2)" "$(med 4)" \
                "$(med 7)" "$(med 8)")
        done
        echo "${line%|}"
    done
fi
if [ "${#RATES[@]}" -gt 0 ] && [ -s "$TMP/rate.${RATES[0]}" ]; then
    echo
    echo "Open loop: ${LIVE[0]} (A) and ${LIVE[1]} (B) at a fixed total rate over $CONNS connections, $RATE_SIZE B,"
    echo "$RATE_PAIRS interleaved pairs of ${RATE_RUN}s runs; latency = send to echo, us (medians over the pairs);"
    echo "ratio = A/B inside each pair, median [IQR] (below 1: A faster / cheaper)."
    printf '%8s | %7s %7s %8s %8s | %7s %7s %8s %8s | %-20s | %-7s | %-20s
' msgs/s "A p50" "A p99" "A p99.9" "A us/msg" \
        "B p50" "B p99" "B p99.9" "B us/msg" "p99 ratio [IQR]" "A<B" "cpu ratio [IQR]"
    echo "(A<B: the pairs in which A's p99 was the lower, of all pairs)"
    for r in "${RATES[@]}"; do
        f=$TMP/rate.$r
        [ -s "$f" ] || continue
        med() { col "$1" <"$f" | quartiles | col 1; }
        pr=$(awk '$7 + 0 > 0 { printf "%.4f\n", $2 / $7 }' "$f" | quartiles)
        cr=$(awk '$9 + 0 > 0 { printf "%.4f\n", $4 / $9 }' "$f" | quartiles)
        wins=$(awk '$7 + 0 > 0 { n++; if ($2 < $7) w++ } END { printf "%d/%d", w, n }' "$f")
        printf '%8s | %7.0f %7.0f %8.0f %8.2f | %7.0f %7.0f %8.0f %8.2f | %5.3f [%5.3f-%5.3f] | %-7s | %5.3f [%5.3f-%5.3f]\n' \
            "$r" "$(med 1)" "$(med 2)" "$(med 3)" "$(med 4)" "$(med 6)" "$(med 7)" "$(med 8)" "$(med 9)" $pr "$wins" $cr
    done
fi
if [ "$IDLE_CONNS" -gt 0 ]; then
    echo
    for name in "${LIVE[@]}"; do
        printf 'idle RSS %-8s %6s bytes/connection (%s idle connections)\n' "$name" "${IDLE_B[$name]:-?}" "$IDLE_CONNS"
    done
fi
echo "total time $(( $(date +%s) - T0 )) s"
exit $STATUS
