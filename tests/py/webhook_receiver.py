"""A webhook receiver for tests/it/webhooks.rs: verifies every delivery with the `standardwebhooks` package (the
Standard Webhooks reference library, independent of kla), answers the first FAIL_FIRST deliveries with 500 so
kla must retry, and appends each verified delivery to OUT as one JSON line.

Usage: python webhook_receiver.py  (env: SECRET, OUT, FAIL_FIRST, PORT); prints "listening <port>" once bound.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET = os.environ["SECRET"]
OUT = os.environ["OUT"]
FAIL_FIRST = int(os.environ.get("FAIL_FIRST", "0"))
seen = {"n": 0}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        seen["n"] += 1
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload = Webhook(SECRET).verify(body, headers)
        except WebhookVerificationError as e:
            self.record({"verified": False, "error": str(e), "id": headers.get("webhook-id")})
            self.answer(400)
            return
        if seen["n"] <= FAIL_FIRST:
            self.record({"failed_on_purpose": True, "id": headers["webhook-id"], "type": payload.get("type")})
            self.answer(500)
            return
        self.record({"verified": True, "id": headers["webhook-id"], "type": payload["type"], "event": payload})
        self.answer(204)

    def record(self, line):
        with open(OUT, "a") as f:
            f.write(json.dumps(line) + "\n")

    def answer(self, status):
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "0"))), Handler)
print(f"listening {server.server_address[1]}", flush=True)
sys.stdout.close()
server.serve_forever()
