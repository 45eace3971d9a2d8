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
