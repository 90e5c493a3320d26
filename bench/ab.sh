#!/usr/bin/env bash
# A/B of POST /v1/decisions.evaluate across builds in one run: every build's release kla is started side by side
# (each from its own checkout, with that checkout's policies/), then wrk runs against them in turn, round after
# round, so drift on the machine lands on every build alike.
# Usage: bench/ab.sh ROUNDS SECONDS CONNS CHECKOUT...   (each CHECKOUT has target/release/kla built)
# LUA=script.lua picks the request (default bench/evaluate.lua, a require_approval decision under the default pack;
# bench/evaluate_allow.lua asks for an allowed action). KLA_DATA_BASE=/dev/shm puts the data dirs on tmpfs.
# Prints one line per run: round, checkout, req/s, p99.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROUNDS=$1; DUR=$2; CONNS=$3; shift 3
WORK=$(mktemp -d -p ${KLA_DATA_BASE:-/tmp}); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
port=18720; declare -A P T A
for d in "$@"; do
  port=$((port+1)); n=$(basename $d); P[$n]=$port
  (cd $d && exec target/release/kla serve --data-dir "$WORK/$n" --api-addr 127.0.0.1:$port --policies policies >"$WORK/$n.log" 2>&1) &
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.1; done
  T[$n]=$($d/target/release/kla token --data-dir "$WORK/$n" --tenant bench --role admin --ttl 1h)
  sleep 1
  A[$n]=$(curl -s -X POST http://127.0.0.1:$port/v1/agents -H "Authorization: Bearer ${T[$n]}" -H "x-tenant-id: bench" -H 'content-type: application/json' -d '{"name":"evaluator"}' | python3 -c 'import sys,json;t=sys.stdin.read();print(json.loads(t).get("agentId") or sys.exit("register: "+t))')
done
for r in $(seq $ROUNDS); do
  for d in "$@"; do n=$(basename $d)
    out=$(TOKEN=${T[$n]} TENANT=bench AGENT=${A[$n]} wrk -t1 -c$CONNS -d${DUR}s --latency -s ${LUA:-$HERE/evaluate.lua} http://127.0.0.1:${P[$n]} 2>&1)
    echo "$r $n $(awk '/Requests\/sec/ {print $2}' <<<"$out") p99=$(awk '$1=="99%" {print $2}' <<<"$out")"
  done
done
