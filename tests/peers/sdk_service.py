"""Test peer: an HTTP/1.1 service instrumented by hand with the OpenTelemetry
SDK, exporting its own spans over OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT).

GET /sdk/X -> a SERVER span joining the request's traceparent, inside it a
CLIENT span for GET --downstream /work/X with the SDK's traceparent; 200.
"""

import argparse
import http.client
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

ARGS = None
provider = TracerProvider()
# Exports within a fifth of a second, so the test does not wait long.
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=200))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("clew-e2e-sdk-service")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        ctx = propagate.extract(self.headers)
        with tracer.start_as_current_span("GET", context=ctx, kind=trace.SpanKind.SERVER) as span:
            span.set_attribute("url.path", path)
            name = path[len("/sdk/") :]
            status = self.call_downstream(f"/work/{name}")
            span.set_attribute("http.response.status_code", 200)
        body = b"ok" if status == 200 else b"downstream failed"
        self.send_response(200 if status == 200 else 502)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def call_downstream(self, path):
        url = urllib.parse.urlsplit(ARGS.downstream)
        with tracer.start_as_current_span("GET", kind=trace.SpanKind.CLIENT) as span:
            span.set_attribute("url.full", f"{ARGS.downstream}{path}")
            headers = {}
            propagate.inject(headers)
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                span.set_attribute("http.response.status_code", resp.status)
                return resp.status
            finally:
                conn.close()

    def log_message(self, fmt, *args):
        print(f"[sdk-service] {self.address_string()} {fmt % args}", flush=True)


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--downstream", required=True)
    ARGS = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    print(f"listening on {ARGS.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
