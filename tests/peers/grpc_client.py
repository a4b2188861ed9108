"""Test peer: drives calls of grpc_service.py's `clew.test.Echo` over one channel.

usage: grpc_client.py TARGET [--ca PEM] run STEP...
       grpc_client.py TARGET [--ca PEM] session     (steps read from stdin)
Steps (all on the one channel unless said otherwise):
  unary              Unary, expects OK
  status:N           Unary asking for status code N
  server-stream      ServerStream, reads every message
  client-stream:K    ClientStream with K messages (default 3)
  bidi:K             Bidi with K messages (default 3), reads every echo
  chain              Chain (the service calls its downstream)
  concurrent:N       N Unary calls in flight at once on the channel
  sentinel           Sentinel on a NEW channel (a fresh connection)
Every step prints one JSON line {"step", "codes": [int, ...], "messages"}
with the status code of each of its calls. A session also answers "ping"
(no call) so that the test knows the channel exists. With --ca the channel
uses TLS, trusting that PEM.
"""

import argparse
import json
import sys
import grpc

SERVICE = "clew.test.Echo"


class Client:
    def __init__(self, target, ca):
        self.target = target
        self.ca = ca
        self.channel = self.open()

    def open(self, own_connection=False):
        # Channels to one target share a process-wide subchannel (and so a
        # TCP connection) unless told otherwise.
        options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
        if self.ca:
            with open(self.ca, "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
            return grpc.secure_channel(self.target, creds, options=options)
        return grpc.insecure_channel(self.target, options=options)

    def method(self, channel, kind, name):
        return getattr(channel, kind)(f"/{SERVICE}/{name}")

    def call(self, fn, *args):
        """Runs one call; returns (status code value, messages received)."""
        try:
            out = fn(*args, timeout=30)
            if isinstance(out, bytes):
                return 0, 1
            return 0, sum(1 for _ in out)
        except grpc.RpcError as e:
            return e.code().value[0], 0

    def step(self, step):
        name, _, arg = step.partition(":")
        ch = self.channel
        if name == "ping":
            return [], 0
        if name == "unary":
            code, n = self.call(self.method(ch, "unary_unary", "Unary"), b"hello")
        elif name == "status":
            code, n = self.call(self.method(ch, "unary_unary", "Unary"), f"status:{int(arg)}".encode())
        elif name == "server-stream":
            code, n = self.call(self.method(ch, "unary_stream", "ServerStream"), b"go")
        elif name == "client-stream":
            k = int(arg or 3)
            code, n = self.call(self.method(ch, "stream_unary", "ClientStream"), iter([b"m"] * k))
        elif name == "bidi":
            k = int(arg or 3)
            code, n = self.call(self.method(ch, "stream_stream", "Bidi"), iter([b"m%d" % i for i in range(k)]))
        elif name == "chain":
            code, n = self.call(self.method(ch, "unary_unary", "Chain"), b"chain")
        elif name == "concurrent":
            fn = self.method(ch, "unary_unary", "Unary")
            calls = [fn.future(b"sleep:300", timeout=60) for _ in range(int(arg))]
            # grpc's futures are not concurrent.futures: code() blocks until done.
            codes = [c.code().value[0] for c in calls]
            return codes, sum(1 for c in codes if c == 0)
        elif name == "sentinel":
            fresh = self.open(own_connection=True)
            try:
                code, n = self.call(self.method(fresh, "unary_unary", "Sentinel"), b"sentinel")
            finally:
                fresh.close()
        else:
            raise SystemExit(f"unknown step {step!r}")
        return [code], n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("--ca")
    p.add_argument("mode", choices=["run", "session"])
    p.add_argument("steps", nargs="*")
    args = p.parse_args()
    client = Client(args.target, args.ca)
    steps = args.steps if args.mode == "run" else (l.strip() for l in sys.stdin)
    for step in steps:
        if not step:
            continue
        codes, n = client.step(step)
        print(json.dumps({"step": step, "codes": codes, "messages": n}), flush=True)
    client.channel.close()


if __name__ == "__main__":
    main()
