"""Test peer: a raw TCP server (stdlib only) that records every byte it receives.

It must stay untraced: it is the witness of what went over the wire. For
each connection it appends one JSON line to --record when the client closes
its sending side: {"peer": "ip:port", "data": hex of all bytes received,
"answered": responses sent}.

Requests are framed by Content-Length: each complete request is answered
with RESPONSE (below) as soon as its body has arrived. As soon as the bytes
at a request boundary are not a request it can frame (not an upper-case
method token, chunked, an unparseable Content-Length), it stops answering
and only records until EOF. After EOF it closes the connection, so a client
that shut down its side and reads until EOF never waits forever.
"""

import argparse
import json
import re
import socket
import sys
import threading

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
REQUEST_LINE = re.compile(rb"[A-Z]+ [^ \r\n]+ HTTP/1\.[01]\r\n")
RECORD_LOCK = threading.Lock()
ARGS = None


def frame(buf, pos):
    """Where the request at `pos` ends: an offset, None (incomplete) or -1 (not frameable)."""
    first = buf[pos : pos + 1]
    if first and not (b"A" <= first <= b"Z"):
        return -1
    end = buf.find(b"\r\n\r\n", pos)
    if end < 0:
        return None
    head = bytes(buf[pos : end + 4])
    if not REQUEST_LINE.match(head):
        return -1
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name.startswith(b"transfer"):
            return -1
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit():
                return -1
            length = int(value)
    stop = end + 4 + length
    return stop if len(buf) >= stop else None


def serve(conn, peer):
    buf = bytearray()
    pos = 0
    answered = 0
    framing = True
    try:
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            buf += data
            while framing:
                stop = frame(buf, pos)
                if stop is None:
                    break
                if stop < 0:
                    framing = False
                    break
                pos = stop
                conn.sendall(RESPONSE)
                answered += 1
    except OSError as e:
        print(f"[recording] {peer}: {e}", file=sys.stderr, flush=True)
    record = {"peer": f"{peer[0]}:{peer[1]}", "data": buf.hex(), "answered": answered}
    with RECORD_LOCK, open(ARGS.record, "a") as f:
        f.write(json.dumps(record) + "\n")
    conn.close()


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--record", required=True, help="file to append one JSON line per connection to")
    ARGS = p.parse_args()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((ARGS.bind, ARGS.port))
    lsock.listen(512)
    print(f"[recording] listening on {ARGS.bind}:{ARGS.port}", file=sys.stderr, flush=True)
    while True:
        conn, peer = lsock.accept()
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()


if __name__ == "__main__":
    main()
