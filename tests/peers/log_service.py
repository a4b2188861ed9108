"""Test peer: a threaded HTTP/1.1 service (stdlib only) that logs with the
`logging` module while it serves requests, one thread per request.

GET /log/ID?n=N -> logs N lines "req ID line I" (levels cycling WARNING,
ERROR, INFO, DEBUG, CRITICAL), a few milliseconds apart, through logger
`app`: to stderr in logging's default format (`WARNING:app:req ID line
I`), to --app-log as `LEVEL req ID line I`, and to --json-log as a JSON
object per line (`{"level": "warning", "msg": "req ID line I"}`); prints
`stdout req ID` on stdout (in one write); writes `other req ID` to --other-log through
logger `other`; then answers 200.
GET /huge/ID -> logs one ERROR line of --huge-bytes bytes (`huge ID xxx…`)
to stderr and --app-log, then answers 200.
A background thread logs `outside tick K` (K = 0, 1, …) through `app`
every 20 ms while no request is being served by it, from the start.
The access log is off: every line written is one of the above.
"""

import argparse
import json
import logging
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARGS = None
LEVELS = [logging.WARNING, logging.ERROR, logging.INFO, logging.DEBUG, logging.CRITICAL]


class JsonFormatter(logging.Formatter):
    def format(self, record):
        return json.dumps({"level": record.levelname.lower(), "msg": record.getMessage()})


def handler(stream_or_path, fmt):
    h = logging.StreamHandler(stream_or_path) if not isinstance(stream_or_path, str) else logging.FileHandler(stream_or_path)
    h.setFormatter(fmt)
    return h


def setup():
    app = logging.getLogger("app")
    app.setLevel(logging.DEBUG)
    app.propagate = False
    app.addHandler(handler(sys.stderr, logging.Formatter(logging.BASIC_FORMAT)))
    app.addHandler(handler(ARGS.app_log, logging.Formatter("%(levelname)s %(message)s")))
    app.addHandler(handler(ARGS.json_log, JsonFormatter()))
    other = logging.getLogger("other")
    other.setLevel(logging.DEBUG)
    other.propagate = False
    other.addHandler(handler(ARGS.other_log, logging.Formatter("%(message)s")))
    huge = logging.getLogger("huge")
    huge.setLevel(logging.DEBUG)
    huge.propagate = False
    huge.addHandler(handler(sys.stderr, logging.Formatter(logging.BASIC_FORMAT)))
    huge.addHandler(handler(ARGS.app_log, logging.Formatter("%(levelname)s %(message)s")))
    return app, other, huge


def ticker(app):
    k = 0
    while True:
        app.info("outside tick %d", k)
        k += 1
        time.sleep(0.02)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path.startswith("/log/"):
            rid = url.path[len("/log/") :]
            for i in range(int(query.get("n", ["5"])[0])):
                APP.log(LEVELS[i % len(LEVELS)], "req %s line %d", rid, i)
                time.sleep(0.002)
            # One write per line: print() writes the text and its line
            # end apart, which other threads' lines can come between.
            sys.stdout.write(f"stdout req {rid}\n")
            OTHER.info("other req %s", rid)
            self.reply(b"logged")
        elif url.path.startswith("/huge/"):
            rid = url.path[len("/huge/") :]
            prefix = f"huge {rid} "
            HUGE.error(prefix + "x" * (ARGS.huge_bytes - len(prefix)))
            self.reply(b"logged")
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, fmt, *args):
        pass


def main():
    global ARGS, APP, OTHER, HUGE
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--app-log", required=True)
    p.add_argument("--json-log", required=True)
    p.add_argument("--other-log", required=True)
    p.add_argument("--huge-bytes", type=int, default=100000)
    ARGS = p.parse_args()
    APP, OTHER, HUGE = setup()
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    server.daemon_threads = True
    threading.Thread(target=ticker, args=(APP,), daemon=True).start()
    print(f"listening on 127.0.0.1:{ARGS.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
