#!/usr/bin/env bash
# Try to build KServe's InferenceGraph router (cmd/router, Go) into benchmarks/.work/kserve-router/router.
#
# The source is expected in benchmarks/.work/kserve (a checkout of kserve/kserve; never committed). Go comes from
# Debian (apt-get install golang-go: 1.19 on bookworm). Module downloads go through GOPROXY as configured; where
# no Go module proxy is reachable the build stops at the first missing module, and this script says so.
set -uo pipefail
cd "$(dirname "$0")/../.."
SRC=benchmarks/.work/kserve
OUT=benchmarks/.work/kserve-router
[ -f "$SRC/cmd/router/main.go" ] || { echo "[kserve-router] no source in $SRC (check out kserve/kserve there)"; exit 2; }
command -v go >/dev/null || { echo "[kserve-router] no Go toolchain: apt-get install golang-go"; exit 2; }
echo "[kserve-router] $(go version); go.mod wants: $(grep -m1 '^go ' "$SRC/go.mod")"
mkdir -p "$OUT"
( cd "$SRC" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -o "../kserve-router/router" ./cmd/router ) 2>&1 | tail -20
status=${PIPESTATUS[0]}
if [ -x "$OUT/router" ]; then echo "[kserve-router] built $OUT/router"; else echo "[kserve-router] build failed"; exit 1; fi
