#!/usr/bin/env bash
# test-summary.sh DIR: the closing summary of `make test`, from the counts
# each runner wrote to DIR/<step>.txt (run-unit.sh, run-integration.sh,
# run-fuzz.sh) and DIR/<step>.status (the step's exit status). One line per
# step, the sanitizer runs shown apart from the plain ones, then the overall
# plain line CI reads: "N passed, N failed, N skipped", where N counts test
# runs (a test run twice, plain and under ASan+UBSan, counts twice; a unit
# test is one TEST_RUN function, an integration test one pytest case or one
# node test, a fuzz target one run). Exits non-zero if any step failed.
set -u
dir=$1
total=0; failed=0; skipped=0; bad=0
get() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" "$2"; }
echo
echo "== summary"
for step in unit unit-san integration integration-san fuzz-smoke; do
    f="$dir/$step.txt"; st="$dir/$step.status"
    status=$(cat "$st" 2>/dev/null || echo "not run")
    if [ ! -f "$f" ]; then
        printf '%-25s no counts (status: %s)\n' "$step:" "$status"
        bad=1
        continue
    fi
    t=$(get tests "$f"); fl=$(get failed "$f"); sk=$(get skipped "$f")
    case $step in
        unit*) detail="$(get tests "$f") test functions in $(get binaries "$f") binaries, $(get checks "$f") checks" ;;
        integration*) detail="pytest $(get pytest_funcs "$f") test functions as $(get pytest_cases "$f") cases (parametrized), node $(get node_tests "$f") tests" ;;
        fuzz*) detail="$(get tests "$f") targets" ;;
    esac
    printf '%-25s %4d run, %d failed, %d skipped  (%s; exit %s)\n' "$step:" "$t" "$fl" "$sk" "$detail" "$status"
    total=$((total + t)); failed=$((failed + fl)); skipped=$((skipped + sk))
    [ "$status" = "0" ] || bad=1
done
passed=$((total - failed - skipped))
[ $passed -lt 0 ] && passed=0
# A step that failed without failing a counted test (a build error, a crash
# of its runner) still makes the total fail.
[ $bad -eq 1 ] && [ $failed -eq 0 ] && failed=1
echo "$passed passed, $failed failed, $skipped skipped"
[ $bad -eq 0 ] && [ $failed -eq 0 ]
