"""Test peer: GETs every path listed in --paths (one per line, optionally
followed by a space and a traceparent to send with it) against
127.0.0.1:--port over --connections kept-alive HTTP/1.1 connections at once
(stdlib only), and prints how many answers each status got, as JSON.
Exits non-zero if a request fails without an answer.
"""

import argparse
import collections
import http.client
import json
import sys
import threading


def run(port, paths, counts, lock, errors):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for line in paths:
        path, _, traceparent = line.partition(" ")
        headers = {"User-Agent": "clew-e2e-routes"}
        if traceparent:
            headers["traceparent"] = traceparent
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
        except OSError as e:
            with lock:
                errors.append(f"GET {path}: {e}")
            return
        with lock:
            counts[resp.status] += 1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--paths", required=True)
    p.add_argument("--connections", type=int, default=4)
    args = p.parse_args()
    with open(args.paths) as f:
        paths = [line.rstrip("\n") for line in f if line.strip()]
    counts, lock, errors = collections.Counter(), threading.Lock(), []
    shares = [paths[i :: args.connections] for i in range(args.connections)]
    threads = [
        threading.Thread(target=run, args=(args.port, share, counts, lock, errors))
        for share in shares
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({str(k): v for k, v in counts.items()}))
    if errors:
        sys.exit("\n".join(errors[:10]))


if __name__ == "__main__":
    main()
