#!/usr/bin/env bash
# run-store.sh: terminal token mint+consume through the store, embedded
# against Redis (`make bench-store`). Starts its own redis-server (loopback,
# a free port, a password, no persistence), killed by PID at the end.
# Knobs: N (tokens, default 100000), WINDOW (in flight, default 64).
# Prints the JSON lines of build/bench/store_bench and a table: tokens/s and
# CPU per token of the gateway's side; for Redis also redis-server's CPU per
# token (from /proc/PID/stat). Not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
WINDOW=${WINDOW:-64}
BIN=build/bench/store_bench
PW=bench-redis-pw
PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DIR=$(mktemp -d /tmp/wsgate-bench-redis-XXXXXX)
redis-server --port "$PORT" --bind 127.0.0.1 --requirepass "$PW" --save '' --appendonly no --dir "$DIR" \
    >"$DIR/redis.log" 2>&1 &
RPID=$!
trap 'kill "$RPID" 2>/dev/null; wait "$RPID" 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do
    redis-cli -p "$PORT" --no-auth-warning -a "$PW" ping 2>/dev/null | grep -q PONG && break
    sleep 0.05
done
ticks() { awk '{print $14 + $15}' "/proc/$RPID/stat"; }
HZ=$(getconf CLK_TCK)

echo "store_bench: N=$N WINDOW=$WINDOW (one worker loop; CPU per token = user+sys / tokens)"
"$BIN" embedded - "$N" "$WINDOW" | tee "$DIR/emb.json"
r0=$(ticks)
"$BIN" "127.0.0.1:$PORT" "$PW" "$N" "$WINDOW" | tee "$DIR/redis.json"
r1=$(ticks)
/usr/bin/python3 - "$DIR/emb.json" "$DIR/redis.json" "$r0" "$r1" "$HZ" "$N" <<'PY'
import json, sys
emb = [json.loads(l) for l in open(sys.argv[1])]
red = [json.loads(l) for l in open(sys.argv[2])]
r_cpu_us = (int(sys.argv[4]) - int(sys.argv[3])) / int(sys.argv[5]) * 1e6
n = int(sys.argv[6])
print()
print(f"{'backend':10} {'phase':8} {'tokens/s':>10} {'gateway CPU us/token':>21} {'errors':>7}")
for r in emb + red:
    print(f"{r['backend']:10} {r['phase']:8} {r['tokens_per_s']:>10.0f} {r['cpu_us_per_token']:>21.2f} {r['errors']:>7}")
mc = lambda rs: n / sum(r["seconds"] for r in rs)
print()
print(f"mint+consume pairs/s: embedded {mc(emb):.0f}, redis {mc(red):.0f}")
print(f"redis-server CPU per token (mint and consume together): {r_cpu_us / n:.2f} us")
PY
