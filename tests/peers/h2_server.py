"""Untraced HTTP/2 witness (Python `h2`): records every request's header
list exactly as its HPACK decoder produced it, one JSON line per request,
and every connection error (a decoding or protocol error ends the
connection with GOAWAY, as a real server would)."""

import argparse
import json
import socket
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions

lock = threading.Lock()


def record(out, obj):
    with lock:
        out.write(json.dumps(obj) + "\n")
        out.flush()


def serve(sock, peer, out):
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            try:
                events = conn.receive_data(data)
            except Exception as e:  # HPACK or protocol error: GOAWAY, as h2 would
                record(out, {"error": f"{type(e).__name__}: {e}", "peer": peer[1]})
                try:
                    conn.close_connection(error_code=1)
                    sock.sendall(conn.data_to_send())
                except Exception:
                    pass
                break
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    hs = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in ev.headers]
                    record(out, {"peer": peer[1], "stream": ev.stream_id, "headers": hs})
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    conn.send_headers(ev.stream_id, [(b":status", b"200"), (b"content-length", b"2")])
                    conn.send_data(ev.stream_id, b"ok", end_stream=True)
                elif isinstance(ev, h2.events.ConnectionTerminated) and ev.error_code != 0:
                    record(out, {"error": f"client GOAWAY {ev.error_code}", "peer": peer[1]})
            sock.sendall(conn.data_to_send())
    except OSError:
        pass
    finally:
        sock.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--record", required=True)
    args = ap.parse_args()
    out = open(args.record, "w")
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", args.port))
    ls.listen(128)
    print("listening", flush=True)
    while True:
        s, peer = ls.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(s, peer, out), daemon=True).start()


if __name__ == "__main__":
    main()
