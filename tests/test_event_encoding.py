"""The version-2 ingest messages `build_ingest_batch` writes are byte for byte what fastavro
writes for the published schema, so that any Avro reader of `ingest_event_v2.avsc` reads them;
both versions decode to the same per-operation form."""

from __future__ import annotations

from typing import Any

import fastavro
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import (
    INGEST_HEADERS,
    INGEST_HEADERS_V1,
    INGEST_MESSAGE_SCHEMA,
    MAX_MESSAGE_BYTES,
    UndecodableEvent,
    build_ingest_batch,
    build_ingest_batch_v1,
    decode_ingest_message,
    encode_ingest_message,
    resource_key,
)
from topics.partitioning import partition_for

TEXT = st.text(max_size=40)
RECORD = st.dictionaries(TEXT, st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | TEXT, max_size=5)


def _decode_v2(value: bytes) -> dict:
    import io
    return fastavro.schemaless_reader(io.BytesIO(value), INGEST_MESSAGE_SCHEMA)  # type: ignore[return-value]


@settings(max_examples=300, deadline=None)
@given(partner=TEXT, tenant=TEXT, definition=TEXT, records=st.lists(st.tuples(TEXT, RECORD), max_size=5),
       version=st.none() | st.integers(0, 2**31 - 1), op=st.sampled_from(["upsert", "reject", "patch", "delete"]),
       ignore_unknown=st.booleans(), wait=st.integers(0, 86400), cascade=st.booleans(),
       accepted_at=st.integers(0, 2**63 - 1) | st.integers(-2**63, -1))
def test_messages_are_byte_identical_to_fastavro(partner: str, tenant: str, definition: str, records: list,
                                                 version: int | None, op: str, ignore_unknown: bool, wait: int,
                                                 cascade: bool, accepted_at: int) -> None:
    if op == "delete":
        records = [(external_id, None) for external_id, _ in records]
    batch = build_ingest_batch(partner, tenant, definition, records, op=op, schema_version=version,
                               ignore_unknown_fields=ignore_unknown, dependency_wait_timeout=wait,
                               cascade=cascade, accepted_at=accepted_at)
    assert len(batch.messages) == len(records)
    for index, ((external_id, record), (_, value, _)) in enumerate(zip(records, batch.messages)):
        message = _decode_v2(value)
        assert encode_ingest_message(message) == value
        (body,) = decode_ingest_message(value, INGEST_HEADERS)
        assert (body["recordIndex"], body["externalId"], body["schemaVersion"], body["op"], body["acceptedAt"],
                body["partnerId"], body["cascade"], body["eventId"]) == \
            (index, external_id, version, op, accepted_at, partner, cascade, f"{batch.batch_id}:{index}")
        assert body["data"] == (None if record is None else orjson.dumps(record).decode())


def test_long_values_use_multi_byte_lengths() -> None:
    record = {"text": "é" * 20_000}
    batch = build_ingest_batch("p", "t", "d", [("x" * 17_000, record)], accepted_at=2**62)
    (_, value, _), = batch.messages
    assert encode_ingest_message(_decode_v2(value)) == value


def test_a_message_of_many_operations_decodes_to_them_in_order() -> None:
    message = {"batchId": "b", "batchType": "PARTNER_RESOURCE_BATCH_DELETE", "recordCount": 3, "partnerId": "p",
               "tenantId": "t", "schemaDefinitionId": "d", "schemaVersion": None, "ignoreUnknownFields": False,
               "dependencyWaitTimeout": 0, "cascade": True, "acceptedAt": 1,
               "operations": [{"recordIndex": i, "externalId": f"x{i}", "op": "delete", "data": None}
                              for i in (2, 0, 1)]}
    bodies = decode_ingest_message(encode_ingest_message(message), INGEST_HEADERS)
    assert [(b["eventId"], b["externalId"], b["op"], b["batchType"]) for b in bodies] == [
        (f"b:{i}", f"x{i}", "delete", "PARTNER_RESOURCE_BATCH_DELETE") for i in (2, 0, 1)]


def test_version_1_events_decode_to_the_same_form_as_uploads() -> None:
    batch = build_ingest_batch_v1("p", "t", "d", [("a", {"id": "a"})], on_conflict="reject", batch_id="b")
    (_, value, _), = batch.messages
    (body,) = decode_ingest_message(value, INGEST_HEADERS_V1)
    assert (body["eventId"], body["op"], body["onConflict"], body["batchType"], body["cascade"], body["data"]) == \
        ("b:0", "reject", "reject", "PARTNER_RESOURCE_JSON_INGEST", False, '{"id":"a"}')
    with pytest.raises(UndecodableEvent, match="IngestMessage v2"):
        decode_ingest_message(value, INGEST_HEADERS)  # a v1 body under a v2 header


