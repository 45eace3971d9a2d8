#!/usr/bin/env bash
# run-integration.sh: the integration suites against a real wsgate binary.
# pytest (tests/integration) and node --test (tests/node) each start their own
# gateways on free loopback ports. WSGATE_BIN picks the binary (default
# build/wsgate); a sanitizer build (path containing /san/) runs with leak
# detection and abort-on-error, and every test checks the gateway's stderr
# for sanitizer reports. Prints both runners' summaries and a combined
# "integration: N passed, N failed" line; exits non-zero if either fails.
set -u
cd "$(dirname "$0")/.."

WSGATE_BIN=${WSGATE_BIN:-build/wsgate}
case "$WSGATE_BIN" in /*) ;; *) WSGATE_BIN="$PWD/$WSGATE_BIN" ;; esac
export WSGATE_BIN
if [ ! -x "$WSGATE_BIN" ]; then
    echo "run-integration: no executable at $WSGATE_BIN" >&2
    exit 2
fi
case "$WSGATE_BIN" in
    */san/*)
        export WSGATE_SAN=1
        export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
        export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
        ;;
esac
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

echo "== pytest tests/integration ($WSGATE_BIN)"
py_out=$(mktemp)
$PY -m pytest tests/integration -q -p no:cacheprovider 2>&1 | tee "$py_out"
py_rc=${PIPESTATUS[0]}

echo "== node --test tests/node"
if [ ! -d tests/node/node_modules ]; then
    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi
node_out=$(mktemp)
node --test --test-timeout=60000 tests/node/ 2>&1 | tee "$node_out"
node_rc=${PIPESTATUS[0]}
# The browser path: headless Chromium drives the terminal page (counted with node's).
browser_out=$(mktemp)
if [ -d tests/browser ]; then
    echo "== node --test tests/browser"
    if [ -x /usr/bin/chromium ] && [ -d tests/browser/node_modules ]; then
        node --test --test-timeout=60000 tests/browser/ 2>&1 | tee "$browser_out"
        [ "${PIPESTATUS[0]}" -eq 0 ] || node_rc=1
    else
        echo "browser test cannot run: /usr/bin/chromium or tests/browser/node_modules is missing (make deps)"
        node_rc=1
    fi
fi

# Summaries.
py_summary=$(grep -E '[0-9]+ (passed|failed|error)' "$py_out" | tail -1)
py_pass=$(echo "$py_summary" | grep -oE '[0-9]+ passed' | awk '{print $1}')
py_fail=$(echo "$py_summary" | grep -oE '[0-9]+ failed' | awk '{print $1}')
py_err=$(echo "$py_summary" | grep -oE '[0-9]+ errors?' | awk '{print $1}')
node_pass=$(grep -E '^(# |ℹ )pass [0-9]+' "$node_out" | tail -1 | awk '{print $3}')
node_fail=$(grep -E '^(# |ℹ )fail [0-9]+' "$node_out" | tail -1 | awk '{print $3}')
browser_pass=$(grep -E '^(# |ℹ )pass [0-9]+' "$browser_out" | tail -1 | awk '{print $3}')
browser_fail=$(grep -E '^(# |ℹ )fail [0-9]+' "$browser_out" | tail -1 | awk '{print $3}')
node_pass=$(( ${node_pass:-0} + ${browser_pass:-0} ))
node_fail=$(( ${node_fail:-0} + ${browser_fail:-0} ))
rm -f "$py_out" "$node_out" "$browser_out"

echo
echo "pytest: ${py_summary:-no summary} (exit $py_rc)"
echo "node:   ${node_pass:-0} passed, ${node_fail:-0} failed (exit $node_rc)"
pass=$(( ${py_pass:-0} + ${node_pass:-0} ))
fail=$(( ${py_fail:-0} + ${py_err:-0} + ${node_fail:-0} ))
[ "$py_rc" -ne 0 ] && [ "$fail" -eq 0 ] && fail=1
[ "$node_rc" -ne 0 ] && [ "$fail" -eq 0 ] && fail=1
echo "integration: $pass passed, $fail failed"
[ "$py_rc" -eq 0 ] && [ "$node_rc" -eq 0 ]
