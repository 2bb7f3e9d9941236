"""Producers writing straight to the ingest topic get the same checks as HTTP uploads, and the
worker never stops on a bad message: what it cannot use goes to the dead-letter topic."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any, cast

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from starlette.testclient import TestClient

from processors.dead_letters import OFFSET, PARTITION, REASON, TOPIC, read_dead_letters
from processors.hand_on import HANDED_ON_HEADER
from reach.config import Settings
from schemas.events import (
    INGEST_HEADERS,
    IngestBatch,
    build_ingest_batch,
    build_ingest_batch_v1,
    encode_ingest_message,
    resource_key,
)
from tests.support import (
    ServiceProcess,
    bearer,
    committed_outcomes,
    partner_token,
    produce_placed,
    settings_env,
    tenant_token,
    wait_terminal,
    wait_until,
    worker_get,
)
from topics import service_topics
from topics.partitioning import partition_for

CUSTOMER = {
    "name": "Customer", "externalIdField": "id",
    "schema": {"type": "object", "required": ["id", "name"], "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "age": {"type": "integer"}}},
}


def _define(client: TestClient) -> str:
    response = client.post("/partner/schema-definitions", json=CUSTOMER, headers=bearer(partner_token()))
    assert response.status_code == 200, response.text
    return response.json()["data"]["id"]


async def _produce(settings: Settings, messages: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
                   partition: int | None = None, topic: str | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for key, value, headers in messages:
            await producer.send_and_wait(topic or service_topics(settings).ingest.name, value, key=key,
                                         headers=headers, partition=partition)
    finally:
        await producer.stop()


def _messages(batch: IngestBatch) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    return list(batch.messages)


def _batch(definition_id: str, records: list[dict[str, Any]], **options: Any) -> IngestBatch:
    return build_ingest_batch("partner-a", "tenant-1", definition_id, [(r["id"], r) for r in records], **options)


@pytest.mark.parametrize("build", [build_ingest_batch, build_ingest_batch_v1], ids=["version 2", "version 1"])
def test_a_direct_batch_is_processed_and_reported_like_an_upload(
        settings: Settings, ingress: TestClient, worker: ServiceProcess, build: Callable[..., IngestBatch]) -> None:
    definition_id = _define(ingress)
    records: list[dict[str, Any]] = [{"id": "d1", "name": "Dee"}, {"id": "d2", "name": "Dan", "age": 3}]
    batch = build("partner-a", "tenant-1", definition_id, [(r["id"], r) for r in records])
    asyncio.run(_produce(settings, _messages(batch)))
    headers = bearer(tenant_token())
    data = wait_terminal(ingress, batch.batch_id, headers)
    assert data["status"] == "success"
    assert data["progress"]["totalRecords"] == 2 and data["progress"]["successfulRecords"] == 2
    assert data["schemaName"] == "Customer"
    assert data["batchType"] == "PARTNER_RESOURCE_JSON_INGEST"
    resource = ingress.get("/api/resources/customer/d2", headers=headers).json()["data"]["result"]
    assert resource["data"] == {"id": "d2", "name": "Dan", "age": 3}


def test_one_message_of_many_operations_applies_them_in_order(settings: Settings, ingress: TestClient,
                                                              worker: ServiceProcess) -> None:
    """Version 2 lets one message carry a batch's operations on one partition, in order."""
    definition_id = _define(ingress)
    ops = [("m1", "upsert", {"id": "m1", "name": "First"}), ("m1", "patch", {"id": "m1", "age": 7}),
           ("m1", "reject", {"id": "m1", "name": "Again"}), ("m2", "patch", {"id": "m2", "age": 1}),
           ("m1", "upsert", {"id": "m1", "name": "Last"})]
    key = resource_key("partner-a", "tenant-1", definition_id, "m1")
    message: dict[str, Any] = {"batchId": "many-ops-" + definition_id, "batchType": "PARTNER_RESOURCE_JSON_INGEST",
               "recordCount": len(ops), "partnerId": "partner-a", "tenantId": "tenant-1",
               "schemaDefinitionId": definition_id, "schemaVersion": None, "ignoreUnknownFields": False,
               "dependencyWaitTimeout": 0, "cascade": False, "acceptedAt": 1,
               "operations": [{"recordIndex": i, "externalId": x, "op": op, "data": orjson.dumps(d).decode()}
                              for i, (x, op, d) in enumerate(ops)]}
    asyncio.run(_produce(settings, [(key, encode_ingest_message(message), list(INGEST_HEADERS))]))
    headers = bearer(tenant_token())
    data = wait_terminal(ingress, message["batchId"], headers)
    details = data["errors"]["details"]
    assert (data["progress"]["successfulRecords"], data["progress"]["failedRecords"]) == (3, 2), data
    assert details["2"]["code"] == "ALREADY_EXISTS", details
    # m2's patch applies on m2's partition (handed on there unless it is m1's): m2 does not exist.
    assert details["3"]["code"] == "NOT_FOUND", details
    resource = ingress.get("/api/resources/customer/m1", headers=headers).json()["data"]["result"]
    assert resource["data"] == {"id": "m1", "name": "Last", "age": 7}


