"""Test peer: a gRPC service (grpcio, generic handlers: no protoc, no codegen).

Service `clew.test.Echo`, messages are raw bytes:
  Unary          echoes the request; a request `status:N` ends the call with
                 status code N (e.g. `status:13` -> INTERNAL), `sleep:MS`
                 holds the answer MS milliseconds first.
  ServerStream   answers --stream-len messages.
  ClientStream   reads every message, answers their count.
  Bidi           echoes every message as it arrives.
  Chain          calls the --downstream service's Unary once (one channel,
                 opened at start-up) and answers its reply; UNAVAILABLE if
                 that call fails.
  Sentinel       echoes (tests use it as a marker call).
Every call's invocation metadata (traceparent included) goes to
--metadata-log as one JSON line: {"method": ..., "metadata": [[k, v], ...]}.
With --tls-cert/--tls-key it serves TLS; --downstream-ca makes the
downstream call over TLS, trusting that certificate.
"""

import argparse
import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "clew.test.Echo"
ARGS = None
LOG_LOCK = threading.Lock()
DOWNSTREAM = None


def log_call(method, context):
    if not ARGS.metadata_log:
        return
    md = [[k, v if isinstance(v, str) else v.hex()] for k, v in context.invocation_metadata()]
    with LOG_LOCK, open(ARGS.metadata_log, "a") as f:
        f.write(json.dumps({"method": method, "metadata": md}) + "\n")


def unary(request, context):
    log_call("Unary", context)
    if ARGS.work_delay_ms:
        time.sleep(ARGS.work_delay_ms / 1000)
    if request.startswith(b"sleep:"):
        time.sleep(int(request[6:]) / 1000)
    if request.startswith(b"status:"):
        code = int(request[7:])
        status = next(s for s in grpc.StatusCode if s.value[0] == code)
        context.abort(status, f"asked for status {code}")
    return request


def server_stream(request, context):
    log_call("ServerStream", context)
    for i in range(ARGS.stream_len):
        yield b"item-%d" % i


def client_stream(request_iterator, context):
    log_call("ClientStream", context)
    n = sum(1 for _ in request_iterator)
    return str(n).encode()


def bidi(request_iterator, context):
    log_call("Bidi", context)
    for msg in request_iterator:
        yield msg


def chain(request, context):
    log_call("Chain", context)
    try:
        return DOWNSTREAM(request, timeout=20)
    except grpc.RpcError as e:
        context.abort(grpc.StatusCode.UNAVAILABLE, f"downstream: {e.code()}")


def sentinel(request, context):
    log_call("Sentinel", context)
    return request


def main():
    global ARGS, DOWNSTREAM
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--name", default="grpc-service")
    p.add_argument("--downstream", help="HOST:PORT of the service Chain calls")
    p.add_argument("--downstream-ca", help="call the downstream over TLS, trusting this PEM")
    p.add_argument("--metadata-log")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--work-delay-ms", type=int, default=0)
    p.add_argument("--stream-len", type=int, default=5)
    ARGS = p.parse_args()

    if ARGS.downstream:
        if ARGS.downstream_ca:
            with open(ARGS.downstream_ca, "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
            channel = grpc.secure_channel(ARGS.downstream, creds)
        else:
            channel = grpc.insecure_channel(ARGS.downstream)
        DOWNSTREAM = channel.unary_unary(f"/{SERVICE}/Unary")

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Chain": grpc.unary_unary_rpc_method_handler(chain),
        "Sentinel": grpc.unary_unary_rpc_method_handler(sentinel),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=ARGS.workers),
        # Enough for the tests' concurrent calls on one channel.
        options=[("grpc.max_concurrent_streams", 200)],
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    addr = f"{ARGS.bind}:{ARGS.port}"
    if ARGS.tls_cert:
        with open(ARGS.tls_key, "rb") as k, open(ARGS.tls_cert, "rb") as c:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        server.add_secure_port(addr, creds)
    else:
        server.add_insecure_port(addr)
    server.start()
    print(f"[{ARGS.name}] gRPC on {addr}{' (TLS)' if ARGS.tls_cert else ''}", file=sys.stderr, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
