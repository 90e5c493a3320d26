#!/usr/bin/env bash
# Many concurrent SSE subscribers against kla: errors, kla's resident memory per idle subscriber, and the time for
# a burst of decisions to reach every subscriber (examples/sse_load.rs).
# Usage: bench/sse.sh [subscribers] [decisions]      (default 1000 and 20)
# KLA_PROFILE=debug uses the debug build (a quick check that the script works; the figures are the release build's).
# Prints a markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
DECISIONS=${2:-20}
PROFILE=${KLA_PROFILE:-release}
if [ "$PROFILE" = release ]; then
  cargo build --release --bin kla --example sse_load >&2
else
  cargo build --bin kla --example sse_load >&2
fi
BIN=target/$PROFILE
# Each subscriber is one connection, so one descriptor on each side.
ulimit -n $((N * 2 + 1024)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d -p "${TMPDIR:-/tmp}")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=${KLA_PORT:-18710}
$BIN/kla serve --data-dir "$WORK/data" --api-addr 127.0.0.1:$PORT --policies policies \
  --api-max-connections $((N + 64)) --events-max-subscribers $((N + 16)) \
  --events-max-subscribers-per-tenant $((N + 16)) >"$WORK/kla.log" 2>&1 &
KLA_PID=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
TOKEN=$($BIN/kla token --data-dir "$WORK/data" --tenant bench --role admin --ttl 1h)
AGENT=$(curl -s -X POST http://127.0.0.1:$PORT/v1/agents -H "Authorization: Bearer $TOKEN" -H "x-tenant-id: bench" \
  -H 'content-type: application/json' -d '{"name":"sse-bench"}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["agentId"])')
KLA_BASE=http://127.0.0.1:$PORT KLA_TOKEN=$TOKEN KLA_TENANT=bench KLA_AGENT=$AGENT KLA_PID=$KLA_PID \
  KLA_SUBSCRIBERS=$N KLA_DECISIONS=$DECISIONS $BIN/examples/sse_load || { tail -20 "$WORK/kla.log" >&2; exit 1; }
