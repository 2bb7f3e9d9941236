"""The baselines the benchmark measures the service against, on the same broker in the same run.

- `producer_performance`: Kafka's own `ProducerPerformance` (the Java client, from the
  `kafka-tools` jar on Maven Central, fetched by `bench/pom.xml`): what the broker accepts from
  the strongest client, records of the same size with the same acks (all, idempotent);
- `send_batch_producer`: aiokafka at its fastest, each record its own Kafka message, built into
  one record batch per partition (`create_batch`/`send_batch`), as our ingress builds its own;
- `bare_merge_loop`: a consumer that decodes the ingest events and merges them into a dict —
  the least any worker must do per record, without state on disk or transactions;
- `bare_exactly_once_loop`: the least an exactly-once worker with state on disk must do per
  record in Python: decode, read and merge against RocksDB, write each resource's new state as
  its own message (the resources topic is keyed per resource), and commit outputs, state and
  input offsets in one Kafka transaction every 100 ms — no checks, statuses or references.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rocksdict import Options, Rdict, WriteBatch

from processors.merge import merge_patch
from reach.broker import KAFKA_VERSION, fetch_jars
from reach.config import PROJECT_ROOT
from schemas.events import IngestBatch, decode_ingest_message, resource_key
from topics.partitioning import partition_for
from topics.record_batches import send_batches

TOOLS_POM = PROJECT_ROOT / "bench" / "pom.xml"
TOOLS_LIBS = PROJECT_ROOT / ".cache" / f"kafka-tools-{KAFKA_VERSION}" / "libs"


def fetch_tools(libs: Path = TOOLS_LIBS) -> Path:
    """Copy Kafka's tools and their dependencies from Maven Central unless already there."""
    return fetch_jars(libs, TOOLS_POM)


def producer_performance(bootstrap: str, topic: str, records: int, record_size: int) -> float:
    """Records/s that Kafka's ProducerPerformance sends to `topic` (acks=all, idempotent)."""
    command = ["java", "-Xmx512m", "-cp", f"{fetch_tools()}/*", "org.apache.kafka.tools.ProducerPerformance",
               "--topic", topic, "--num-records", str(records), "--record-size", str(record_size),
               "--throughput", "-1", "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all",
               "enable.idempotence=true", "linger.ms=2", "batch.size=524288"]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600).stdout
    # Its last line: "N records sent, X records/sec (Y MB/sec), ... avg latency, ..."
    found = re.findall(r"records sent, ([\d.]+) records/sec", out)
    if not found:
        raise RuntimeError(f"ProducerPerformance printed no summary:\n{out[-2000:]}")
    return float(found[-1])


async def send_batch_producer(bootstrap: str, topic: str, batches: list[IngestBatch], concurrency: int) -> float:
    """Seconds for aiokafka to send every batch's messages, `concurrency` batches at a time,
    each batch as one record batch per partition, waiting for all acks (all, idempotent)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2,
                                max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024)
    await producer.start()
    partitions = len(await producer.partitions_for(topic))
    queue: asyncio.Queue[IngestBatch] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    async def sender() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            by_partition: dict[int, list[Any]] = {}
            for message in batch.messages:
                by_partition.setdefault(partition_for(message[0], partitions), []).append(message)
            delivered: list[Any] = []
            for partition, messages in by_partition.items():
                delivered.extend(future for future, _ in await send_batches(producer, topic, partition, messages))
            await asyncio.gather(*delivered)

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await producer.stop()
    return elapsed


async def bare_merge_loop(bootstrap: str, topic: str, expected: int) -> float:
    """Seconds for a bare consumer to decode and merge `expected` records of `topic` into a dict."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"bare-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", isolation_level="read_committed",
                                max_poll_records=5000)
    await consumer.start()
    state: dict[bytes, Any] = {}
    seen = 0
    started = time.perf_counter()
    while seen < expected:
        for messages in (await consumer.getmany(timeout_ms=1000)).values():
            for message in messages:
                for event in decode_ingest_message(message.value, message.headers):
                    key = resource_key(event["partnerId"], event["tenantId"], event["schemaDefinitionId"],
                                       event["externalId"])
                    data = event["data"]
                    assert data is not None, "the baselines merge uploads only"
                    state[key] = merge_patch(state.get(key), orjson.loads(data))
                    seen += 1
    elapsed = time.perf_counter() - started
    await consumer.stop()
    return elapsed


async def bare_exactly_once_loop(bootstrap: str, topic: str, output: str, expected: int, path: Path) -> float:
    """Seconds for a bare exactly-once loop (see the module's docstring) to apply `expected`
    records of `topic`, writing their states to `output` (as many partitions) and to RocksDB at `path`."""
    group = f"bare-eos-{uuid.uuid4().hex[:6]}"
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                                isolation_level="read_committed", enable_auto_commit=False, max_poll_records=5000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=group, enable_idempotence=True,
                                linger_ms=2, max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024)
    await consumer.start()
    await producer.start()
    db = Rdict(str(path), Options(raw_mode=True))
    seen = 0
    offsets: dict[Any, int] = {}
    started = time.perf_counter()
    await producer.begin_transaction()
    opened = time.perf_counter()
    while seen < expected:
        fetched = await consumer.getmany(timeout_ms=1000)
        for tp, messages in fetched.items():
            writes, outputs = WriteBatch(raw_mode=True), list[tuple[bytes, bytes, list[Any]]]()
            for message in messages:
                for event in decode_ingest_message(message.value, message.headers):
                    key = resource_key(event["partnerId"], event["tenantId"], event["schemaDefinitionId"],
                                       event["externalId"])
                    old, data = db.get(key), event["data"]
                    assert data is not None, "the baselines merge uploads only"
                    state = orjson.dumps(merge_patch(orjson.loads(old) if old is not None else None,
                                                     orjson.loads(data)))
                    writes.put(key, state)
                    outputs.append((key, state, []))
                    seen += 1
            db.write(writes)
            await send_batches(producer, output, tp.partition, outputs)
            offsets[tp] = messages[-1].offset + 1
        if offsets and (time.perf_counter() - opened >= 0.1 or seen >= expected):
            await producer.send_offsets_to_transaction(offsets, group)
            offsets = {}
            await producer.commit_transaction()
            await producer.begin_transaction()
            opened = time.perf_counter()
    elapsed = time.perf_counter() - started
    await producer.abort_transaction()
    await producer.stop()
    await consumer.stop()
    db.close()
    return elapsed
