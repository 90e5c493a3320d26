#!/usr/bin/env bash
# A/B of the ledger writer's scheduling policy with one binary: SCHED_BATCH (kla's default) against the default
# policy (switched back with `chrt -o -p 0 <writer tid>`), kla pinned to core 0 and wrk to core 1, each round against
# bare hyper measured in the same round. Usage: [ROUNDS=3] [D=6] [CONNS=32] bench/writer_policy_ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin kla --example bare_hyper >&2
ROUNDS=${ROUNDS:-3}; D=${D:-6}; C=${CONNS:-32}
for r in $(seq $ROUNDS); do
  taskset -c 0 target/release/examples/bare_hyper 127.0.0.1:18799 2>/dev/null & BP=$!
  sleep 0.3
  b=$(taskset -c 1 wrk -t1 -c$C -d${D}s http://127.0.0.1:18799/ | awk '/Requests\/sec/{print $2}')
  kill $BP; wait $BP 2>/dev/null || true
  out="round $r bare $b"
  for mode in batch other; do
    WORK=$(mktemp -d -p /tmp)
    taskset -c 0 target/release/kla serve --data-dir "$WORK/data" --api-addr 127.0.0.1:18700 --policies policies >"$WORK/kla.log" 2>&1 & KP=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:18700/healthz >/dev/null && break; sleep 0.1; done
    if [ $mode = other ]; then for t in /proc/$KP/task/*; do grep -q kla-ledger $t/comm && chrt -o -p 0 ${t##*/}; done; fi
    export TENANT=bench TOKEN=$(target/release/kla token --data-dir "$WORK/data" --tenant bench --role admin --ttl 1h)
    export AGENT=$(curl -s -X POST http://127.0.0.1:18700/v1/agents -H "Authorization: Bearer $TOKEN" -H "x-tenant-id: bench" -H 'content-type: application/json' -d '{"name":"evaluator"}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["agentId"])')
    taskset -c 1 wrk -t1 -c$C -d1s -s bench/evaluate.lua http://127.0.0.1:18700 >/dev/null
    k=$(taskset -c 1 wrk -t1 -c$C -d${D}s -s bench/evaluate.lua http://127.0.0.1:18700 | awk '/Requests\/sec/{print $2}')
    kill $KP; wait $KP 2>/dev/null || true; rm -rf "$WORK"
    out="$out | $mode $k ($(python3 -c "print(f'{$k/$b:.3f}')"))"
  done
  echo "$out"
done
