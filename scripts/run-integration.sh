#!/usr/bin/env bash
# run-integration.sh: the integration suites against a real wsgate binary.
# pytest (tests/integration) and node --test (tests/node, tests/browser) each
# start their own gateways on free loopback ports. WSGATE_BIN picks the binary
# (default build/wsgate); a sanitizer build (path containing /san/) runs with
# leak detection and abort-on-error, and every test checks the stderr of every
# process it started for sanitizer reports.
#
# Counts are checked, not trusted: pytest's counts come from its JUnit XML
# (distinct test functions and parametrized cases apart, skips shown); a node
# suite must run exactly as many tests as its files declare (`test(` at the
# start of a line), none skipped, cancelled or todo, or it fails even if node
# exited 0. The browser suite runs with the same browser binary it is guarded
# by (CHROMIUM_BIN, default /usr/bin/chromium); without it, it fails.
# Prints a line per suite and a closing "N passed, N failed, N skipped" (or,
# under `make test`, writes the counts to $SUMMARY_FILE for the overall line).
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
export CHROMIUM_BIN=${CHROMIUM_BIN:-/usr/bin/chromium}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== pytest tests/integration ($WSGATE_BIN)"
$PY -m pytest tests/integration -q -p no:cacheprovider -rs --junitxml="$work/py.xml" 2>&1
py_rc=$?
# cases passed failed skipped distinct (test functions) distinct_failed
py_counts=$($PY - "$work/py.xml" <<'EOF'
import re, sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("0 0 0 0 0 0"); sys.exit()
cases = p = f = s = 0
funcs, funcs_failed = set(), set()
for tc in root.iter("testcase"):
    key = tc.get("classname", "") + "::" + re.sub(r"\[.*\]$", "", tc.get("name", ""))
    funcs.add(key)
    cases += 1
    if tc.find("failure") is not None or tc.find("error") is not None:
        f += 1
        funcs_failed.add(key)
    elif tc.find("skipped") is not None:
        s += 1
    else:
        p += 1
print(cases, p, f, s, len(funcs), len(funcs_failed))
EOF
)
read -r py_cases py_pass py_fail py_skip py_funcs py_funcs_failed <<<"$py_counts"
[ "$py_rc" -ne 0 ] && [ "$py_fail" -eq 0 ] && py_fail=1

# run_node DIR: node --test on DIR's *.test.mjs; sets node_* counts and
# appends a problem to $work/node_problems when the counts are not exact.
node_tests=0; node_pass=0; node_fail=0; node_skip=0
run_node() {
    local dir=$1 out="$work/$(basename "$1").tap" expected rc
    expected=$(cat "$dir"/*.test.mjs | grep -cE '^\s*test\(')
    node --test --test-reporter=tap --test-timeout=60000 "$dir"/ 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    local n p f s c t
    n=$(grep -E '^# tests [0-9]+' "$out" | tail -1 | awk '{print $3}')
    p=$(grep -E '^# pass [0-9]+' "$out" | tail -1 | awk '{print $3}')
    f=$(grep -E '^# fail [0-9]+' "$out" | tail -1 | awk '{print $3}')
    s=$(grep -E '^# skipped [0-9]+' "$out" | tail -1 | awk '{print $3}')
    c=$(grep -E '^# cancelled [0-9]+' "$out" | tail -1 | awk '{print $3}')
    t=$(grep -E '^# todo [0-9]+' "$out" | tail -1 | awk '{print $3}')
    n=${n:-0}; p=${p:-0}; f=${f:-0}; s=${s:-0}; c=${c:-0}; t=${t:-0}
    local why=""
    [ "$rc" -ne 0 ] && why="node exited $rc"
    [ "$n" -ne "$expected" ] && why="${why:+$why; }$n tests ran, its files declare $expected"
    [ "$s" -ne 0 ] && why="${why:+$why; }$s skipped"
    [ "$c" -ne 0 ] && why="${why:+$why; }$c cancelled"
    [ "$t" -ne 0 ] && why="${why:+$why; }$t todo"
    # Tests that did not pass (missing, cancelled, failed) count as failed.
    local failed=$((expected - p))
    [ "$failed" -lt 0 ] && failed=0
    [ -n "$why" ] && [ "$failed" -eq 0 ] && failed=1
    [ -n "$why" ] && echo "$dir: $why" >> "$work/node_problems"
    echo "$dir: $p/$expected passed, $f failed, $s skipped, $c cancelled (exit $rc)" >> "$work/node_lines"
    node_tests=$((node_tests + expected)); node_pass=$((node_pass + p)); node_fail=$((node_fail + failed))
    node_skip=$((node_skip + s))
}

echo "== node --test tests/node"
if [ ! -d tests/node/node_modules ]; then
    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi
run_node tests/node
# The browser path: headless Chromium drives the terminal page.
if [ -d tests/browser ]; then
    echo "== node --test tests/browser (CHROMIUM_BIN=$CHROMIUM_BIN)"
    if [ -x "$CHROMIUM_BIN" ] && [ -d tests/browser/node_modules ]; then
        run_node tests/browser
    else
        n=$(cat tests/browser/*.test.mjs | grep -cE '^\s*test\(')
        echo "tests/browser: cannot run: no browser at $CHROMIUM_BIN or no tests/browser/node_modules (make deps)" \
            | tee -a "$work/node_problems"
        node_tests=$((node_tests + n)); node_fail=$((node_fail + n))
    fi
fi

echo
printf 'pytest: %d test functions (%d failed), %d cases: %d passed, %d failed, %d skipped (exit %d)\n' \
    "$py_funcs" "$py_funcs_failed" "$py_cases" "$py_pass" "$py_fail" "$py_skip" "$py_rc"
cat "$work/node_lines"
[ -f "$work/node_problems" ] && sed 's/^/FAILED: /' "$work/node_problems"
pass=$((py_pass + node_pass)); fail=$((py_fail + node_fail)); skip=$((py_skip + node_skip))
echo "integration: $pass passed, $fail failed, $skip skipped"
ok=1
[ "$py_rc" -eq 0 ] || ok=0
[ -f "$work/node_problems" ] && ok=0
[ "$fail" -eq 0 ] || ok=0
if [ -n "${SUMMARY_FILE:-}" ]; then
    printf 'pytest_funcs=%d pytest_cases=%d node_tests=%d tests=%d failed=%d skipped=%d ok=%d\n' \
        "$py_funcs" "$py_cases" "$node_tests" "$((py_cases + node_tests))" "$fail" "$skip" "$ok" > "$SUMMARY_FILE"
else
    echo "$pass passed, $fail failed, $skip skipped"
fi
[ "$ok" -eq 1 ]
