"""Test peer: a Python asyncio HTTP/1.1 frontend for the nesting tests (stdlib only).

usage: asyncio_frontend.py PORT DOWNSTREAM_PORT
GET /chain/N waits N*7 mod 20 milliseconds, then GETs /work/N from
127.0.0.1:DOWNSTREAM_PORT on a new connection and answers 200 once that
answered 200 (502 otherwise). One event loop on one thread serves every
request.
"""

import asyncio
import sys


async def read_head(reader):
    """The request or status line and headers; (first line, content length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for h in lines[1:]:
        k, _, v = h.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    return lines[0], length


async def downstream(port, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "User-Agent: clew-e2e-frontend\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        status, length = await read_head(reader)
        body = await reader.readexactly(length)
        return int(status.split()[1]), body
    finally:
        writer.close()


async def serve(reader, writer, down_port):
    try:
        while True:
            try:
                line, _ = await read_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            n = line.split()[1][len("/chain/") :]
            await asyncio.sleep(int(n) * 7 % 20 / 1000)
            status, body = await downstream(down_port, f"/work/{n}")
            code = b"200 OK" if status == 200 else b"502 Bad Gateway"
            writer.write(b"HTTP/1.1 " + code + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
    finally:
        writer.close()


async def main():
    port, down_port = int(sys.argv[1]), int(sys.argv[2])
    server = await asyncio.start_server(lambda r, w: serve(r, w, down_port), "127.0.0.1", port)
    print(f"listening on {port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
