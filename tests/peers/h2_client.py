"""HTTP/2 client (Python `h2`, its own HPACK encoder: Huffman, incremental
indexing, evictions) for the kernel injection test. Opens --conns
connections one after another on --threads threads and sends --requests
requests on each, in batches of 1-4 streams per send (HEADERS, DATA and
WINDOW_UPDATE frames share sends), with varied headers (some HEADERS with
the PRIORITY flag). Writes every
request it sent (its local port, stream id, header list) as JSON lines
and exits non-zero if any request failed or the server ended a
connection with an error.

Connection kinds (index % 5): 0-1 `plain`; 2 `own-never-indexed`, where
every 5th request carries its own traceparent as a never-indexed literal;
3 `own-indexed`, where request 7 carries one with incremental indexing;
4 `continuation`, where request 3 has a 40000-byte header, so its block
goes on in a CONTINUATION frame."""

import argparse
import json
import random
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events
from hpack import HeaderTuple, NeverIndexedHeaderTuple

lock = threading.Lock()
failures = []


def own_tp(rng):
    return "00-%032x-%016x-01" % (rng.getrandbits(128) | 1, rng.getrandbits(64) | 1)


def headers_for(rng, kind, conn, i, port):
    method = rng.choice(["GET", "GET", "POST"])
    hs = [
        (":method", method),
        (":scheme", "http"),
        (":authority", "127.0.0.1:%d" % port),
        (":path", "/c%d/r%d?x=%d" % (conn, i, rng.randrange(1000))),
        ("user-agent", "h2-inject-test/1"),
        ("x-request-id", "%d-%d-%x" % (conn, i, rng.getrandbits(32))),
    ]
    if rng.random() < 0.3:
        hs.append(("accept", rng.choice(["*/*", "application/json", "text/plain"])))
    if rng.random() < 0.15:
        # Long values fill the 4 KiB dynamic table and evict older entries.
        hs.append(("x-long-%d" % rng.randrange(4), "v" * rng.randrange(200, 2500)))
    if rng.random() < 0.1:
        hs.append(("x-trace-note", "traceparent-like but not it"))
    tuples = [HeaderTuple(n, v) for n, v in hs]
    if kind == "own-never-indexed" and i % 5 == 0:
        tuples.insert(rng.randrange(4, len(tuples) + 1), NeverIndexedHeaderTuple("traceparent", own_tp(rng)))
    if kind == "own-indexed" and i == 7:
        tuples.append(HeaderTuple("traceparent", own_tp(rng)))
    if kind == "continuation" and i == 3:
        tuples.append(NeverIndexedHeaderTuple("x-huge", "%x" % rng.getrandbits(160000)))
    return method, tuples


def run_conn(args, conn_index, out, rng):
    kind = ["plain", "plain", "own-never-indexed", "own-indexed", "continuation"][conn_index % 5]
    s = socket.create_connection(("127.0.0.1", args.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    local_port = s.getsockname()[1]
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    sent = []
    i = 0
    while i < args.requests:
        batch = min(rng.randint(1, 4), args.requests - i)
        open_streams = set()
        for _ in range(batch):
            method, hs = headers_for(rng, kind, conn_index, i, args.port)
            sid = conn.get_next_available_stream_id()
            post = method == "POST"
            # Some HEADERS frames carry the PRIORITY fields before the block.
            weight = rng.randint(1, 256) if rng.random() < 0.1 else None
            conn.send_headers(sid, hs, end_stream=not post, priority_weight=weight)
            if post:
                conn.send_data(sid, b"body-%d" % i, end_stream=True)
            sent.append({"port": local_port, "stream": sid, "kind": kind, "i": i,
                         "headers": [[str(n), str(v)] for n, v in hs]})
            open_streams.add(sid)
            i += 1
        s.sendall(conn.data_to_send())
        while open_streams:
            data = s.recv(65536)
            if not data:
                raise RuntimeError("server closed the connection with %d streams open" % len(open_streams))
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers).get(b":status")
                    if status != b"200":
                        raise RuntimeError("stream %d: status %r" % (ev.stream_id, status))
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    open_streams.discard(ev.stream_id)
                elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise RuntimeError("server ended stream/connection: %r" % ev)
            pending = conn.data_to_send()
            if pending:
                s.sendall(pending)
    conn.close_connection()
    s.sendall(conn.data_to_send())
    s.close()
    with lock:
        for r in sent:
            out.write(json.dumps(r) + "\n")


def worker(args, indices, out):
    for c in indices:
        try:
            run_conn(args, c, out, random.Random(args.seed * 1000003 + c))
        except Exception as e:
            with lock:
                failures.append("connection %d: %s: %s" % (c, type(e).__name__, e))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = open(args.out, "w")
    threads = [threading.Thread(target=worker, args=(args, range(t, args.conns, args.threads), out))
               for t in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()
    for f in failures:
        print(f, file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
