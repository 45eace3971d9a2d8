#!/usr/bin/env bash
# run-fuzz.sh SECONDS BIN...: runs each libFuzzer target for SECONDS on its
# corpus (fuzz/corpus/<name>, copied to a scratch dir so runs do not grow the
# repo). Fails on the first crash (the input is kept as build/fuzz/crash-*).
# With SUMMARY_FILE set, writes the counts for scripts/test-summary.sh.
set -eu
secs=$1; shift
for bin in "$@"; do
    name=$(basename "$bin")
    work=$(mktemp -d)
    if [ -d "fuzz/corpus/$name" ]; then cp -r "fuzz/corpus/$name/." "$work/"; fi
    dict=""
    [ -f "fuzz/dict/$name.dict" ] && dict="-dict=fuzz/dict/$name.dict"
    echo "fuzz: $name for ${secs}s"
    "$bin" -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -artifact_prefix=build/fuzz/ $dict "$work" > "build/fuzz/$name.log" 2>&1 || {
        tail -50 "build/fuzz/$name.log"; echo "fuzz: $name FAILED"
        [ -n "${SUMMARY_FILE:-}" ] && printf 'tests=%d failed=1 skipped=0\n' "$#" > "$SUMMARY_FILE"
        exit 1; }
    grep -E 'Done [0-9]+ runs' "build/fuzz/$name.log" || tail -2 "build/fuzz/$name.log"
    rm -rf "$work"
done
[ -n "${SUMMARY_FILE:-}" ] && printf 'tests=%d failed=0 skipped=0\n' "$#" > "$SUMMARY_FILE"
exit 0
