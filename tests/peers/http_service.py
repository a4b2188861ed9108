"""Test peer: a threaded HTTP/1.1 service (stdlib only) that the agent traces.

GET /work[/...] -> 200 "ok" (after --work-delay-ms); GET /fail -> 500;
GET /chain -> calls the downstream's /work (200, or 502 if that fails);
GET /chain/X -> the same with the downstream's /work/X; GET
/chain-own-state/X -> the same, the call carrying a `tracestate: app=own`
of its own; GET /chain-h2/X -> GETs the downstream's /work/X over HTTP/2
(cleartext, prior knowledge, Python `h2`); GET
/answer-then-call/X -> answers 200, then (on the same thread, the request
answered) GETs the downstream's /work/X; GET /chain-fail ->
calls the downstream's /fail and answers 500; GET /keepalive/X -> calls the
downstream's /work/X-0, /work/X-1 and /work/X-2 over one connection; GET
/opaque -> sends the downstream non-HTTP bytes over a raw TCP connection and
reads until it closes; POST /echo -> echoes the body.
Every request's headers go to --header-log as one JSON line. With
--tls-cert/--tls-key it serves HTTPS; an https:// --downstream is called
over TLS without verifying its certificate.
"""

import argparse
import http.client
import json
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARGS = None
LOG_LOCK = threading.Lock()


def connect_downstream():
    """An HTTP/1.1 connection to the downstream (HTTPS, unverified, for https://)."""
    url = urllib.parse.urlsplit(ARGS.downstream)
    if url.scheme == "https":
        unverified = ssl._create_unverified_context()
        return http.client.HTTPSConnection(url.hostname, url.port, timeout=10, context=unverified)
    return http.client.HTTPConnection(url.hostname, url.port, timeout=10)


def call_downstream(path, headers=()):
    """One HTTP/1.1 GET to the downstream; returns (status or None, body)."""
    conn = connect_downstream()
    try:
        conn.request("GET", path, headers={"User-Agent": f"clew-e2e-{ARGS.name}", **dict(headers)})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError as e:
        return None, str(e).encode()
    finally:
        conn.close()


def call_downstream_h2(path):
    """One GET to the downstream over cleartext HTTP/2 (its preface and
    SETTINGS in one send, the request's HEADERS in the next); returns the
    status or None."""
    import h2.config
    import h2.connection
    import h2.events

    url = urllib.parse.urlsplit(ARGS.downstream)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    try:
        with socket.create_connection((url.hostname, url.port), timeout=10) as s:
            conn.initiate_connection()
            s.sendall(conn.data_to_send())
            conn.send_headers(
                1,
                [
                    (":method", "GET"),
                    (":path", path),
                    (":scheme", "http"),
                    (":authority", f"{url.hostname}:{url.port}"),
                    ("user-agent", f"clew-e2e-{ARGS.name}"),
                ],
                end_stream=True,
            )
            s.sendall(conn.data_to_send())
            status = None
            while True:
                data = s.recv(65536)
                if not data:
                    return status
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        status = int(dict(ev.headers)[b":status"])
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        return status
                out = conn.data_to_send()
                if out:
                    s.sendall(out)
    except OSError:
        return None


def keepalive_downstream(paths):
    """HTTP/1.1 GETs to the downstream over one connection; True if all 200."""
    conn = connect_downstream()
    try:
        ok = True
        for path in paths:
            conn.request("GET", path, headers={"User-Agent": f"clew-e2e-{ARGS.name}"})
            resp = conn.getresponse()
            resp.read()
            ok = ok and resp.status == 200
        return ok
    except OSError:
        return False
    finally:
        conn.close()


def opaque_downstream():
    """Bytes no HTTP parser accepts (a TLS-like record header first) to the
    downstream over a raw TCP connection; returns what came back."""
    url = urllib.parse.urlsplit(ARGS.downstream)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x00\x20" + bytes(range(32)) + b"\r\n\r\n")
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except OSError:
            pass
        return got


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so that clients can keep the connection alive.
    protocol_version = "HTTP/1.1"

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def record_headers(self):
        if not ARGS.header_log:
            return
        line = json.dumps(
            {"method": self.command, "path": self.path, "headers": list(self.headers.items())}
        )
        with LOG_LOCK, open(ARGS.header_log, "a") as f:
            f.write(line + "\n")

    def do_GET(self):
        self.record_headers()
        path = urllib.parse.urlsplit(self.path).path
        if path == "/work" or path.startswith("/work/"):
            time.sleep(ARGS.work_delay_ms / 1000)
            self.reply(200, b"ok")
        elif path == "/fail":
            self.reply(500, b"failed on purpose")
        elif path == "/chain":
            status, body = call_downstream("/work")
            self.reply(200 if status == 200 else 502, body)
        elif path.startswith("/chain/"):
            status, body = call_downstream("/work/" + path[len("/chain/") :])
            self.reply(200 if status == 200 else 502, body)
        elif path.startswith("/chain-own-state/"):
            name = path[len("/chain-own-state/") :]
            status, body = call_downstream("/work/" + name, [("tracestate", "app=own")])
            self.reply(200 if status == 200 else 502, body)
        elif path.startswith("/chain-h2/"):
            status = call_downstream_h2("/work/" + path[len("/chain-h2/") :])
            self.reply(200 if status == 200 else 502, b"ok" if status == 200 else b"failed")
        elif path.startswith("/keepalive/"):
            name = path[len("/keepalive/") :]
            ok = keepalive_downstream([f"/work/{name}-{i}" for i in range(3)])
            self.reply(200 if ok else 502, b"ok" if ok else b"failed")
        elif path == "/opaque":
            got = opaque_downstream()
            self.reply(200, got[:64])
        elif path == "/chain-fail":
            _, body = call_downstream("/fail")
            self.reply(500, body)
        elif path.startswith("/answer-then-call/"):
            self.reply(200, b"answered")
            self.wfile.flush()
            call_downstream("/work/" + path[len("/answer-then-call/") :])
        else:
            self.reply(404, b"not found")

    def do_POST(self):
        self.record_headers()
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if urllib.parse.urlsplit(self.path).path == "/echo":
            self.reply(200, body)
        else:
            self.reply(404, b"not found")

    def log_message(self, fmt, *args):
        # Truncated: garbage "request lines" can be kilobytes long.
        sys.stderr.write(f"[{ARGS.name}] {self.address_string()} {(fmt % args)[:200]}\n")
        sys.stderr.flush()


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    p.add_argument("--name", default="service", help="only used in log lines")
    p.add_argument("--downstream", help="base URL for /chain and /chain-fail")
    p.add_argument("--header-log", help="file to append request headers to (JSON lines)")
    p.add_argument("--work-delay-ms", type=int, default=0, help="delay before answering /work")
    p.add_argument("--tls-cert", help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    ARGS = p.parse_args()
    server = ThreadingHTTPServer((ARGS.bind, ARGS.port), Handler)
    server.daemon_threads = True
    if ARGS.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(ARGS.tls_cert, ARGS.tls_key)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    print(f"[{ARGS.name}] listening on {ARGS.bind}:{ARGS.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
