#!/usr/bin/env bash
# The test command: installs the tools the tests need, then gofmt, go vet,
# staticcheck and every test with the race detector. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt needed on:" >&2
	echo "$unformatted" >&2
	exit 1
fi
go vet ./...
GOARCH=arm64 go vet ./internal/cacheflush/ ./pmem/
# staticcheck, pinned (fetched through the Go module proxy on first use).
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
go test -race -count=1 -timeout 15m ./...

# The crash explorer's full run (>= 100000 crash states) and the check of a
# 1 TiB image, without the race detector, which would make them many times
# slower; the -race run above explores fewer states with the detector on.
go test -count=1 -run 'TestCrash|Test1TiB' -v ./btt/ | grep -E '^(crash-states:|--- |ok|FAIL|PASS)'
# Allocation counts are only meaningful without the race detector.
go test -count=1 -run 'Alloc' ./btt/ ./nbd/ ./internal/cacheflush/
