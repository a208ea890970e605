#!/usr/bin/env bash
# gotest.sh NAME [go test flags and packages]: go test -v, its whole output
# kept in $TEST_LOG_DIR/NAME.log (default ./test-logs), and a summary at the
# end that a CI log's tail shows: the packages' results, the tests that
# failed, the tests that never finished (what a hang or a timeout was
# running), and the slowest top-level tests.
set -uo pipefail
name=$1
shift
dir=${TEST_LOG_DIR:-test-logs}
mkdir -p "$dir"
log=$dir/$name.log
# The console gets the log without go test's bookkeeping lines.
${GO:-go} test -v "$@" 2>&1 | tee "$log" | grep --line-buffered -v -E '^ *(=== (RUN|PAUSE|CONT|NAME)|--- (PASS|SKIP):)'
rc=${PIPESTATUS[0]}
echo
echo "=== summary of go test $name (whole output: $log)"
awk -f "$(dirname "$0")/gotest-summary.awk" "$log"
exit "$rc"
