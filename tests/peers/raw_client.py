"""Test peer: HTTP/1 clients that stress connection handling (stdlib only).

Subcommands: keepalive (many requests on one connection), pipeline (several
requests in one write), split (headers and body in many small writes),
segments (pipelined requests in one sendmsg of many iovec segments),
garbage (non-HTTP bytes and a TLS ClientHello), session (one keep-alive
connection, a request per path read from stdin), concurrent (many clients at
once). Each exits non-zero when the server's answers are not what the test
expects.
"""

import argparse
import http.client
import random
import socket
import struct
import sys
import threading
import time

UA = "clew-e2e-raw"


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    # Each send() becomes its own segment, so "split" really splits.
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_responses(sock, count):
    """Reads `count` responses with Content-Length bodies; returns [(status, body)]."""
    buf = b""
    out = []
    while len(out) < count:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buf[:head_end].decode("latin-1").split("\r\n")
            length = 0
            for h in head[1:]:
                k, _, v = h.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
            if len(buf) >= head_end + 4 + length:
                body = buf[head_end + 4 : head_end + 4 + length]
                out.append((int(head[0].split()[1]), body))
                buf = buf[head_end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit(f"connection closed after {len(out)} of {count} responses")
        buf += chunk
    return out


def request(method, path, port, extra=""):
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {UA}\r\n{extra}\r\n"


def keepalive(args):
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
    first = None
    for i in range(args.count):
        conn.request("GET", f"{args.prefix}{i}", headers={"User-Agent": UA})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            sys.exit(f"request {i}: status {resp.status}")
        first = first or conn.sock
        if conn.sock is not first:
            sys.exit(f"request {i} used a new connection")
    conn.close()
    print(f"{args.count} requests on one connection")


def pipeline(args):
    last = len(args.paths) - 1
    reqs = "".join(
        request("GET", p, args.port, "Connection: close\r\n" if i == last else "")
        for i, p in enumerate(args.paths)
    )
    with connect(args.port) as s:
        s.sendall(reqs.encode())
        statuses = [status for status, _ in read_responses(s, len(args.paths))]
    print(" ".join(map(str, statuses)))


def split(args):
    rng = random.Random(7)
    body = bytes(rng.choice(b"abcdefghij") for _ in range(args.body_len))
    head = request("POST", args.path, args.port, f"Content-Length: {len(body)}\r\n").encode()
    cut = len(head) // 2
    n = len(body)
    pieces = [head[:cut], head[cut:]] + [body[i * n // 5 : (i + 1) * n // 5] for i in range(5)]
    with connect(args.port) as s:
        for piece in pieces:
            s.sendall(piece)
            time.sleep(0.05)
        [(status, echoed)] = read_responses(s, 1)
    if status != 200 or echoed != body:
        sys.exit(f"status {status}, echoed {len(echoed)} of {len(body)} bytes correctly: {echoed == body}")
    print(status)


def segments(args):
    """POST /echo with a body longer than the agent's capture limit, then GET
    --paths, all pipelined in one sendmsg: the POST's head cut into 7-byte
    segments, its body one segment, each GET head one more."""
    rng = random.Random(11)
    body = bytes(rng.choice(b"klmnopqrst") for _ in range(args.body_len))
    head = request("POST", "/echo", args.port, f"Content-Length: {len(body)}\r\n").encode()
    last = len(args.paths) - 1
    gets = [
        request("GET", p, args.port, "Connection: close\r\n" if i == last else "").encode()
        for i, p in enumerate(args.paths)
    ]
    iov = [head[i : i + 7] for i in range(0, len(head), 7)] + [body] + gets
    with connect(args.port) as s:
        sent = s.sendmsg(iov)
        if sent != sum(map(len, iov)):
            sys.exit(f"sendmsg sent {sent} of {sum(map(len, iov))} bytes")
        answers = read_responses(s, 1 + len(gets))
    if answers[0] != (200, body):
        sys.exit(f"POST /echo: status {answers[0][0]}, body echoed: {answers[0][1] == body}")
    print(" ".join(str(status) for status, _ in answers[1:]))


def client_hello():
    """A TLS 1.2 ClientHello record (random, one cipher suite, an SNI extension)."""
    sni = b"example.test"
    ext_sni = struct.pack("!HHHBH", 0, len(sni) + 5, len(sni) + 3, 0, len(sni)) + sni
    hello = (
        b"\x03\x03" + bytes(range(32)) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
        + struct.pack("!H", len(ext_sni)) + ext_sni
    )
    handshake = b"\x01" + struct.pack("!I", len(hello))[1:] + hello
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def garbage(args):
    rng = random.Random(42)
    blobs = [bytes(rng.randrange(256) for _ in range(4096)), client_hello()]
    for blob in blobs:
        with connect(args.port) as s:
            s.sendall(blob)
            s.shutdown(socket.SHUT_WR)
            # Whatever the server answers, if anything, until it closes.
            try:
                while s.recv(65536):
                    pass
            except (ConnectionResetError, socket.timeout):
                pass
    print(f"sent {len(blobs)} garbage blobs")


def session(args):
    """One request per stdin line (a path) on one keep-alive connection; prints each status."""
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
    first = None
    for line in sys.stdin:
        path = line.strip()
        if not path:
            continue
        conn.request("GET", path, headers={"User-Agent": UA})
        resp = conn.getresponse()
        resp.read()
        first = first or conn.sock
        if conn.sock is not first:
            sys.exit(f"{path} used a new connection")
        print(resp.status, flush=True)
    conn.close()


def concurrent(args):
    """GET {prefix}0 .. {prefix}{count-1} from --clients threads at once, a connection each."""
    start = threading.Barrier(args.clients)
    failures = []

    def client(k):
        start.wait()
        for i in range(k, args.count, args.clients):
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
            try:
                conn.request("GET", f"{args.prefix}{i}", headers={"User-Agent": UA})
                resp = conn.getresponse()
                resp.read()
                if resp.status != args.status:
                    failures.append(f"{args.prefix}{i}: status {resp.status}")
            except OSError as e:
                failures.append(f"{args.prefix}{i}: {e}")
            finally:
                conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit(f"{len(failures)} of {args.count} requests failed: {failures[:10]}")
    print(f"{args.count} requests from {args.clients} concurrent clients")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keepalive")
    k.add_argument("--count", type=int, default=100)
    k.add_argument("--prefix", default="/work/ka-")
    pl = sub.add_parser("pipeline")
    pl.add_argument("--paths", nargs="+", required=True)
    sp = sub.add_parser("split")
    sp.add_argument("--path", default="/echo")
    sp.add_argument("--body-len", type=int, default=1000)
    sg = sub.add_parser("segments")
    sg.add_argument("--body-len", type=int, default=6000)
    sg.add_argument("--paths", nargs="+", required=True)
    sub.add_parser("garbage")
    sub.add_parser("session")
    c = sub.add_parser("concurrent")
    c.add_argument("--prefix", required=True)
    c.add_argument("--count", type=int, default=200)
    c.add_argument("--clients", type=int, default=8)
    c.add_argument("--status", type=int, default=200, help="status every answer must have")
    for s in (k, pl, sp, sg, c, sub.choices["garbage"], sub.choices["session"]):
        s.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    commands = {
        "keepalive": keepalive,
        "pipeline": pipeline,
        "split": split,
        "segments": segments,
        "garbage": garbage,
        "session": session,
        "concurrent": concurrent,
    }
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
