#!/usr/bin/env bash
# The regression gate: two builds of kla side by side in the same minutes, on the hot paths a change can slow.
#
# Usage: bench/gate.sh BASE HEAD [ROUNDS] [SECONDS] [CONNS]
#   BASE, HEAD: a git revision (built here, in release, into target/gate/) or a checkout whose target/release/kla
#   and target/release/examples/{otlp_load,policy_latency} are already built. Defaults: 5 rounds of 5 s at 32 connections.
#
# Paths, each run against BASE and HEAD in turn, round after round (the order swaps every round), so drift on the
# machine lands on both alike:
#   evaluate      POST /v1/decisions.evaluate, an allowed action under the default pack (durable decision)
#   proxy-strict  a GET through the proxy, allow rule, decision durable before the forward
#   proxy-overlap the same under `audit: overlap` (forward beside the record, answer released once durable)
#   engine-default, engine-1000
#                 the decision engine in process (examples/policy_latency): the shipped default pack on the
#                 evaluate request, and a 1,000-rule pack with 3 matching Rego rules; req/s is 1/p50
#   otlp          OTLP/HTTP ingest: 8 clients sending new 512-span exports of ~1 KB spans (examples/otlp_load,
#                 kla in process: decode, redact, seal with fsync); req/s is spans/s, p50/p99 one export at a time
# Each kla has its own data dir (KLA_DATA_BASE=/dev/shm puts them on tmpfs). The proxy's upstream is nginx answering
# from memory. Prints every run, then per path the median HEAD/BASE ratio of req/s over the rounds with its range
# (min-max of the per-round ratios) and the medians of p50/p99. A ratio under 0.97 is a loss beyond the noise of
# this machine unless the range says the run was noisy: run again with more rounds before accepting it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BASE=$1; HEAD=$2; ROUNDS=${3:-5}; DUR=${4:-5}; CONNS=${5:-32}
command -v wrk >/dev/null || { echo "gate.sh needs wrk (apt-get install wrk)" >&2; exit 2; }
command -v nginx >/dev/null || { echo "gate.sh needs nginx (apt-get install nginx-light)" >&2; exit 2; }

# A build of `rev` (a directory with target/release/kla, or a git revision built into target/gate/<sha>).
binary() {
  local rev=$1
  if [ -x "$rev/target/release/kla" ]; then
    echo "$(cd "$rev" && pwd)/target/release/kla"
    return
  fi
  local sha; sha=$(git -C "$ROOT" rev-parse --verify "$rev^{commit}")
  local out="$ROOT/target/gate/$sha"
  if [ ! -x "$out/kla" ]; then
    local src="$ROOT/target/gate/src-$sha"
    rm -rf "$src"; mkdir -p "$src"
    git -C "$ROOT" archive "$sha" | tar -x -C "$src"
    # One target dir for every gate build: only what changed between revisions is compiled again.
    (cd "$src" && CARGO_TARGET_DIR="$ROOT/target/gate/target" cargo build --release --locked --bin kla --example otlp_load --example policy_latency >&2)
    mkdir -p "$out"
    cp "$ROOT/target/gate/target/release/kla" "$out/kla"
    cp "$ROOT/target/gate/target/release/examples/otlp_load" "$out/otlp_load"
    cp "$ROOT/target/gate/target/release/examples/policy_latency" "$out/policy_latency"
    cp -r "$src/policies" "$out/policies"
    rm -rf "$src"
  fi
  echo "$out/kla"
}
# The default pack of a build: beside a gate build's binary, or its checkout's policies/.
policies_of() {
  local bin=$1 d; d=$(dirname "$bin")
  if [ -d "$d/policies" ]; then echo "$d/policies"; else echo "$(cd "$d/../.." && pwd)/policies"; fi
}

# An example of a build (otlp_load, policy_latency): beside a gate build's binary, or in its checkout's target.
example_of() {
  local d; d=$(dirname "$1")
  if [ -x "$d/$2" ]; then echo "$d/$2"; else echo "$d/examples/$2"; fi
}
BIN_BASE=$(binary "$BASE"); BIN_HEAD=$(binary "$HEAD")
declare -A OTLP=([base]=$(example_of "$BIN_BASE" otlp_load) [head]=$(example_of "$BIN_HEAD" otlp_load))
declare -A ENGINE=([base]=$(example_of "$BIN_BASE" policy_latency) [head]=$(example_of "$BIN_HEAD" policy_latency))
declare -A POL=([base]=$(policies_of "$BIN_BASE") [head]=$(policies_of "$BIN_HEAD"))
WORK=$(mktemp -d -p "${KLA_DATA_BASE:-/tmp}")
cleanup() { kill $(jobs -p) 2>/dev/null || true; [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

UP=18901
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } }
}
EOF
nginx -c "$WORK/nginx.conf" -p "$WORK" -g 'daemon on;'

