#!/usr/bin/env bash
# Memory of held calls: N agents' calls held open by kla's proxy at once, each waiting for its own approval.
# Usage: bench/held.sh N [KLA_BIN]   Prints kla's RSS before and with the N calls held, and the cost per call.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
N=$1; KLA=${2:-$HERE/../target/release/kla}
ulimit -n 65536
WORK=$(mktemp -d -p "${KLA_DATA_BASE:-/tmp}"); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/packs/bench"
cat >"$WORK/packs/bench/pack.yaml" <<'YAML'
apiVersion: kla.dev/v1
kind: PolicyPack
metadata: {name: bench, version: 1.0.0}
spec:
  defaultDecision: allow
  rules:
    - {id: hold-wire, match: {actions: [wire_money]}, decision: require_approval, reasonCode: WIRE, approval: {timeout: 1h}}
YAML
cat >"$WORK/kla.yaml" <<YAML
proxy:
  tenant: bench
  agent: bench-agent
  hold-budget: 1h
  routes:
    - name: up
      prefix: /up
      upstream: "http://127.0.0.1:9"
      actions:
        - {method: POST, path: "/wires/{id}", action: wire_money}
YAML
"$KLA" serve --config "$WORK/kla.yaml" --data-dir "$WORK/d" --api-addr 127.0.0.1:18831 --proxy-addr 127.0.0.1:18832 \
  --policies "$WORK/packs" --allow-unsigned --api-max-connections 60000 >"$WORK/kla.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18831/healthz >/dev/null && break; sleep 0.1; done
TOK=$("$KLA" token --data-dir "$WORK/d" --tenant bench --role admin --ttl 1h)
curl -sf -X POST http://127.0.0.1:18831/v1/agents -H "Authorization: Bearer $TOK" -H "x-tenant-id: bench" \
  -H 'content-type: application/json' -d '{"name":"bench-agent"}' >/dev/null
sleep 1
python3 - "$N" "$PID" "$TOK" <<'PY'
import asyncio, json, sys, time, urllib.request
n, pid, tok = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def pending():
    req = urllib.request.Request("http://127.0.0.1:18831/v1/approvals?status=PENDING&limit=1",
                                 headers={"Authorization": f"Bearer {tok}", "x-tenant-id": "bench"})
    return json.load(urllib.request.urlopen(req))["counts"]["PENDING"]
async def main():
    before = rss_kib()
    conns = []
    t0 = time.time()
    for i in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", 18832)
        w.write(f"POST /up/wires/{i} HTTP/1.1\r\nhost: kla\r\ncontent-length: 2\r\n\r\n{{}}".encode())
        conns.append((r, w))
        if i % 500 == 499:
            await asyncio.sleep(0)
    for w in (w for _, w in conns):
        await w.drain()
    while (p := pending()) < n:
        if time.time() - t0 > 600:
            sys.exit(f"only {p} of {n} calls held after 600s")
        await asyncio.sleep(0.5)
    await asyncio.sleep(1)
    held = rss_kib()
    answered = sum(1 for r, _ in conns if r.at_eof() or len(r._buffer) > 0)
    print(f"held={n} opened_in={time.time()-t0:.1f}s rss_before={before/1024:.1f}MiB rss_held={held/1024:.1f}MiB "
          f"per_call={(held-before)/n:.1f}KiB answered_early={answered}")
asyncio.run(main())
PY
