#!/usr/bin/env bash
# The test command: installs the tools the tests need, then gofmt, go vet
# and every test with the race detector. CI runs exactly this (.ci/run).
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
go test -race -count=1 -timeout 15m ./...
