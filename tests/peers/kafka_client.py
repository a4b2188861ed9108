"""Kafka producer and consumer peers for the end-to-end tests.

    kafka_client.py create-topic --bootstrap H:P --topic T --partitions N
    kafka_client.py produce --bootstrap H:P --topic T --library L [--partition P]
        [--compression C] [--traceparent TP] [--header K=V ...] [--acks A]
        [--pause-file F] VALUE...
    kafka_client.py consume --bootstrap H:P --topic T --group G --library L
        --count N [--downstream URL]
    kafka_client.py produce-records --bootstrap H:P --topic T --library L
        --spec FILE [--compression C]

`produce` sends each VALUE as one record, waits for each acknowledgement
and prints one JSON line per record: {"partition", "offset"}. With
`--pause-file` (kafka-python), it prints {"paused": true} before the last
record and waits until F exists.
`produce-records` sends the records FILE lists (a JSON array of
{"partition", "key", "value" (hex, or null), "headers" ([key, hex value]
pairs)}) all at once, so that the client batches them (several records per
batch, several partitions per request), then prints one acknowledgement
line per record, in FILE's order.
`consume` prints one JSON line per record received: partition, offset,
key and value (hex), headers ([key, hex value] pairs, in order); with
`--downstream` it GETs URL?offset=O for each record before polling again,
as a service handling a message would.

L is `kafka-python` (pure Python: polls and processes on one thread) or
`confluent` (librdkafka: fetches on its own threads).
"""

import argparse
import json
import os
import sys
import time
import urllib.request


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def record_line(partition, offset, key, value, headers):
    return json.dumps(
        {
            "partition": partition,
            "offset": offset,
            "key": key.hex() if key is not None else None,
            "value": value.hex() if value is not None else None,
            "headers": [[k, (v or b"").hex()] for k, v in (headers or [])],
        }
    )


def create_topic(args):
    from kafka.admin import KafkaAdminClient, NewTopic

    deadline = time.time() + 30
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, client_id="clew-admin")
            admin.create_topics(
                [NewTopic(name=args.topic, num_partitions=args.partitions, replication_factor=1)]
            )
            admin.close()
            return
        except Exception as e:  # the broker may still be starting
            if time.time() > deadline:
                raise
            log(f"create-topic: {e!r}, retrying")
            time.sleep(0.5)


def headers_of(args):
    headers = [tuple(h.split("=", 1)) for h in args.header]
    headers = [(k, v.encode()) for k, v in headers]
    if args.traceparent:
        headers.append(("traceparent", args.traceparent.encode()))
    return headers


def pause(path):
    """Says so on stdout, then waits until `path` exists (the test acts on
    the broker meanwhile)."""
    print(json.dumps({"paused": True}), flush=True)
    while not os.path.exists(path):
        time.sleep(0.05)


def produce_load(args):
    """`--count` records of `--size` bytes, each sent once the one before
    was acknowledged (kafka-python), so the load lasts a while."""
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=args.bootstrap, client_id="clew-producer", linger_ms=0)
    value = b"v" * args.size
    for _ in range(args.count):
        md = p.send(args.topic, value=value).get(timeout=30)
        print(json.dumps({"partition": md.partition, "offset": md.offset}), flush=True)
    p.close()


def produce(args):
    headers = headers_of(args)
    values = [v.encode() for v in args.values]
    if args.library == "kafka-python":
        from kafka import KafkaProducer

        p = KafkaProducer(
            bootstrap_servers=args.bootstrap,
            client_id="clew-producer",
            acks=args.acks,
            compression_type=args.compression,
            linger_ms=0,
        )
        for i, v in enumerate(values):
            if args.pause_file and i == len(values) - 1:
                pause(args.pause_file)
            md = p.send(args.topic, value=v, headers=headers, partition=args.partition).get(
                timeout=30
            )
            print(json.dumps({"partition": md.partition, "offset": md.offset}), flush=True)
        p.close()
    else:
        from confluent_kafka import Producer

        conf = {
            "bootstrap.servers": args.bootstrap,
            "client.id": "clew-producer",
            "acks": str(args.acks),
            "linger.ms": 0,
        }
        if args.compression:
            conf["compression.type"] = args.compression
        p = Producer(conf)
        for v in values:
            done = []
            kw = {"partition": args.partition} if args.partition is not None else {}
            p.produce(
                args.topic,
                value=v,
                headers=headers,
                on_delivery=lambda err, msg: done.append((err, msg)),
                **kw,
            )
            p.flush(30)
            err, msg = done[0]
            if err is not None:
                raise RuntimeError(f"delivery failed: {err}")
            print(json.dumps({"partition": msg.partition(), "offset": msg.offset()}), flush=True)


