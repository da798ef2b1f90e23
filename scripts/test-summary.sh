#!/bin/sh
# test-summary.sh CMD...: what `make test` runs after vet. Each CMD is a
# `go test -json` command line; they run one after the other, and their
# output goes through scripts/testsummary, which shows it as go test would
# (the packages matching $VERBOSE in full, as it comes: the lab tests' logs
# matter on failure), lists the slowest tests at the end, and judges the
# run. The exit status is non-zero if any command or any test failed.
set -u
GO=${GO:-go}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Built before the tests, not by `go run` inside the pipe: a build error
# would be lost there, and the compiler would compete with the tests.
"$GO" build -o "$tmp/testsummary" ./scripts/testsummary || exit 1
{
	for cmd in "$@"; do
		sh -c "$cmd" 2>&1 || echo "$cmd" >>"$tmp/failed"
	done
} | "$tmp/testsummary" -v "${VERBOSE:-}"
status=$?
if [ -s "$tmp/failed" ]; then
	echo "failed: $(cat "$tmp/failed")"
	exit 1
fi
exit "$status"