def _handed_on(settings: Settings) -> float:
    """The worker's count of operations it handed on to their owner partitions."""
    text = worker_get(settings, "/metrics").text
    return float(re.search(r"^reach_handed_on_records_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def test_any_partitioner_works_each_record_applied_once_and_in_order_per_resource(
        settings: Settings, ingress: TestClient, worker: ServiceProcess) -> None:
    """Producers that place events elsewhere than Kafka's murmur2 would: round-robin, a message
    mixing partitions, and a deterministic partitioner of its own (here: the next partition)."""
    definition_id = _define(ingress)
    headers = bearer(tenant_token())
    partitions = service_topics(settings).ingest.partitions
    owner: dict[str, int] = {}

    def owner_of(external_id: str) -> int:
        return owner.setdefault(external_id, partition_for(resource_key("partner-a", "tenant-1", definition_id,
                                                                        external_id), partitions))

    # Uploads over HTTP are on their owner partitions already: nothing is handed on.
    response = ingress.post("/api/resources/customer/batch", headers=headers,
                            json={"resources": [{"id": f"h{i}", "name": "http"} for i in range(50)]})
    assert response.status_code == 202, response.text
    assert wait_terminal(ingress, response.json()["data"]["batchId"], headers)["status"] == "success"
    assert _handed_on(settings) == 0

    # Round-robin: one message per record, partition i mod n whatever its key.
    round_robin = _batch(definition_id, [{"id": f"rr{i}", "name": f"rr {i}"} for i in range(40)])
    # One message holding 30 operations of every partition, with a producer's own header.
    mixed = _batch(definition_id, [{"id": f"mx{i}", "name": f"mx {i}"} for i in range(30)], partitions=1)
    (mixed_key, mixed_value, mixed_headers), = mixed.messages
    # A deterministic partitioner of its own: every event of a resource on the partition after
    # its owner. Three rounds back to back merge into the same resources: the last must win.
    rounds = [_batch(definition_id, [{"id": f"o{i}", "name": f"round {r}", f"r{r}": i} for i in range(20)],
                     ignore_unknown_fields=True) for r in range(3)]

    asyncio.run(produce_placed(settings, [
        *((key, value, message_headers, n % partitions)
          for n, (key, value, message_headers) in enumerate(round_robin.messages)),
        (mixed_key, mixed_value, [("traceparent", b"00-4bf92f3577b34da6-01"), *mixed_headers], 0),
        *((key, value, message_headers, (partition_for(key, partitions) + 1) % partitions)
          for batch in rounds for key, value, message_headers in batch.messages)]))
    for batch, total in ((round_robin, 40), (mixed, 30), *((b, 20) for b in rounds)):
        data = wait_terminal(ingress, batch.batch_id, headers)
        assert (data["status"], data["progress"]["successfulRecords"]) == ("success", total), data
    for i in range(20):
        resource = ingress.get(f"/api/resources/customer/o{i}", headers=headers).json()["data"]["result"]
        # ignoreUnknownFields drops r0..r2: the name says which round applied last.
        assert resource["data"] == {"id": f"o{i}", "name": "round 2"}, resource
    assert ingress.get("/api/resources/customer/rr39", headers=headers).json()["data"]["result"]["data"] == \
        {"id": "rr39", "name": "rr 39"}

    # Each record has exactly one committed outcome, and each misplaced one was handed on once.
    outcomes = asyncio.run(committed_outcomes(settings))
    for batch, total in ((round_robin, 40), (mixed, 30), *((b, 20) for b in rounds)):
        counts = {i: outcomes[(batch.batch_id, i)] for i in range(total)}
        assert set(counts.values()) == {1}, (batch.batch_id, counts)
    misplaced = sum(owner_of(f"rr{i}") != i % partitions for i in range(40)) + \
        sum(owner_of(f"mx{i}") != 0 for i in range(30)) + 60
    assert _handed_on(settings) == misplaced


def test_bad_messages_go_to_dead_letters_and_the_worker_keeps_going(settings: Settings, ingress: TestClient,
                                                                    worker: ServiceProcess) -> None:
    definition_id = _define(ingress)
    good = _batch(definition_id, [{"id": "x1", "name": "after the bad ones"}])
    key = good.messages[0][0]  # same key, so the bad messages sit in front of the good one
    valid_event = good.messages[0][1]
    asyncio.run(_produce(settings, [
        (key, b"\x02\xffnot avro at all", list(INGEST_HEADERS)),                   # garbage bytes
        (key, valid_event, [("reach-event-version", b"3")]),                       # a version we don't read
        (key, valid_event, []),                                                    # no version at all
        (key, valid_event + b"trailing", list(INGEST_HEADERS)),                    # not exactly one event
        (key, _with_record_index(valid_event, 7), list(INGEST_HEADERS)),           # index outside its batch
        *_messages(good),
    ]))
    data = wait_terminal(ingress, good.batch_id, bearer(tenant_token()))
    assert data["status"] == "success"

    topic = service_topics(settings).dead_letters.name
    letters = wait_until(lambda: _five(asyncio.run(read_dead_letters(settings.bootstrap_servers, topic))), 30,
                         what="five dead letters")
    reasons = [letter.header(REASON) for letter in letters]
    assert "not an IngestMessage v2" in reasons[0]
    assert "unsupported event version" in reasons[1] and "'3'" in reasons[1]
    assert "no reach-event-version header" in reasons[2] and "not the Confluent" in reasons[2]
    assert "bytes left over" in reasons[3]
    assert "recordIndex 7" in reasons[4]
    ingest = service_topics(settings).ingest.name
    for letter in letters:
        assert letter.header(TOPIC) == ingest and letter.key == key
        assert letter.header(PARTITION).isdigit() and letter.header(OFFSET).isdigit()
    assert [int(letter.header(OFFSET)) for letter in letters] == sorted(int(x.header(OFFSET)) for x in letters)
    assert letters[0].value == b"\x02\xffnot avro at all"


def _five(letters: list) -> list | None:
    return letters if len(letters) >= 5 else None


def _with_record_index(message: bytes, index: int) -> bytes:
    import io

    import fastavro

    from schemas.events import INGEST_MESSAGE_SCHEMA

    decoded = cast(dict[str, Any], fastavro.schemaless_reader(io.BytesIO(message), INGEST_MESSAGE_SCHEMA))
    decoded["operations"][0]["recordIndex"] = index
    return encode_ingest_message(decoded)


def test_direct_events_get_the_same_record_checks_as_http(settings: Settings, ingress: TestClient,
                                                         worker: ServiceProcess) -> None:
    definition_id = _define(ingress)
    headers = bearer(tenant_token())
    unknown = _batch("00000000-0000-0000-0000-000000000000", [{"id": "u1", "name": "n"}])
    out_of_range = _batch(definition_id, [{"id": "o1", "name": "n"}], dependency_wait_timeout=90_000)
    invalid = _batch(definition_id, [{"id": "v1", "name": "ok"}, {"id": "v2", "name": 5}, {"id": "v3", "zip": "x"}])
    wrong_key = build_ingest_batch_v1("partner-a", "tenant-1", definition_id, [("k1", {"id": "k1", "name": "n"})])
    wrong_key_messages = [(b"not/the/resource/key", wrong_key.messages[0][1], wrong_key.messages[0][2])]
    # Handed on by a worker (`processors.hand_on`: on the dependency-requests topic) yet still
    # not on its owner partition, as a worker with another partition count would: it fails
    # rather than travel on.
    misplaced_twice = _batch(definition_id, [{"id": "k2", "name": "n"}])
    k2, k2_value, k2_headers = misplaced_twice.messages[0]
    partitions = service_topics(settings).ingest.partitions
    elsewhere = (partition_for(k2, partitions) + 1) % partitions
    asyncio.run(_produce(settings, [*_messages(unknown), *_messages(out_of_range), *_messages(invalid),
                                    *wrong_key_messages]))
    asyncio.run(_produce(settings, [(k2, k2_value, [*k2_headers, (HANDED_ON_HEADER, b"0")])], partition=elsewhere,
                         topic=service_topics(settings).dependency_requests.name))

    data = wait_terminal(ingress, unknown.batch_id, headers)
    assert data["status"] == "failed" and data["errors"]["summary"] == {"SCHEMA_NOT_FOUND": 1}
    data = wait_terminal(ingress, out_of_range.batch_id, headers)
    assert data["errors"]["summary"] == {"INVALID_OPTIONS": 1}
    assert "dependencyWaitTimeout" in data["errors"]["details"]["0"]["message"]
    data = wait_terminal(ingress, invalid.batch_id, headers)
    assert data["status"] == "partial_success"
    assert data["errors"]["summary"] == {"VALIDATION_FAILED": 2}
    assert data["errors"]["details"]["1"]["message"].startswith("resources[1].name")
    assert data["errors"]["details"]["2"]["message"].startswith("resources[2].zip")
    data = wait_terminal(ingress, wrong_key.batch_id, headers)
    assert data["errors"]["summary"] == {"VALIDATION_FAILED": 1}
    key = resource_key("partner-a", "tenant-1", definition_id, "k1").decode()
    assert key in data["errors"]["details"]["0"]["message"]
    assert ingress.get("/api/resources/customer/k1", headers=headers).status_code == 404
    data = wait_terminal(ingress, misplaced_twice.batch_id, headers)
    assert data["errors"]["summary"] == {"VALIDATION_FAILED": 1}
    message = data["errors"]["details"]["0"]["message"]
    assert f"belongs to partition {partition_for(k2, partitions)} of {partitions}, not {elsewhere}" in message, message
    assert "REACH_TOPIC_PARTITIONS" in message, message
    assert ingress.get("/api/resources/customer/k2", headers=headers).status_code == 404


def test_dead_letters_are_listed_and_redriven_by_command(settings: Settings, ingress: TestClient,
                                                        worker: ServiceProcess) -> None:
    definition_id = _define(ingress)
    batch = _batch(definition_id, [{"id": "r1", "name": "redriven"}])
    key, value, _ = batch.messages[0]
    # Produced without its version header: a dead letter. The fix is on the producer's side;
    # re-driving the stored message as it was fails the same way and is dead-lettered again.
    asyncio.run(_produce(settings, [(key, b"garbage", list(INGEST_HEADERS)), (key, value, [])]))
    topic = service_topics(settings).dead_letters.name
    wait_until(lambda: len(asyncio.run(read_dead_letters(settings.bootstrap_servers, topic))) >= 2, 30,
               what="two dead letters")

    listing = _reach(settings, "dead-letters", "list")
    rows = [orjson.loads(line) for line in listing.stdout.splitlines()]
    # Offsets of the dead-letter topic: consecutive when one transaction carried both, one
    # apart when a commit marker fell between them (the worker committed in between).
    offsets = [row["offset"] for row in rows]
    assert len(rows) == 2 and offsets[0] == 0 and offsets[1] in (1, 2), offsets
    assert "not an IngestMessage v2" in rows[0]["reason"] and "no reach-event-version header" in rows[1]["reason"]
    assert rows[0]["from"].startswith(service_topics(settings).ingest.name)

    redrive = _reach(settings, "dead-letters", "redrive", "0")
    assert "re-drove offset 0" in redrive.stdout
    letters = wait_until(lambda: _at_least(asyncio.run(read_dead_letters(settings.bootstrap_servers, topic)), 3),
                         30, what="the re-driven message to come back")
    assert letters[2].value == b"garbage" and "not an IngestMessage v2" in letters[2].header(REASON)
    assert int(letters[2].header(OFFSET)) > int(letters[0].header(OFFSET))  # a new ingest message
    missing = _reach(settings, "dead-letters", "redrive", "99", check=False)
    assert missing.returncode == 2 and "no dead letter at offset" in missing.stderr


def _at_least(letters: list, n: int) -> list | None:
    return letters if len(letters) >= n else None


def _reach(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "reach.cli", *args], env=settings_env(settings),
                            capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result