def produce_records(args):
    with open(args.spec) as f:
        spec = json.load(f)
    unhex = lambda v: bytes.fromhex(v) if v is not None else None
    records = [
        (r["partition"], unhex(r["key"]), unhex(r["value"]), [(k, bytes.fromhex(v)) for k, v in r["headers"]])
        for r in spec
    ]
    acks = [None] * len(records)
    if args.library == "kafka-python":
        from kafka import KafkaProducer

        p = KafkaProducer(
            bootstrap_servers=args.bootstrap,
            client_id="clew-producer",
            compression_type=args.compression,
            linger_ms=200,
            batch_size=1 << 20,
            max_request_size=1 << 20,
        )
        futures = [p.send(args.topic, key=k, value=v, headers=h, partition=part) for part, k, v, h in records]
        p.flush(30)
        for i, f in enumerate(futures):
            md = f.get(timeout=30)
            acks[i] = (md.partition, md.offset)
        p.close()
    else:
        from confluent_kafka import Producer

        conf = {
            "bootstrap.servers": args.bootstrap,
            "client.id": "clew-producer",
            "linger.ms": 200,
            "batch.size": 1 << 20,
        }
        if args.compression:
            conf["compression.type"] = args.compression
        p = Producer(conf)

        def acked(i):
            def cb(err, msg):
                if err is not None:
                    raise RuntimeError(f"delivery failed: {err}")
                acks[i] = (msg.partition(), msg.offset())

            return cb

        for i, (part, k, v, h) in enumerate(records):
            p.produce(args.topic, key=k, value=v, headers=h, partition=part, on_delivery=acked(i))
        p.flush(30)
    for a in acks:
        if a is None:
            raise RuntimeError("a record was not acknowledged")
        print(json.dumps({"partition": a[0], "offset": a[1]}), flush=True)


def call_downstream(url, offset):
    with urllib.request.urlopen(f"{url}?offset={offset}", timeout=10) as r:
        r.read()


def consume(args):
    got = 0
    deadline = time.time() + 60
    if args.library == "kafka-python":
        from kafka import KafkaConsumer

        c = KafkaConsumer(
            args.topic,
            bootstrap_servers=args.bootstrap,
            group_id=args.group,
            client_id="clew-consumer",
            auto_offset_reset="earliest",
            check_crcs=True,
            max_poll_records=1,
        )
        while got < args.count and time.time() < deadline:
            for _tp, records in c.poll(timeout_ms=1000).items():
                for r in records:
                    if args.downstream:
                        call_downstream(args.downstream, r.offset)
                    print(record_line(r.partition, r.offset, r.key, r.value, r.headers), flush=True)
                    got += 1
        c.close()
    else:
        from confluent_kafka import Consumer

        c = Consumer(
            {
                "bootstrap.servers": args.bootstrap,
                "group.id": args.group,
                "client.id": "clew-consumer",
                "auto.offset.reset": "earliest",
                "check.crcs": True,
            }
        )
        c.subscribe([args.topic])
        while got < args.count and time.time() < deadline:
            m = c.poll(1.0)
            if m is None:
                continue
            if m.error():
                log(f"consume: {m.error()}")
                continue
            if args.downstream:
                call_downstream(args.downstream, m.offset())
            print(record_line(m.partition(), m.offset(), m.key(), m.value(), m.headers()), flush=True)
            got += 1
        c.close()
    if got < args.count:
        log(f"consume: {got} of {args.count} records before the deadline")
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("create-topic", "produce", "consume", "produce-records", "produce-load"):
        s = sub.add_parser(name)
        s.add_argument("--bootstrap", required=True)
        s.add_argument("--topic", required=True)
        if name == "create-topic":
            s.add_argument("--partitions", type=int, default=1)
        else:
            s.add_argument("--library", choices=["kafka-python", "confluent"], required=True)
        if name == "produce":
            s.add_argument("--partition", type=int)
            s.add_argument("--compression")
            s.add_argument("--traceparent")
            s.add_argument("--header", action="append", default=[])
            s.add_argument("--acks", type=int, default=1)
            # kafka-python only: before the last value, print {"paused": true}
            # and wait until this file exists.
            s.add_argument("--pause-file")
            s.add_argument("values", nargs="+")
        if name == "produce-records":
            s.add_argument("--spec", required=True)
            s.add_argument("--compression")
        if name == "produce-load":
            s.add_argument("--count", type=int, required=True)
            s.add_argument("--size", type=int, required=True)
        if name == "consume":
            s.add_argument("--group", required=True)
            s.add_argument("--count", type=int, required=True)
            s.add_argument("--downstream")
    args = ap.parse_args()
    {
        "create-topic": create_topic,
        "produce": produce,
        "consume": consume,
        "produce-records": produce_records,
        "produce-load": produce_load,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
