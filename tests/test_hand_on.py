"""Where the operations of an ingest message apply (`processors.hand_on.place`), without a broker:
on the partition they were read on, or handed on to their owner partition — as they came, or
split per owner. (A copy that is still misplaced fails rather than travel on:
`tests/test_direct_producers.py`.)"""

from __future__ import annotations

import orjson

from processors.hand_on import HANDED_ON_HEADER, handed_on_from, place
from schemas.events import (
    INGEST_HEADERS,
    PLAN_HEADER,
    build_ingest_batch,
    build_ingest_batch_v1,
    decode_ingest_message,
    header,
    operation_keys,
    resource_key,
)
from topics.partitioning import partition_for

PARTITIONS = 4


def _owner(external_id: str) -> int:
    return partition_for(resource_key("p", "t", "d", external_id), PARTITIONS)


def _ids_on(partition: int, count: int, prefix: str = "r") -> list[str]:
    """`count` external ids whose resources belong to `partition`."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        if _owner(f"{prefix}{n}") == partition:
            found.append(f"{prefix}{n}")
        n += 1
    return found


def test_operations_of_their_own_partition_apply_where_they_were_read() -> None:
    batch = build_ingest_batch("p", "t", "d", [(i, {"id": i}) for i in _ids_on(2, 5)], partitions=PARTITIONS)
    (key, value, headers), = batch.messages
    ops = decode_ingest_message(value, headers)
    placement = place(ops, 2, PARTITIONS, key, value, headers)
    keys = [resource_key("p", "t", "d", op["externalId"]) for op in ops]
    assert (placement.here, placement.elsewhere, placement.handed_on) == (list(zip(keys, ops)), [], 0)


def test_a_message_wholly_of_another_partition_goes_on_as_it_came_stamped_with_its_source() -> None:
    for batch in (build_ingest_batch("p", "t", "d", [(i, {"id": i}) for i in _ids_on(3, 4)], partitions=PARTITIONS),
                  build_ingest_batch_v1("p", "t", "d", [(i, {"id": i}) for i in _ids_on(3, 1)])):
        (key, value, headers), = batch.messages
        headers = [*headers, ("traceparent", b"00-abc-01")]
        ops = decode_ingest_message(value, headers)
        placement = place(ops, 1, PARTITIONS, key, value, headers)
        assert placement.here == [] and placement.handed_on == len(ops)
        assert placement.elsewhere == [(3, key, value, [*headers, (HANDED_ON_HEADER, b"1")])]
        assert handed_on_from(placement.elsewhere[0][3]) == 1


def test_a_message_mixing_partitions_is_split_per_owner_in_order_with_plans_and_headers_kept() -> None:
    ids = [*_ids_on(0, 3, "a"), *_ids_on(1, 2, "b"), *_ids_on(2, 3, "c")]
    ids = [ids[i] for i in (0, 3, 5, 1, 6, 4, 2, 7)]  # interleaved owners
    plans = {1: {"wait": ["x"], "byCascade": False}, 6: {"wait": [], "byCascade": True}}
    # partitions=1: every operation in one message, as a producer that ignores partitions builds it.
    batch = build_ingest_batch("p", "t", "d", [(i, None) for i in ids], op="delete", cascade=True,
                               partitions=1, plans=plans)
    (key, value, headers), = batch.messages
    headers = [("traceparent", b"00-abc-01"), *headers]
    ops = decode_ingest_message(value, headers)
    placement = place(ops, 0, PARTITIONS, key, value, headers)

    assert [op["externalId"] for _, op in placement.here] == [i for i in ids if _owner(i) == 0]
    assert all(key == resource_key("p", "t", "d", op["externalId"]) for key, op in placement.here)
    assert placement.handed_on == 5 and sorted(p for p, *_ in placement.elsewhere) == [1, 2]
    for partition, out_key, out_value, out_headers in placement.elsewhere:
        again = decode_ingest_message(out_value, out_headers)
        # The same operations of that owner, in batch order, each as it was decoded from the original.
        assert again == [op for op in ops if _owner(op["externalId"]) == partition]
        assert out_key == resource_key("p", "t", "d", again[0]["externalId"])
        assert header(out_headers, "traceparent") == b"00-abc-01"
        assert header(out_headers, HANDED_ON_HEADER) == b"0"
        carried = {str(op["recordIndex"]) for op in again if op["plan"] is not None}
        assert carried == set(orjson.loads(header(out_headers, PLAN_HEADER) or b"{}"))
    assert ("reach-event-version", INGEST_HEADERS[0][1]) in placement.elsewhere[0][3]


def test_operation_keys_are_the_resource_keys_whatever_the_characters_of_an_id() -> None:
    ids = ["plain-1", "with/slash", "sp ace", "ünï", "100%", "a.b~c_d", ""]
    batch = build_ingest_batch("part ner", "t/1", "d", [(i, None) for i in ids], op="delete")
    ops = [op for _, value, headers in batch.messages for op in decode_ingest_message(value, headers)]
    for op in ops:
        assert operation_keys([op]) == [resource_key("part ner", "t/1", "d", op["externalId"])]
    whole = build_ingest_batch("part ner", "t/1", "d", [(i, None) for i in ids], op="delete", partitions=1)
    (_, value, headers), = whole.messages
    assert operation_keys(decode_ingest_message(value, headers)) == [resource_key("part ner", "t/1", "d", i)
                                                                     for i in ids]
