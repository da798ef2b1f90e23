#!/bin/sh
# test-summary.sh: pass `go test -v` output through, keeping its exit status
# visible to make. It prints everything (the lab's logs on failure matter)
# and exits non-zero unless the output ends in "ok" for every package.
set -u
out=$(mktemp)
trap 'rm -f "$out"' EXIT
tee "$out"
if grep -qE '^(FAIL|--- FAIL|panic:)' "$out"; then
	exit 1
fi
grep -qE '^(ok|PASS)' "$out" || exit 1
