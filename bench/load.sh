#!/usr/bin/env bash
# Load runs against the release binary, each beside a bare hyper baseline measured in the same run.
# Usage: bench/load.sh [seconds-per-run] [connections]
# Core scaling: KLA_TASKSET='taskset -c 0' WRK_TASKSET='taskset -c 1' pins servers and load generator.
# Needs wrk (apt-get install wrk); the half-load latency run needs oha (cargo install oha) and is skipped without it.
# KLA_DATA_BASE=/dev/shm puts kla's data dir on tmpfs (fsync becomes free: shows kla's own cost without the disk).
# Prints markdown tables for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${2:-32}
EVAL_CONNS=${EVAL_CONNS:-256}
cargo build --release --bin kla --example bare_hyper >&2
KLA=target/release/kla
BARE=target/release/examples/bare_hyper
WORK=$(mktemp -d -p "${KLA_DATA_BASE:-${TMPDIR:-/tmp}}")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

BARE_PORT=18799; DURABLE_PORT=18798; SHAPED_PORT=18797; KLA_PORT=18700
${KLA_TASKSET:-} $BARE 127.0.0.1:$BARE_PORT 2>/dev/null &
# The second baseline: bare hyper whose every answer waits for a group-committed fdatasync on the data dir's disk.
mkdir -p "$WORK/durable"
${KLA_TASKSET:-} $BARE 127.0.0.1:$DURABLE_PORT --durable "$WORK/durable" 2>/dev/null &
${KLA_TASKSET:-} $KLA serve --data-dir "$WORK/data" --api-addr 127.0.0.1:$KLA_PORT --policies policies ${KLA_FLAGS:-} >"$WORK/kla.log" 2>&1 &
for _ in $(seq 100); do curl -sf http://127.0.0.1:$KLA_PORT/healthz >/dev/null && break; sleep 0.1; done
for _ in $(seq 100); do curl -sf http://127.0.0.1:$DURABLE_PORT/ >/dev/null && break; sleep 0.1; done
export TENANT=bench RUN=$RANDOM
export TOKEN=$($KLA token --data-dir "$WORK/data" --tenant bench --role admin --ttl 1h)

