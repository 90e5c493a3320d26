"""Exports one trace to kla with the official OpenTelemetry Python SDK and prints its ids as JSON.

Environment: PROTOCOL (http or grpc), ENDPOINT (http: the full /v1/traces URL; grpc: host:port), TOKEN and
TENANT (sent as Authorization: Bearer and x-tenant-id; empty TOKEN sends neither), GZIP (1: compress exports). Spans carry attributes of every
kind the SDK has (string, bool, int, float and arrays of each), events with attributes, a link and a resource.
Prints {"traceId": ..., "spanIds": [...], "linkedTraceId": ..., "ok": true|false, "warnings": [...]} once the
exporter returned; "warnings" are the messages the OpenTelemetry packages logged at WARNING or above (a retry after a
throttled export says so there, with the delay it waited).
"""

import json
import logging
import os
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags


class Recording:
    """Wraps an exporter to remember whether every export succeeded."""

    def __init__(self, inner):
        self.inner = inner
        self.results = []

    def export(self, spans):
        r = self.inner.export(spans)
        self.results.append(r)
        return r

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return True


def exporter():
    protocol = os.environ["PROTOCOL"]
    endpoint = os.environ["ENDPOINT"]
    token = os.environ.get("TOKEN", "")
    headers = {"authorization": f"Bearer {token}", "x-tenant-id": os.environ["TENANT"]} if token else {}
    gz = os.environ.get("GZIP") == "1"
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        compression = Compression.Gzip if gz else Compression.NoCompression
        return OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=10, compression=compression)
    import grpc
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    compression = grpc.Compression.Gzip if gz else grpc.Compression.NoCompression
    return OTLPSpanExporter(endpoint=endpoint, insecure=True, headers=headers, timeout=10, compression=compression)


class Collect(logging.Handler):
    """Keeps every message logged to it."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def main():
    collected = Collect()
    logging.getLogger("opentelemetry").addHandler(collected)
    resource = Resource.create({"service.name": "py-agent", "deployment.environment": "test", "host.cores": 2})
    provider = TracerProvider(resource=resource)
    rec = Recording(exporter())
    provider.add_span_processor(SimpleSpanProcessor(rec))
    tracer = provider.get_tracer("kla.tests.python", "1.0.0")
    linked = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
    )
    span_ids = []
    with tracer.start_as_current_span("invoke_agent claims-triage", kind=SpanKind.SERVER) as root:
        root.set_attribute("gen_ai.operation.name", "invoke_agent")
        root.set_attribute("gen_ai.request.temperature", 0.2)
        root.set_attribute("gen_ai.usage.input_tokens", 1234)
        root.set_attribute("app.flagged", True)
        root.set_attribute("app.tags", ["refund", "priority"])
        root.set_attribute("app.scores", [0.5, 1.5])
        root.set_attribute("app.counts", [1, 2, 3])
        root.set_attribute("app.bools", [True, False])
        root.add_event("user.message", {"content": "please refund order 1234", "turn": 1})
        with tracer.start_as_current_span(
            "execute_tool lookup_policy", kind=SpanKind.CLIENT, links=[Link(linked, {"link.reason": "retry"})]
        ) as child:
            child.set_attribute("gen_ai.tool.name", "lookup_policy")
            child.set_attribute("gen_ai.tool.call.arguments", '{"policy_id": "P-77"}')
            child.set_status(Status(StatusCode.ERROR, "tool timed out"))
            span_ids.append(format(child.get_span_context().span_id, "016x"))
        span_ids.append(format(root.get_span_context().span_id, "016x"))
        trace_id = format(root.get_span_context().trace_id, "032x")
    provider.shutdown()
    ok = bool(rec.results) and all(r == SpanExportResult.SUCCESS for r in rec.results)
    print(json.dumps({"traceId": trace_id, "spanIds": span_ids, "linkedTraceId": format(linked.trace_id, "032x"), "ok": ok, "warnings": collected.messages}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
