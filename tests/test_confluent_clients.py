"""Direct producers with the stock Confluent client, unmodified: `SerializingProducer` +
`AvroSerializer` pointed at the ingress's `/schema-registry` write the ingest topic, the worker
applies what they wrote, and `AvroDeserializer` reads the same events back. Frames the worker
cannot use go to the dead letters, each with its own reason, and processing goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from confluent_kafka import DeserializingConsumer, SerializingProducer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import StringDeserializer, StringSerializer

from processors.dead_letters import REASON, read_dead_letters
from reach.config import Settings
from schemas.events import build_ingest_batch, build_ingest_batch_v1, encode_ingest_event, message_values
from schemas.wire_format import frame
from tests.support import (
    ServiceProcess,
    bearer,
    committed_outcomes,
    define_customer_and_order,
    ingresses,
    tenant_token,
    unique,
    wait_terminal,
    wait_until,
)
from topics import service_topics
from topics.partitioning import partition_for


def test_a_stock_confluent_producer_with_its_default_partitioner_writes_batches_the_worker_applies_once(
        settings: Settings, tmp_path: Path,
                                                                      worker: ServiceProcess) -> None:
    topic = service_topics(settings).ingest.name
    partitions = service_topics(settings).ingest.partitions
    with ingresses(settings, tmp_path, 1) as (base,):
        definition_id = define_customer_and_order(base)["Customer"]
        registry = SchemaRegistryClient({"url": f"{base}/schema-registry"})
        # What a producer team does: take the published schemas from the registry.
        v2_schema = registry.get_latest_version(f"{topic}-value").schema.schema_str
        v1_schema = registry.get_version(f"{topic}-value", 1).schema.schema_str

        # A 60-record batch as IngestMessages, one per partition; then 20 records as IngestEvents,
        # twice, back to back: the second's names must win.
        v2_batch = build_ingest_batch("partner-a", "tenant-1", definition_id, [
            (f"c{n}", {"id": f"c{n}", "name": f"Customer {n}", "age": n}) for n in range(60)], partitions=partitions)
        v1_batches = [build_ingest_batch_v1("partner-a", "tenant-1", definition_id, [
            (f"c{n}", {"id": f"c{n}", "name": f"{word} {n}", "tags": [word]}) for n in range(50, 70)])
            for word in ("Renamed", "Final")]
        sent: list[tuple[str, dict[str, Any]]] = []
        placed: list[tuple[str, int]] = []  # (key, partition) of each delivered message
        headers = bearer(tenant_token())

        def delivered(error: Any, message: Any) -> None:
            assert error is None, error
            placed.append((message.key().decode(), message.partition()))

        with httpx.Client(base_url=base, timeout=30) as client:
            for schema, batches in ((v2_schema, [v2_batch]), (v1_schema, v1_batches)):
                # The client's defaults: librdkafka's partitioner (consistent_random, CRC32 of
                # the key) places most messages elsewhere than Kafka's Java client would.
                producer = SerializingProducer({
                    "bootstrap.servers": settings.bootstrap_servers, "key.serializer": StringSerializer(),
                    "value.serializer": AvroSerializer(registry, schema)})
                for batch in batches:
                    values = [(key.decode(), value) for key, value, _ in message_values(batch)]
                    for key, value in values:
                        producer.produce(topic, key=key, value=value, on_delivery=delivered)
                    sent += values
                assert producer.flush(30) == 0
                for batch in batches:
                    data = wait_terminal(client, batch.batch_id, headers)
                    assert (data["status"], data["progress"]["successfulRecords"]) == \
                        ("success", len(batch.messages) if batch is not v2_batch else 60), data
                    assert data["schemaName"] == "Customer"
            merged = client.get("/api/resources/customer/c55", headers=headers).json()["data"]["result"]["data"]
            assert merged == {"id": "c55", "name": "Final 55", "age": 55, "tags": ["Final"]}
            untouched = client.get("/api/resources/customer/c3", headers=headers).json()["data"]["result"]["data"]
            assert untouched == {"id": "c3", "name": "Customer 3", "age": 3}
        misplaced = [(k, p) for k, p in placed if p != partition_for(k.encode(), partitions)]
        assert misplaced, f"every message landed on its murmur2 partition; the test proves nothing: {placed}"
        outcomes = asyncio.run(committed_outcomes(settings))
        for batch in (v2_batch, *v1_batches):
            total = 60 if batch is v2_batch else 20
            assert [outcomes[(batch.batch_id, i)] for i in range(total)] == [1] * total, batch.batch_id

        # A stock consumer reads the same events back, schemas fetched by the ids in the frames:
        # exactly what was produced (the workers' copies of misplaced ones are on another topic).
        consumer = DeserializingConsumer({
            "bootstrap.servers": settings.bootstrap_servers, "group.id": unique("confluent-reader"),
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "key.deserializer": StringDeserializer(), "value.deserializer": AvroDeserializer(registry)})
        consumer.subscribe([topic])
        read: list[tuple[Any, Any]] = []  # (key, value) as the deserializers give them
        try:
            def all_read() -> bool:
                message = consumer.poll(0.5)
                if message is not None:
                    assert message.error() is None, message.error()
                    read.append((message.key(), message.value()))
                return len(read) >= len(sent)

            wait_until(all_read, 60, 0, what=f"{len(sent)} events read back", seen=lambda: f"{len(read)} read")
            extra = consumer.poll(1.0)
            assert extra is None, f"more on the ingest topic than was produced: {extra.headers()}"
        finally:
            consumer.close()
        assert sorted(read, key=orjson.dumps) == sorted(sent, key=orjson.dumps)


def test_frames_the_worker_cannot_use_are_dead_letters_and_processing_goes_on(settings: Settings, tmp_path: Path,
                                                                              worker: ServiceProcess) -> None:
    topics = service_topics(settings)
    with ingresses(settings, tmp_path, 1) as (base,):
        definition_id = define_customer_and_order(base)["Customer"]
        good = build_ingest_batch("partner-a", "tenant-1", definition_id, [("g1", {"id": "g1", "name": "Good"})])
        key, body, _ = good.messages[0]
        v1_body = encode_ingest_event({
            "eventId": "x:0", "batchId": "x", "recordIndex": 0, "recordCount": 1, "partnerId": "partner-a",
            "tenantId": "tenant-1", "schemaDefinitionId": definition_id, "schemaVersion": None, "externalId": "g1",
            "onConflict": "upsert", "ignoreUnknownFields": False, "dependencyWaitTimeout": 0, "acceptedAt": 1,
            "data": "{}"})
        bad = [
            b"\x00\x00\x00",                      # truncated: no whole schema id
            b"\x01" + frame(2, body)[1:],         # wrong magic byte, no reach-event-version header
            frame(9, body),                       # a schema id that does not resolve
            frame(2, v1_body),                    # a body that is not of its schema
            frame(2, body[:-4]),                  # a body cut short
        ]

        async def produce() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True)
            await producer.start()
            try:
                for value in [*bad, frame(2, body)]:  # the good one last, behind the bad ones
                    await producer.send_and_wait(topics.ingest.name, value, key=key)
            finally:
                await producer.stop()

        asyncio.run(produce())
        with httpx.Client(base_url=base, timeout=30) as client:
            data = wait_terminal(client, good.batch_id, bearer(tenant_token()))
        assert (data["status"], data["progress"]["successfulRecords"]) == ("success", 1), data

        def five() -> list | None:
            letters = asyncio.run(read_dead_letters(settings.bootstrap_servers, topics.dead_letters.name))
            return letters if len(letters) >= 5 else None

        letters = wait_until(five, 30, what="five dead letters")
        assert [letter.value for letter in letters] == bad
        reasons = [letter.header(REASON) for letter in letters]
        assert reasons[0].startswith("truncated Confluent frame: 3 bytes"), reasons
        assert "first byte 0x01 is not the Confluent wire format's magic byte 0x00" in reasons[1], reasons
        assert reasons[2].startswith("unknown schema id 9"), reasons
        assert reasons[3].startswith("not an IngestMessage v2 (in a Confluent frame of schema id 2)"), reasons
        assert reasons[4].startswith("not an IngestMessage v2 (in a Confluent frame of schema id 2)"), reasons
        assert len(set(reasons)) == 5, reasons
