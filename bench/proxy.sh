#!/usr/bin/env bash
# The tool-call proxy against nginx's proxy_pass, in one run: a small local upstream (nginx answering "ok" from
# memory), reached directly, through nginx proxy_pass (keep-alive upstream), and through kla's proxy with an allow
# rule in both audit modes; plus kla's durable decision (POST /v1/decisions.evaluate, allowed) as the baseline of
# what a recorded decision costs. Rounds alternate between the targets so drift on the machine lands on all alike.
# Usage: bench/proxy.sh ROUNDS SECONDS CONNS [KLA_BIN]   (default target/release/kla; needs nginx and wrk)
# Prints per round and target: req/s, p50, p99; then each target's median over the rounds. CONNS=1 measures
# latency added per call; a larger CONNS, throughput. KLA_DATA_BASE=/dev/shm puts kla's data dirs on tmpfs.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROUNDS=$1; DUR=$2; CONNS=$3; KLA=${4:-$HERE/../target/release/kla}
WORK=$(mktemp -d -p "${KLA_DATA_BASE:-/tmp}")
cleanup() { kill $(jobs -p) 2>/dev/null || true; [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
UP=18801; NGX=18802
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 256; }
  server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } }
  server {
    listen 127.0.0.1:$NGX;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
nginx -c "$WORK/nginx.conf" -p "$WORK" -g 'daemon on;'
mkdir -p "$WORK/packs/bench"
cat >"$WORK/packs/bench/pack.yaml" <<'EOF'
apiVersion: kla.dev/v1
kind: PolicyPack
metadata: {name: bench, version: 1.0.0}
spec:
  defaultDecision: allow
  rules:
    - {id: no-delete, match: {actions: [delete_customer]}, decision: block, reasonCode: NO_DELETE}
EOF
declare -A API PX TOK AG
start_kla() { # name api-port proxy-port audit
  local n=$1
  cat >"$WORK/$n.yaml" <<EOF
proxy:
  tenant: bench
  agent: bench-agent
  audit: $4
  routes:
    - {name: up, prefix: /up, upstream: "http://127.0.0.1:$UP"}
EOF
  "$KLA" serve --config "$WORK/$n.yaml" --data-dir "$WORK/$n" --api-addr 127.0.0.1:$2 --proxy-addr 127.0.0.1:$3 \
    --policies "$WORK/packs" --allow-unsigned --api-max-connections 4096 >"$WORK/$n.log" 2>&1 &
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$2/healthz >/dev/null && break; sleep 0.1; done
  TOK[$n]=$("$KLA" token --data-dir "$WORK/$n" --tenant bench --role admin --ttl 1h)
  AG[$n]=$(curl -s -X POST http://127.0.0.1:$2/v1/agents -H "Authorization: Bearer ${TOK[$n]}" -H "x-tenant-id: bench" \
    -H 'content-type: application/json' -d '{"name":"bench-agent"}' |
    python3 -c 'import sys,json;t=sys.stdin.read();print(json.loads(t).get("agentId") or sys.exit("register: "+t))')
  API[$n]=$2; PX[$n]=$3
}
start_kla strict 18811 18812 strict
start_kla overlap 18821 18822 overlap
sleep 1
cat >"$WORK/evaluate.lua" <<'EOF'
function init(args)
  wrk.method = "POST"
  wrk.path = "/v1/decisions.evaluate"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
  wrk.headers["x-tenant-id"] = "bench"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = string.format('{"agentId":"%s","action":"lookup_policy","context":{"claimId":"c-1"}}', os.getenv("AGENT"))
end
EOF
run() { # label url [lua]
  local out
  if [ -n "${3:-}" ]; then
    out=$(TOKEN=${TOK[strict]} AGENT=${AG[strict]} wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -s "$3" "$2" 2>&1)
  else
    out=$(wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$2" 2>&1)
  fi
  local errs; errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  echo "$r $1 $(awk '/Requests\/sec/ {print $2}' <<<"$out") p50=$(awk '$1=="50%" {print $2}' <<<"$out") p99=$(awk '$1=="99%" {print $2}' <<<"$out") $errs" | tee -a "$WORK/results"
}
for r in $(seq "$ROUNDS"); do
  run direct "http://127.0.0.1:$UP/x"
  run nginx "http://127.0.0.1:$NGX/x"
  run kla-strict "http://127.0.0.1:${PX[strict]}/up/x"
  run kla-overlap "http://127.0.0.1:${PX[overlap]}/up/x"
  run evaluate "http://127.0.0.1:${API[strict]}" "$WORK/evaluate.lua"
done
echo "== medians over $ROUNDS rounds (c=$CONNS)"
python3 - "$WORK/results" <<'EOF'
import sys, statistics, collections
def us(v):
    for suf, f in (("us", 1), ("ms", 1000), ("s", 1e6)):
        if v.endswith(suf):
            return float(v[:-len(suf)]) * f
    return float(v)
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p = line.split()
    rows[p[1]].append((float(p[2]), us(p[3].split("=")[1]), us(p[4].split("=")[1])))
for k, v in rows.items():
    rps, p50, p99 = (statistics.median(x[i] for x in v) for i in range(3))
    print(f"{k:12s} req/s={rps:10.0f} p50={p50:8.1f}us p99={p99:8.1f}us")
EOF