run() { # name, then wrk args; prints "name req/s p50 p99"
  local name=$1; shift
  local out; out=$(${WRK_TASKSET:-} wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$@" 2>&1)
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  echo "$name|$rps|$p50|$p99|${non2xx:-0}"
}

echo "| run | req/s | p50 | p99 | non-2xx | ratio to bare hyper | ratio to durable bare hyper |"
echo "|---|---|---|---|---|---|---|"
base=$(run "bare hyper GET /" http://127.0.0.1:$BARE_PORT/)
base_rps=$(cut -d'|' -f2 <<<"$base")
durable=$(run "bare hyper GET /, answer after a group-committed fdatasync" http://127.0.0.1:$DURABLE_PORT/)
durable_rps=$(cut -d'|' -f2 <<<"$durable")
emit() { local line=$1; local rps; rps=$(cut -d'|' -f2 <<<"$line"); echo "| ${line} | $(python3 -c "print(f'{$rps/$base_rps:.2f} | {$rps/$durable_rps:.2f}')") |"; }
emit "$base"
emit "$durable"
emit "$(run "kla GET /admin/health" http://127.0.0.1:$KLA_PORT/admin/health)"
emit "$(run "kla POST /v1/agents (new agent each)" -s bench/register.lua http://127.0.0.1:$KLA_PORT)"
emit "$(run "kla GET /v1/agents/{id} (auth + SQLite read)" -s bench/get.lua "http://127.0.0.1:$KLA_PORT/v1/agents/$(curl -s -X POST http://127.0.0.1:$KLA_PORT/v1/agents -H "Authorization: Bearer $TOKEN" -H "x-tenant-id: bench" -H 'content-type: application/json' -d '{"name":"probe"}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["agentId"])')")"
# The third baseline: bare hyper that reads a request shaped like kla's evaluate request (same script: headers,
# token, body) and answers with a body as long as kla's evaluate answer. It prices the HTTP and TCP work for kla's
# message sizes, which the 15-byte GET baseline does not carry.
export AGENT=$(curl -s -X POST http://127.0.0.1:$KLA_PORT/v1/agents -H "Authorization: Bearer $TOKEN" -H "x-tenant-id: bench" -H 'content-type: application/json' -d '{"name":"evaluator"}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["agentId"])')
answer_len=$(curl -s -X POST http://127.0.0.1:$KLA_PORT/v1/decisions.evaluate -H "Authorization: Bearer $TOKEN" -H "x-tenant-id: bench" \
  -H 'content-type: application/json' -d "{\"agentId\":\"$AGENT\",\"action\":\"execute_refund\",\"context\":{\"amount\":1250.00,\"user_id\":\"usr_22\"}}" | wc -c)
${KLA_TASKSET:-} $BARE 127.0.0.1:$SHAPED_PORT --body-bytes "$answer_len" 2>/dev/null &
for _ in $(seq 100); do curl -sf -X POST -d '{}' http://127.0.0.1:$SHAPED_PORT/ >/dev/null && break; sleep 0.1; done
emit "$(run "bare hyper POST, evaluate's request and a $answer_len-byte answer (third baseline)" -s bench/evaluate.lua http://127.0.0.1:$SHAPED_PORT)"
eval_line=$(run "kla POST /v1/decisions.evaluate, $CONNS conns (decide + ledger fsync + index)" -s bench/evaluate.lua http://127.0.0.1:$KLA_PORT)
emit "$eval_line"
emit "$(CONNS=$EVAL_CONNS run "kla POST /v1/decisions.evaluate, $EVAL_CONNS conns" -s bench/evaluate.lua http://127.0.0.1:$KLA_PORT)"
if [ -n "${EXTRA_RUNS:-}" ]; then source "$EXTRA_RUNS"; fi

# p99 at half load: oha sends a fixed rate (half of what evaluate reached above, closed loop) with latency
# correction, so a stall shows up in the percentiles instead of slowing the sender down.
if command -v oha >/dev/null; then
  eval_rps=$(cut -d'|' -f2 <<<"$eval_line")
  half=$(python3 -c "print(int($eval_rps/2))")
  echo
  echo "| open-loop run | rate | p50 | p99 | p99.9 | success |"
  echo "|---|---|---|---|---|---|"
  body=$(printf '{"agentId":"%s","action":"execute_refund","context":{"amount":1250.00,"user_id":"usr_22"}}' "$AGENT")
  open_loop() { # name, then oha target args
    local name=$1; shift
    ${WRK_TASKSET:-} oha --no-tui --output-format json -z "${DUR}s" -c "$CONNS" -q "$half" --latency-correction "$@" >"$WORK/oha.json"
    python3 - "$WORK/oha.json" "$half" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["latencyPercentiles"]
ms = lambda k: f"{p[k] * 1e3:.2f} ms"
print(f"| {sys.argv[3]} | {int(sys.argv[2]):,}/s target, {r['summary']['requestsPerSec']:,.0f}/s done | {ms('p50')} | {ms('p99')} | {ms('p99.9')} | {r['summary']['successRate']:.4f} |")
PY
  }
  open_loop "bare hyper GET / at the same rate (baseline)" "http://127.0.0.1:$BARE_PORT/"
  open_loop "durable bare hyper GET / at the same rate (second baseline)" "http://127.0.0.1:$DURABLE_PORT/"
  open_loop "kla POST /v1/decisions.evaluate at half load" -m POST -H "Authorization: Bearer $TOKEN" \
    -H "x-tenant-id: bench" -T application/json -d "$body" "http://127.0.0.1:$KLA_PORT/v1/decisions.evaluate"
fi

# The disk's floor for a durable answer, on the file system of kla's data dir, measured after the load runs.
echo
echo "| disk baseline (same file system as the data dir) | syncs/s | p50 | p99 | p99.9 |"
echo "|---|---|---|---|---|"
python3 bench/fsync_baseline.py "$WORK" 3