@settings(max_examples=200, deadline=None)
@given(records=st.lists(st.tuples(st.text(min_size=1, max_size=12), RECORD), max_size=40),
       partitions=st.integers(1, 8), planned=st.sets(st.integers(0, 39)))
def test_grouped_messages_hold_each_partitions_operations_in_batch_order(records: list, partitions: int,
                                                                        planned: set[int]) -> None:
    plans = {i: {"wait": [f"k{i}"]} for i in planned if i < len(records)}
    batch = build_ingest_batch("p", "t", "d", records, partitions=partitions, plans=plans, batch_id="b")
    assert len(batch.messages) == len({partition_for(resource_key("p", "t", "d", x), partitions) for x, _ in records})
    seen: dict[int, list[int]] = {}
    for key, value, headers in batch.messages:
        assert encode_ingest_message(_decode_v2(value)) == value
        partition = partition_for(key, partitions)
        bodies = decode_ingest_message(value, headers)
        assert resource_key("p", "t", "d", bodies[0]["externalId"]) == key  # keyed by its first operation
        for body in bodies:
            assert partition_for(resource_key("p", "t", "d", body["externalId"]), partitions) == partition
            assert body["plan"] == plans.get(body["recordIndex"])
            assert body["data"] == orjson.dumps(records[body["recordIndex"]][1]).decode()
        seen.setdefault(partition, []).extend(b["recordIndex"] for b in bodies)
    assert sorted(i for indexes in seen.values() for i in indexes) == list(range(len(records)))
    assert all(indexes == sorted(indexes) for indexes in seen.values())


def test_grouped_messages_stay_within_the_size_bound() -> None:
    # ~2 MB, on one partition
    records: list[tuple[str, dict[str, Any] | None]] = [(f"r{i}", {"text": "x" * 20_000}) for i in range(100)]
    batch = build_ingest_batch("p", "t", "d", records, partitions=1)
    sizes = [len(value) for _, value, _ in batch.messages]
    per_message = MAX_MESSAGE_BYTES // 20_016  # the size of one operation here
    assert len(sizes) == -(-100 // per_message) and max(sizes) <= MAX_MESSAGE_BYTES, sizes
    indexes = [b["recordIndex"] for _, value, headers in batch.messages for b in decode_ingest_message(value, headers)]
    assert indexes == list(range(100))
    huge = build_ingest_batch("p", "t", "d", [("big", {"text": "x" * (MAX_MESSAGE_BYTES + 1)}), ("small", {})],
                              partitions=1)
    assert len(huge.messages) == 2  # an operation larger than the bound travels alone


def test_confluent_frames_of_either_version_decode_like_the_unframed_message() -> None:
    from schemas.wire_format import frame

    v2 = build_ingest_batch("p", "t", "d", [("a", {"id": "a"}), ("b", None)], op="delete")
    (_, v2_value, _), = v2.messages[:1]
    v1 = build_ingest_batch_v1("p", "t", "d", [("a", {"id": "a", "n": 1})])
    (_, v1_value, _), = v1.messages
    for value, headers, schema_id in ((v2_value, INGEST_HEADERS, 2), (v1_value, INGEST_HEADERS_V1, 1)):
        unframed = decode_ingest_message(value, headers)
        assert decode_ingest_message(frame(schema_id, value), []) == unframed
        assert decode_ingest_message(frame(schema_id, value), headers) == unframed  # a header that agrees
    with pytest.raises(UndecodableEvent, match="header says '1', but the frame's schema id 2 is version 2"):
        decode_ingest_message(frame(2, v2_value), INGEST_HEADERS_V1)


@pytest.mark.parametrize("value, reason", [
    (b"\x00", "truncated Confluent frame: 1 bytes"),
    (b"\x00\x00\x00\x00", "truncated Confluent frame: 4 bytes"),
    (b"\x00\x00\x00\x00\x02", "a Confluent frame of schema id 2 without an Avro body"),
    (b"\x00\x00\x00\x00\x00abc", "unknown schema id 0 in a Confluent frame: the ingest topic's schema ids are "
                                 "1 (reach.ingest.v1.IngestEvent), 2 (reach.ingest.v2.IngestMessage)"),
    (b"\x00\x00\x00\x01\x00abc", "unknown schema id 256"),
    (b"\x00\x00\x00\x00\x02\x02", "not an IngestMessage v2 (in a Confluent frame of schema id 2)"),
    (b"\x05\x00\x00\x00\x02abc", "no reach-event-version header, and the first byte 0x05 is not the Confluent"),
])
def test_frames_that_cannot_be_used_say_why(value: bytes, reason: str) -> None:
    with pytest.raises(UndecodableEvent) as raised:
        decode_ingest_message(value, [])
    assert str(raised.value).startswith(reason), str(raised.value)
