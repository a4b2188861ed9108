"""Test peer: a Kubernetes API server for pods, as much of it as Clew's pod
cache uses (stdlib only).

HTTPS on --port with --cert/--key; every request needs the bearer token in
--token-file (401 otherwise). GET /api/v1/pods lists the pods of one node
and must carry fieldSelector=spec.nodeName=<--node> (400 otherwise, so a
client that forgets it fails loudly); with watch=true it streams events
after resourceVersion as chunked newline-delimited JSON until
timeoutSeconds, with BOOKMARK events when asked for; a resourceVersion
older than the retained history gets an ERROR event with a 410 Status, as
a real server's expired watch does.

A plain-HTTP control port (--control-port, loopback) drives it:
POST /pods (a Pod object: added or modified, with an event),
POST /pods?silent=1 (changed without any event, as if the event was lost),
DELETE /pods/<uid>, POST /expire (every open watch gets a 410 ERROR event
and the history is dropped, so resuming fails and the client must list
again), GET /stats (requests seen, as JSON).
"""

import argparse
import json
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Condition()
STATE = {
    "rv": 100,
    "pods": {},  # uid -> pod object
    "history": [],  # (rv, type, pod)
    "oldest": 100,  # watches from before this version are expired
    "expire_epoch": 0,
}
STATS = {"lists": 0, "watches": 0, "gone_sent": 0, "unauthorized": 0, "bad_selector": 0}
ARGS = None


def bump(pod):
    STATE["rv"] += 1
    pod.setdefault("metadata", {})["resourceVersion"] = str(STATE["rv"])
    return STATE["rv"]


def status(code, reason, message):
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        print("api:", fmt % args, flush=True)

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with open(ARGS.token_file) as f:
            token = f.read().strip()
        if self.headers.get("Authorization") != f"Bearer {token}":
            STATS["unauthorized"] += 1
            return self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/api/v1/pods":
            return self.send_json(404, status(404, "NotFound", f"no {url.path}"))
        q = urllib.parse.parse_qs(url.query)
        if q.get("fieldSelector") != [f"spec.nodeName={ARGS.node}"]:
            STATS["bad_selector"] += 1
            return self.send_json(
                400, status(400, "BadRequest", "test server: fieldSelector=spec.nodeName required")
            )
        if q.get("watch") == ["true"]:
            return self.watch(q)
        with LOCK:
            STATS["lists"] += 1
            items = [p for p in STATE["pods"].values() if p["spec"].get("nodeName") == ARGS.node]
            body = {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(STATE["rv"])},
                "items": items,
            }
        self.send_json(200, body)

    def chunk(self, obj):
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def watch(self, q):
        since = int(q.get("resourceVersion", ["0"])[0] or 0)
        timeout = int(q.get("timeoutSeconds", ["300"])[0])
        bookmarks = q.get("allowWatchBookmarks") == ["true"]
        deadline = time.monotonic() + timeout
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with LOCK:
            STATS["watches"] += 1
            epoch = STATE["expire_epoch"]
            expired = since < STATE["oldest"]
        try:
            if expired:
                STATS["gone_sent"] += 1
                self.chunk({"type": "ERROR", "object": status(410, "Expired", f"too old resource version: {since}")})
                return
            last_bookmark = time.monotonic()
            while time.monotonic() < deadline:
                with LOCK:
                    if STATE["expire_epoch"] != epoch:
                        STATS["gone_sent"] += 1
                        gone = status(410, "Expired", f"too old resource version: {since}")
                        self.chunk({"type": "ERROR", "object": gone})
                        return
                    pending = [(rv, t, p) for rv, t, p in STATE["history"] if rv > since]
                    if not pending:
                        LOCK.wait(0.2)
                        pending = [(rv, t, p) for rv, t, p in STATE["history"] if rv > since]
                    current = STATE["rv"]
                for rv, kind, pod in pending:
                    if pod["spec"].get("nodeName") == ARGS.node:
                        self.chunk({"type": kind, "object": pod})
                    since = rv
                if bookmarks and time.monotonic() - last_bookmark > 5:
                    self.chunk(
                        {
                            "type": "BOOKMARK",
                            "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(current)}},
                        }
                    )
                    since = max(since, current)
                    last_bookmark = time.monotonic()
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass
            self.close_connection = True


class Control(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        print("control:", fmt % args, flush=True)

    def reply(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with LOCK:
            self.reply(dict(STATS, pods=len(STATE["pods"]), rv=STATE["rv"]))

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        with LOCK:
            if url.path == "/pods":
                pod = json.loads(body)
                uid = pod["metadata"]["uid"]
                kind = "MODIFIED" if uid in STATE["pods"] else "ADDED"
                rv = bump(pod)
                STATE["pods"][uid] = pod
                if urllib.parse.parse_qs(url.query).get("silent") != ["1"]:
                    STATE["history"].append((rv, kind, pod))
            elif url.path == "/expire":
                # Compacted: only a list at the current version can resume.
                STATE["history"].clear()
                STATE["oldest"] = STATE["rv"]
                STATE["expire_epoch"] += 1
            else:
                return self.send_error(404)
            LOCK.notify_all()
            self.reply({"rv": STATE["rv"]})

    def do_DELETE(self):
        uid = self.path.rsplit("/", 1)[-1]
        with LOCK:
            pod = STATE["pods"].pop(uid, None)
            if pod is None:
                return self.send_error(404)
            rv = bump(pod)
            STATE["history"].append((rv, "DELETED", pod))
            LOCK.notify_all()
            self.reply({"rv": rv})


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control-port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--node", required=True)
    ARGS = p.parse_args()
    api = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Api)
    api.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ARGS.cert, ARGS.key)
    api.socket = ctx.wrap_socket(api.socket, server_side=True)
    control = ThreadingHTTPServer(("127.0.0.1", ARGS.control_port), Control)
    control.daemon_threads = True
    threading.Thread(target=control.serve_forever, daemon=True).start()
    print(f"fake API server on {ARGS.port}, control on {ARGS.control_port}", flush=True)
    api.serve_forever()


if __name__ == "__main__":
    main()
