#!/usr/bin/env bash
# run-unit.sh BIN...: runs each unit-test binary (printing what is not a plain
# "ok" line) and checks more than its exit status:
#   - it must end within UNIT_TIMEOUT seconds (default 300: the slowest binary
#     takes a few seconds, ASan ones a few times that; a hang is a failure);
#   - it must print its closing "N passed, N failed" line;
#   - every test function its source registers with TEST_RUN(...) must have
#     run and reported at least one check (so a binary that stops early, or
#     reports "0 passed", fails): the per-binary minimum is one check per
#     registered function.
# Prints per binary "functions, checks" and a total; writes the summary for
# scripts/test-summary.sh to $SUMMARY_FILE when set.
set -u
timeout_s=${UNIT_TIMEOUT:-300}
pass=0; fail=0; bad=0; funcs=0; funcs_failed=0
runs=("$@")
for t in "${runs[@]}"; do
    name=$(basename "$t")
    src="tests/unit/$name.c"
    out=$(timeout --kill-after=10 "$timeout_s" "$t" 2>&1); rc=$?
    # Failures and diagnostics only (not the "ok" lines, the function
    # headers, or the binary's own closing line: the totals come below).
    printf '%s\n' "$out" | grep -vE '^ok |^# test_\w+$|^[0-9]+ passed, [0-9]+ failed$'
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
    p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $3}')
    pass=$((pass + ${p:-0})); fail=$((fail + ${f:-0}))
    why=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        why="timed out after ${timeout_s}s"
    elif [ "$rc" -ne 0 ]; then
        why="exit $rc"
    elif [ -z "$line" ]; then
        why="no closing 'N passed, N failed' line"
    fi
    # Registered functions that reported nothing.
    registered=$(grep -oE '^\s*TEST_RUN\(\w+\)' "$src" 2>/dev/null | sed -E 's/.*TEST_RUN\((\w+)\)/\1/' | sort -u)
    nreg=$(printf '%s\n' "$registered" | grep -c .)
    silent=""
    nfailed_fn=0
    for fn in $registered; do
        if ! printf '%s\n' "$out" | grep -qE "^(not )?ok [0-9]+ - $fn: "; then
            silent="$silent $fn"
            nfailed_fn=$((nfailed_fn + 1))
        elif printf '%s\n' "$out" | grep -qE "^not ok [0-9]+ - $fn: "; then
            nfailed_fn=$((nfailed_fn + 1))
        fi
    done
    if [ "$nreg" -eq 0 ]; then
        why="${why:+$why; }no TEST_RUN(...) found in $src"
    elif [ -n "$silent" ]; then
        why="${why:+$why; }registered but reported no check:$silent"
    elif [ "${p:-0}" -lt "$nreg" ]; then
        why="${why:+$why; }${p:-0} checks passed, fewer than its $nreg test functions"
    fi
    funcs=$((funcs + nreg)); funcs_failed=$((funcs_failed + nfailed_fn))
    if [ -n "$why" ]; then
        bad=$((bad + 1))
        echo "FAILED: $t ($why)"
        # Silent functions count as failed above; a binary that failed after
        # all its checks passed (an exit status, a sanitizer report at exit)
        # counts as one failed function.
        [ $nfailed_fn -eq 0 ] && funcs_failed=$((funcs_failed + 1))
    fi
    printf '%-28s %3d functions, %5d checks passed, %d failed\n' "$name:" "$nreg" "${p:-0}" "${f:-0}"
done
echo "unit: ${#runs[@]} binary runs, $funcs test functions ($funcs_failed failed), $pass checks passed, $fail failed"
[ -n "${SUMMARY_FILE:-}" ] && printf 'tests=%d failed=%d skipped=0 checks=%d checks_failed=%d binaries=%d bad=%d\n' \
    "$funcs" "$funcs_failed" "$pass" "$fail" "${#runs[@]}" "$bad" > "$SUMMARY_FILE"
# The plain closing line when run alone (`make unit`); under `make test` the
# overall one comes from scripts/test-summary.sh.
[ -z "${SUMMARY_FILE:-}" ] && echo "$((funcs - funcs_failed)) passed, $funcs_failed failed"
[ $bad -eq 0 ] && [ $fail -eq 0 ]
