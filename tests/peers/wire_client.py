"""Test peer: replays a plan of raw socket writes, one send() per planned send (stdlib only).

The plan (--plan) has one JSON line per connection:
  {"id": N, "steps": [["send", "<hex>"], ["await", K], ...]}
"send" is exactly one send() system call with exactly those bytes (a partial
send is an error: the test's expectations depend on where sends begin and
end); "await" reads K responses (RESPONSE, below) before going on. After its
steps a connection shuts its sending side down and reads until the server
closes; whatever arrives then must be whole RESPONSEs.

For every connection, once connected, one JSON line goes to --out:
  {"id": N, "local_port": P, "cookie": C}  (C is the socket cookie, SO_COOKIE)
With --hold FILE, each connection waits after its steps until FILE exists,
so a test can look at the open connections.

The socket stays blocking (a socket with a timeout is non-blocking inside
Python, and could split a send into several system calls); reads use select
with a timeout so that a silent server fails the client instead of hanging it.
"""

import argparse
import json
import os
import queue
import select
import socket
import struct
import sys
import threading
import time

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
SO_COOKIE = getattr(socket, "SO_COOKIE", 57)
READ_TIMEOUT = 20
OUT_LOCK = threading.Lock()


class Failure(Exception):
    pass


def recv(sock):
    ready, _, _ = select.select([sock], [], [], READ_TIMEOUT)
    if not ready:
        raise Failure(f"no bytes from the server within {READ_TIMEOUT} s")
    return sock.recv(1 << 16)


def run_conn(conn, args, out):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.connect((args.host, args.port))
    cookie = struct.unpack("<Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
    with OUT_LOCK:
        out.write(json.dumps({"id": conn["id"], "local_port": sock.getsockname()[1], "cookie": cookie}) + "\n")
        out.flush()
    pending = b""
    try:
        for kind, arg in conn["steps"]:
            if kind == "send":
                data = bytes.fromhex(arg)
                n = sock.send(data)
                if n != len(data):
                    raise Failure(f"partial send: {n} of {len(data)} bytes")
            elif kind == "await":
                want = arg * len(RESPONSE)
                while len(pending) < want:
                    chunk = recv(sock)
                    if not chunk:
                        raise Failure(f"server closed while {arg} responses were awaited")
                    pending += chunk
                if pending[:want] != RESPONSE * arg:
                    raise Failure(f"unexpected response bytes {pending[:want]!r}")
                pending = pending[want:]
            else:
                raise Failure(f"unknown step {kind}")
        if args.hold:
            while not os.path.exists(args.hold):
                time.sleep(0.02)
        sock.shutdown(socket.SHUT_WR)
        while True:
            chunk = recv(sock)
            if not chunk:
                break
            pending += chunk
        if len(pending) % len(RESPONSE) or pending != RESPONSE * (len(pending) // len(RESPONSE)):
            raise Failure(f"unexpected bytes after the last step: {pending[:200]!r}")
    finally:
        sock.close()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--plan", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--hold", help="wait for this file to exist before closing each connection")
    args = p.parse_args()
    conns = queue.Queue()
    count = 0
    with open(args.plan) as f:
        for line in f:
            if line.strip():
                conns.put(json.loads(line))
                count += 1
    failures = []

    def worker(out):
        while True:
            try:
                conn = conns.get_nowait()
            except queue.Empty:
                return
            try:
                run_conn(conn, args, out)
            except (Failure, OSError) as e:
                failures.append(f"connection {conn['id']}: {e}")

    with open(args.out, "w") as out:
        threads = [threading.Thread(target=worker, args=(out,)) for _ in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if failures:
        sys.exit(f"{len(failures)} of {count} connections failed:\n" + "\n".join(failures[:20]))
    print(f"{count} connections replayed")


if __name__ == "__main__":
    main()
