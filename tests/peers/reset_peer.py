"""Test peer: ends HTTP/1 exchanges with a TCP reset instead of a response (stdlib only).

server --port P: reads each request head, then resets the connection.
client --port P --path X: sends one GET, waits --wait-ms, then resets.
"""

import argparse
import socket
import struct
import threading
import time


def reset(sock):
    # Linger on with a zero timeout: close() sends RST, not FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_head(sock):
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk


def serve(port):
    listener = socket.create_server(("127.0.0.1", port))
    print(f"listening on {port}", flush=True)
    while True:
        conn, _ = listener.accept()

        def handle(c=conn):
            read_head(c)
            reset(c)

        threading.Thread(target=handle, daemon=True).start()


def client(port, path, wait_ms):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    time.sleep(wait_ms / 1000)
    reset(s)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--wait-ms", type=int, default=300)
    a = p.parse_args()
    if a.mode == "server":
        serve(a.port)
    else:
        client(a.port, a.path, a.wait_ms)


if __name__ == "__main__":
    main()
