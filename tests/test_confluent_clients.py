"""Direct producers with the stock Confluent client, unmodified: `SerializingProducer` +
`AvroSerializer` pointed at the ingress's `/schema-registry` write the ingest topic, the worker
applies what they wrote, and `AvroDeserializer` reads the same events back. Frames the worker
cannot use go to the dead letters, each with its own reason, and processing goes on."""

from __future__ import annotations

import asyncio
import uuid
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
from schemas.events import build_ingest_batch, encode_ingest_event, resource_key
from schemas.wire_format import frame
from tests.support import (CUSTOMER_SCHEMA, ServiceProcess, bearer, ingresses, partner_token, tenant_token,
                           unique, wait_terminal, wait_until)
from topics import service_topics
from topics.partitioning import partition_for


def _define_customer(base: str) -> str:
    response = httpx.post(f"{base}/partner/schema-definitions", headers=bearer(partner_token()), timeout=30,
                          json={"name": "Customer", "externalIdField": "id", "schema": CUSTOMER_SCHEMA})
    assert response.status_code == 200, response.text
    return response.json()["data"]["id"]


def _v2_messages(definition_id: str, records: list[dict[str, Any]], partitions: int) -> tuple[str, list]:
    """A batch of upserts as IngestMessage values, one per partition, each keyed by its first resource."""
    batch_id = str(uuid.uuid4())
    groups: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for index, record in enumerate(records):
        key = resource_key("partner-a", "tenant-1", definition_id, record["id"])
        groups.setdefault(partition_for(key, partitions), []).append((index, record))
    messages = []
    for group in groups.values():
        messages.append((resource_key("partner-a", "tenant-1", definition_id, group[0][1]["id"]).decode(), {
            "batchId": batch_id, "batchType": "PARTNER_RESOURCE_JSON_INGEST", "recordCount": len(records),
            "partnerId": "partner-a", "tenantId": "tenant-1", "schemaDefinitionId": definition_id,
            "schemaVersion": None, "ignoreUnknownFields": False, "dependencyWaitTimeout": 0, "cascade": False,
            "acceptedAt": 1_700_000_000_000,
            "operations": [{"recordIndex": i, "externalId": r["id"], "op": "upsert", "data": orjson.dumps(r).decode()}
                           for i, r in group]}))
    return batch_id, messages


def _v1_messages(definition_id: str, records: list[dict[str, Any]]) -> tuple[str, list]:
    """A batch as version-1 IngestEvent values, one per record."""
    batch_id = str(uuid.uuid4())
    return batch_id, [(resource_key("partner-a", "tenant-1", definition_id, r["id"]).decode(), {
        "eventId": f"{batch_id}:{i}", "batchId": batch_id, "recordIndex": i, "recordCount": len(records),
        "partnerId": "partner-a", "tenantId": "tenant-1", "schemaDefinitionId": definition_id, "schemaVersion": None,
        "externalId": r["id"], "onConflict": "upsert", "ignoreUnknownFields": False, "dependencyWaitTimeout": 0,
        "acceptedAt": 1_700_000_000_000, "data": orjson.dumps(r).decode()}) for i, r in enumerate(records)]


def test_a_stock_confluent_producer_writes_batches_the_worker_applies(settings: Settings, tmp_path: Path,
                                                                      worker: ServiceProcess) -> None:
    topic = service_topics(settings).ingest.name
    partitions = service_topics(settings).ingest.partitions
    with ingresses(settings, tmp_path, 1) as (base,):
        definition_id = _define_customer(base)
        registry = SchemaRegistryClient({"url": f"{base}/schema-registry"})
        # What a producer team does: take the published schemas from the registry.
        v2_schema = registry.get_latest_version(f"{topic}-value").schema.schema_str
        v1_schema = registry.get_version(f"{topic}-value", 1).schema.schema_str

        v2_records = [{"id": f"c{n}", "name": f"Customer {n}", "age": n} for n in range(60)]
        v2_batch, v2_values = _v2_messages(definition_id, v2_records, partitions)
        v1_records = [{"id": f"c{n}", "name": f"Renamed {n}", "tags": ["v1"]} for n in range(50, 70)]
        v1_batch, v1_values = _v1_messages(definition_id, v1_records)
        sent: list[tuple[str, dict[str, Any]]] = []
        for schema, values in ((v2_schema, v2_values), (v1_schema, v1_values)):
            # Stock settings, but for Kafka's Java partitioner (librdkafka's default hashes keys otherwise).
            producer = SerializingProducer({
                "bootstrap.servers": settings.bootstrap_servers, "enable.idempotence": True,
                "partitioner": "murmur2_random", "key.serializer": StringSerializer(),
                "value.serializer": AvroSerializer(registry, schema)})
            for key, value in values:
                producer.produce(topic, key=key, value=value)
            assert producer.flush(30) == 0
            sent += values

        headers = bearer(tenant_token())
        with httpx.Client(base_url=base, timeout=30) as client:
            data = wait_terminal(client, v2_batch, headers)
            assert (data["status"], data["progress"]["successfulRecords"]) == ("success", 60), data
            assert data["schemaName"] == "Customer"
            data = wait_terminal(client, v1_batch, headers)
            assert (data["status"], data["progress"]["successfulRecords"]) == ("success", 20), data
            merged = client.get("/api/resources/customer/c55", headers=headers).json()["data"]["result"]["data"]
            assert merged == {"id": "c55", "name": "Renamed 55", "age": 55, "tags": ["v1"]}
            untouched = client.get("/api/resources/customer/c3", headers=headers).json()["data"]["result"]["data"]
            assert untouched == {"id": "c3", "name": "Customer 3", "age": 3}

        # A stock consumer reads the same events back, schemas fetched by the ids in the frames.
        consumer = DeserializingConsumer({
            "bootstrap.servers": settings.bootstrap_servers, "group.id": unique("confluent-reader"),
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "key.deserializer": StringDeserializer(), "value.deserializer": AvroDeserializer(registry)})
        consumer.subscribe([topic])
        read: list[tuple[str, dict[str, Any]]] = []
        try:
            def all_read() -> bool:
                message = consumer.poll(0.5)
                if message is not None:
                    assert message.error() is None, message.error()
                    read.append((message.key(), message.value()))
                return len(read) >= len(sent)

            wait_until(all_read, 60, 0, what=f"{len(sent)} events read back", seen=lambda: f"{len(read)} read")
        finally:
            consumer.close()
        assert sorted(read, key=orjson.dumps) == sorted(sent, key=orjson.dumps)


def test_frames_the_worker_cannot_use_are_dead_letters_and_processing_goes_on(settings: Settings, tmp_path: Path,
                                                                              worker: ServiceProcess) -> None:
    topics = service_topics(settings)
    with ingresses(settings, tmp_path, 1) as (base,):
        definition_id = _define_customer(base)
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