declare -A API PX TOK AG
# start NAME BIN API_PORT PROXY_PORT AUDIT: one kla with the default pack (evaluate) and a proxy route.
start() {
  local n=$1 bin=$2 api=$3 px=$4 audit=$5
  cat >"$WORK/$n.yaml" <<EOF
proxy:
  tenant: bench
  agent: bench-agent
  audit: $audit
  routes:
    - {name: up, prefix: /up, upstream: "http://127.0.0.1:$UP"}
EOF
  "$bin" serve --config "$WORK/$n.yaml" --data-dir "$WORK/$n" --api-addr 127.0.0.1:$api --proxy-addr 127.0.0.1:$px \
    --policies "$(policies_of "$bin")" --api-max-connections 4096 >"$WORK/$n.log" 2>&1 &
  for _ in $(seq 200); do curl -sf http://127.0.0.1:$api/healthz >/dev/null && break; sleep 0.1; done
  TOK[$n]=$("$bin" token --data-dir "$WORK/$n" --tenant bench --role admin --ttl 2h)
  AG[$n]=$(curl -s -X POST http://127.0.0.1:$api/v1/agents -H "Authorization: Bearer ${TOK[$n]}" -H "x-tenant-id: bench" \
    -H 'content-type: application/json' -d '{"name":"bench-agent"}' |
    python3 -c 'import sys,json;t=sys.stdin.read();print(json.loads(t).get("agentId") or sys.exit("register: "+t))')
  API[$n]=$api; PX[$n]=$px
}
start base-strict "$BIN_BASE" 18911 18912 strict
start base-overlap "$BIN_BASE" 18921 18922 overlap
start head-strict "$BIN_HEAD" 18931 18932 strict
start head-overlap "$BIN_HEAD" 18941 18942 overlap
sleep 1

run() { # round build path url [lua token agent]
  local out
  if [ -n "${5:-}" ]; then
    out=$(TOKEN=$6 TENANT=bench AGENT=$7 wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -s "$5" "$4" 2>&1)
  else
    out=$(wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$4" 2>&1)
  fi
  local errs; errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  echo "$1 $2 $3 $(awk '/Requests\/sec/ {print $2}' <<<"$out") p50=$(awk '$1=="50%" {print $2}' <<<"$out") p99=$(awk '$1=="99%" {print $2}' <<<"$out") $errs" |
    tee -a "$WORK/results"
}
otlp() { # round build: the example runs from a directory whose policies/ is the build's
  local out dir; dir=$(dirname "${POL[$2]}")
  out=$(cd "$dir" && "${OTLP[$2]}" --clients 8 --seconds "$DUR" --batch 512 --span-bytes 1000 2>&1)
  local sps p50 p99
  sps=$(sed -n 's/^throughput: \([0-9]*\) spans.*/\1/p' <<<"$out")
  p50=$(sed -n 's/.*p50=\([0-9.]*ms\).*/\1/p' <<<"$out")
  p99=$(sed -n 's/.*p99=\([0-9.]*ms\).*/\1/p' <<<"$out")
  echo "$1 $2 otlp ${sps:-0} p50=${p50:-0ms} p99=${p99:-0ms}" | tee -a "$WORK/results"
}
engine() { # round build: one run of the latency example gives both packs' percentiles (the throughput part is skipped)
  local out dir; dir=$(dirname "${POL[$2]}")
  out=$(cd "$dir" && KLA_LATENCY_ONLY=1 "${ENGINE[$2]}" 2>&1)
  local line name p50 p99
  for name in engine-1000 engine-default; do
    case $name in
      engine-1000) line=$(grep -m1 '^1000 rules, 3 match, 3 Rego' <<<"$out") ;;
      engine-default) line=$(grep -m1 '^default pack' <<<"$out") ;;
    esac
    p50=$(sed -n 's/.* p50=\([0-9.]*\)us.*/\1/p' <<<"$line")
    p99=$(sed -n 's/.* p99=\([0-9.]*\)us.*/\1/p' <<<"$line")
    echo "$1 $2 $name $(python3 -c "print(round(1e6/${p50:-1e9}))") p50=${p50:-0}us p99=${p99:-0}us" | tee -a "$WORK/results"
  done
}
echo "# round build path req/s p50 p99   (BASE=$BASE HEAD=$HEAD, ${DUR}s x $ROUNDS rounds, c=$CONNS)"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order="base head"; else order="head base"; fi
  for path in evaluate proxy-strict proxy-overlap engine otlp; do
    for b in $order; do
      case $path in
        evaluate) run "$r" "$b" "$path" "http://127.0.0.1:${API[$b-strict]}" "$HERE/evaluate_allow.lua" "${TOK[$b-strict]}" "${AG[$b-strict]}" ;;
        proxy-strict) run "$r" "$b" "$path" "http://127.0.0.1:${PX[$b-strict]}/up/x" ;;
        proxy-overlap) run "$r" "$b" "$path" "http://127.0.0.1:${PX[$b-overlap]}/up/x" ;;
        engine) engine "$r" "$b" ;;
        otlp) otlp "$r" "$b" ;;
      esac
    done
  done
done
echo "# HEAD/BASE per path: median ratio of req/s [min-max over rounds]; medians of p50 and p99 (base -> head)"
python3 - "$WORK/results" <<'EOF'
import sys, statistics, collections
def us(v):
    for suf, f in (("us", 1), ("ms", 1000), ("s", 1e6)):
        if v.endswith(suf):
            return float(v[:-len(suf)]) * f
    return float(v)
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    p = line.split()
    runs[(p[2], p[0])][p[1]] = (float(p[3]), us(p[4].split("=")[1]), us(p[5].split("=")[1]))
paths = sorted({k[0] for k in runs}, key=["evaluate", "proxy-strict", "proxy-overlap", "engine-default", "engine-1000", "otlp"].index)
for path in paths:
    rounds = [v for (pth, _), v in runs.items() if pth == path and "base" in v and "head" in v]
    ratios = [v["head"][0] / v["base"][0] for v in rounds]
    med = lambda b, i: statistics.median(v[b][i] for v in rounds)
    print(f"{path:14s} {statistics.median(ratios):5.2f} [{min(ratios):.2f}-{max(ratios):.2f}]  "
          f"req/s {med('base',0):8.0f} -> {med('head',0):8.0f}  "
          f"p50 {med('base',1):6.0f} -> {med('head',1):6.0f} us  p99 {med('base',2):6.0f} -> {med('head',2):6.0f} us")
EOF
