# lib.sh: helpers shared by the benchmark scripts (sourced, not run).

log() { printf '%s\n' "$*" >&2; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

num() { case $1 in ''|*[!0-9]*) echo 1;; *) echo "$1";; esac; } # errors: unknown counts as 1

rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }

kv() { # line key -> value
    local k
    for k in $1; do
        case $k in "$2"=*) printf '%s' "${k#*=}"; return;; esac
    done
    printf '?'
}

stop_pid() { # pid: TERM, then KILL after 5 s; reaps it
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return; }
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

await_idle_up() { # file pid tenths: until loadgen's idle_up line, its exit or the limit
    local i
    for i in $(seq "$3"); do
        grep -qs '^idle_up' "$1" && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

require_tools() { # dir: the load generator and bare_echo built there, or exit 2
    local t
    for t in "$1/loadgen" "$1/bare_echo"; do
        [ -x "$t" ] || { log "missing $t: run 'make -C bench tools'"; exit 2; }
    done
}

# The server under test on CPU 1, the load generator on CPU 0, when there are
# 2 CPUs -> PIN_SERVER, PIN_LOAD (command prefixes).
pin_cpus() {
    if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
        PIN_SERVER=(taskset -c 1); PIN_LOAD=(taskset -c 0)
    else
        PIN_SERVER=(); PIN_LOAD=()
        log "note: fewer than 2 CPUs or no taskset; running unpinned"
    fi
}

# Raises the open-file limit to $1 (or the hard limit) -> NOFILE, and lowers
# IDLE_CONNS to what fits at $2 descriptors per idle connection plus $3.
raise_nofile() { # limit per-connection margin
    ulimit -n "$1" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
    NOFILE=$(ulimit -n)
    if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt $(($2 * IDLE_CONNS + $3)) ]; then
        IDLE_CONNS=$(((NOFILE - $3) / $2))
        log "note: open-file limit $NOFILE; idle test uses $IDLE_CONNS connections"
    fi
}

free_port() { local p=$1; while port_busy "$p"; do p=$((p + 1)); done; echo "$p"; }

# Runs the load generator ($BIN/loadgen, pinned by PIN_LOAD) in the background
# of this shell, not in a $(...) subshell, so that the caller's trap knows
# its PID (LOADGEN_PID) and can stop it. Its key=value result line is left
# in LINE and appended to $RESULTS; its stderr goes to $LG_ERR ($TMP/lg.err).
LINE=""
loadgen() {
    local err=${LG_ERR:-$TMP/lg.err}
    : >"$TMP/lg.out"
    "${PIN_LOAD[@]}" "$BIN/loadgen" "$@" >"$TMP/lg.out" 2>"$err" &
    LOADGEN_PID=$!
    wait "$LOADGEN_PID"
    local rc=$?
    LOADGEN_PID=""
    LINE=$(grep -m1 '^mode=' "$TMP/lg.out")
    echo "$LINE" >>"$RESULTS"
    [ $rc = 0 ] || grep -v 'connections up in' "$err" | head -n 3 | sed 's/^/     /' >&2
    return $rc
}

# Holds IDLE_CONNS idle connections to port $2 (path $3, label $4) and reads
# the server's ($1) VmRSS before and a second after all are up -> RSS0, RSS1
# (KiB); loadgen's output stays in $TMP/idle.out.
idle_rss() { # pid port path label
    RSS0=$(rss_kb "$1")
    "${PIN_LOAD[@]}" "$BIN/loadgen" --mode idle --port "$2" --path "$3" \
        --conns "$IDLE_CONNS" --hold 3 --connect-timeout 60 --label "$4" \
        >"$TMP/idle.out" 2>"${LG_ERR:-$TMP/lg.err}" &
    LOADGEN_PID=$!
    await_idle_up "$TMP/idle.out" "$LOADGEN_PID" 700
    sleep 1
    RSS1=$(rss_kb "$1")
    wait "$LOADGEN_PID"; LOADGEN_PID=""
}
