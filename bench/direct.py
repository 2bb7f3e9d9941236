"""Batches written straight to the ingest topic, as direct producers write them (`make bench`):
by our own encoder, by the stock Confluent producer, and with every message on another
partition than its owner's (handed on, `processors.hand_on`)."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.stack import (
    Stack,
    cpu_seconds,
    record,
    wait_all_terminal,
)
from schemas.events import build_ingest_batch, message_values
from topics import service_topics
from topics.partitioning import partition_for


def ingest_batches(stack: Stack, batches: int, tag: str) -> list[Any]:
    """The ingest messages the ingress would write for `batches` uploads of 1000 customers."""
    return [build_ingest_batch("bench", "tenant-1", stack.definition_id,
                               [(r["id"], r) for r in (record(i, f"{tag}{b}") for i in range(1000))],
                               partitions=stack.settings.topic_partitions) for b in range(batches)]


def produce_with_confluent(stack: Stack, batches: int, tag: str, partitioner: str | None = None) -> list[str]:
    """Write `batches` batches of 1000 customers to the ingest topic as a direct producer with the
    stock Confluent client and its default settings does: `IngestMessage` values, one per partition
    of each batch, framed by
    `AvroSerializer` with the schema it fetched from `/schema-registry`; their batch ids."""
    from confluent_kafka import SerializingProducer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import StringSerializer

    topic = service_topics(stack.settings).ingest.name
    registry = SchemaRegistryClient({"url": f"{stack.base}/schema-registry"})
    # `partitioner` None: librdkafka's default (consistent_random), which puts most messages
    # elsewhere than their owner partition; the worker hands them on (`processors.hand_on`).
    producer = SerializingProducer({
        "bootstrap.servers": stack.settings.bootstrap_servers,
        "enable.idempotence": True, "linger.ms": 5, "key.serializer": StringSerializer(),
        "value.serializer": AvroSerializer(registry, registry.get_latest_version(f"{topic}-value").schema.schema_str),
        **({"partitioner": partitioner} if partitioner else {})})
    ids = []
    for batch in ingest_batches(stack, batches, tag):
        ids.append(batch.batch_id)
        for key, value, _ in message_values(batch):
            producer.produce(topic, key=key.decode(), value=value)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("the Confluent producer did not deliver everything in 120 s")
    return ids


async def produce_shifted(stack: Stack, batches: list[Any], shift: int) -> None:
    """Write the messages of `batches` straight to the ingest topic, each on the partition
    `shift` after its owner (0: where the ingress would put it)."""
    from aiokafka import AIOKafkaProducer

    topic = service_topics(stack.settings).ingest
    producer = AIOKafkaProducer(bootstrap_servers=stack.settings.bootstrap_servers, enable_idempotence=True,
                                acks="all", linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        for batch in batches:
            for key, value, headers in batch.messages:
                await producer.send(topic.name, value, key=key, headers=headers,
                                    partition=(partition_for(key, topic.partitions) + shift) % topic.partitions)
        await producer.flush()
    finally:
        await producer.stop()


async def measure_hand_on(stack: Stack, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The worker's CPU per record for direct batches on their owner partitions, and for the same
    kind of batches with every message on the next partition (each operation handed on, then
    applied on its owner): alternately, twice each."""
    runs: dict[str, list[dict[str, float]]] = {"own_partition": [], "handed_on": []}
    for attempt in range(2):
        for name, shift in (("own_partition", 0), ("handed_on", 1)):
            batches = ingest_batches(stack, args.direct_batches, f"handon{attempt}{shift}-")
            worker_cpu, started = cpu_seconds(stack.worker.proc.pid), time.monotonic()
            await produce_shifted(stack, batches, shift)
            finished = await wait_all_terminal(stack, [b.batch_id for b in batches])
            records = len(batches) * 1000
            worker_us = (cpu_seconds(stack.worker.proc.pid) - worker_cpu) / records * 1e6
            runs[name].append({"records_per_s": records / (finished - started), "worker_us_per_record": worker_us})
    results["hand_on"] = {name: {"records_per_s": statistics.median(r["records_per_s"] for r in found),
                                 "worker_us_per_record": statistics.median(r["worker_us_per_record"] for r in found),
                                 "runs": found} for name, found in runs.items()}
    own, moved = results["hand_on"]["own_partition"], results["hand_on"]["handed_on"]
    print(f"direct batches on their own partitions: {own['records_per_s']:,.0f} rec/s, worker "
          f"{own['worker_us_per_record']:.1f} µs/record; every message on another partition (handed on): "
          f"{moved['records_per_s']:,.0f} rec/s, worker {moved['worker_us_per_record']:.1f} µs/record", flush=True)
