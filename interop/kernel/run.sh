#!/usr/bin/env bash
# Runs the kernel interop test verbosely and keeps the run (images, serial
# logs, job scripts) under $TMPDIR/nvblk-interop-kernel/run-*.
# Extra arguments go to `go test` (e.g. -race).
set -euo pipefail
cd "$(dirname "$0")/../.."
NVBLK_KERNEL_KEEP=1 exec go test -v -count=1 -run 'TestKernel' "$@" ./interop/kernel/
