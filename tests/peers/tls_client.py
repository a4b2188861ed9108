"""Test peer: one kept-alive HTTPS connection (Python's ssl, so OpenSSL)
making a fixed sequence of requests; prints one JSON line per answer.

usage: tls_client.py HOST PORT
Sequence: GET /work x5, POST /echo with bodies of 10 B, 100 KiB and 1 MiB,
GET /fail, GET /work.
"""

import http.client
import json
import ssl
import sys


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    conn = http.client.HTTPSConnection(
        host, port, timeout=20, context=ssl._create_unverified_context()
    )
    plan = [("GET", "/work", b"")] * 5
    plan += [("POST", "/echo", bytes(i % 251 for i in range(n))) for n in (10, 100 << 10, 1 << 20)]
    plan += [("GET", "/fail", b""), ("GET", "/work", b"")]
    for method, path, body in plan:
        conn.request(method, path, body=body or None, headers={"User-Agent": "clew-e2e-tls-client"})
        resp = conn.getresponse()
        got = resp.read()
        if method == "POST" and got != body:
            sys.exit(f"{path}: echoed body differs ({len(got)} bytes back for {len(body)})")
        print(json.dumps({"method": method, "path": path, "status": resp.status, "bytes": len(got)}))
    conn.close()


if __name__ == "__main__":
    main()
