"""Ingest operations read on another partition than their resource's: handed on to its owner.

A resource's writes apply on the partition its key hashes to with Kafka's murmur2 (as Kafka's
Java client and the ingress place them): its state, its pending queue and its other writes
are there. A direct producer with another partitioner — librdkafka's and kcat's default
`consistent_random`, sarama's FNV-1a, round-robin — puts events elsewhere. The worker that
reads such an operation writes it to the owner partition of the dependency-requests topic
(co-partitioned with the ingest topic, and read by the same agent), in the transaction that
commits the offset it was read at: a crash before that commit aborts both and the event is
read again, so an operation is handed on exactly once. Nothing is counted where it was read:
its outcome comes from the owner partition, once.

Why not back into the ingest topic: the worker reads committed records only, and a copy in
an open transaction hides everything after it in its partition until that transaction
commits — the producers' own messages included. With librdkafka's default partitioner that
cost 30-40% of the end-to-end rate; on the requests topic the ingest topic keeps exactly what
producers wrote (a consumer of it sees no copies).

Order: what one source partition hands on reaches each owner partition in source order (one
producer, one transaction after another). A producer that always puts one resource's events
on one partition (any deterministic partitioner) keeps their order; one that scatters them
(round-robin) gets them applied in the order they reach the owner, which need not be the
order it sent them.

A message whose operations all belong to one other partition goes on as it is (its key,
bytes and headers: either version, framed or not). A version-2 message mixing partitions is
split: the operations of this partition apply here, each other partition's go on together as
one version-2 message, in their order. A copy carries `HANDED_ON_HEADER`, which tells it from
the requests topic's own JSON messages, and is never handed on a second time (`place` is for
messages of the ingest topic only): if it is still misplaced, the workers disagree on the
ingest topic's partition count, and its operations fail (`processors.resource_processor`) instead of
looping.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import PLAN_HEADER, VERSION_HEADER, Headers, Operation, encode_operations, header, operation_keys
from topics.partitioning import partition_for

HANDED_ON_HEADER = "reach-handed-on-from"  # the partition it was read on, in ASCII digits

Message = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]  # partition, key, value, headers


@dataclass(frozen=True)
class Placement:
    """Where the operations of one ingest message apply."""

    here: list[tuple[bytes, Operation]]  # (resource key, operation) to apply on this partition, in order
    elsewhere: list[Message]  # to write to their owner partitions (empty: the common case)
    handed_on: int  # operations in `elsewhere`


def place(operations: list[Operation], partition: int, partitions: int, key: bytes | None,
          value: bytes | None, headers: list[tuple[str, bytes]]) -> Placement:
    """Split a decoded message of the ingest topic (`operations`, read on `partition` of
    `partitions`, as `key`, `value`, `headers`) into what applies here — each operation with
    its resource key, on its owner partition — and what goes on to another partition."""
    keys = operation_keys(operations)
    owners = [partition_for(k, partitions) for k in keys]
    if all(owner == partition for owner in owners):
        return Placement(list(zip(keys, operations)), [], 0)
    stamp = (HANDED_ON_HEADER, str(partition).encode())
    if all(owner == owners[0] for owner in owners):
        return Placement([], [(owners[0], key, value, [*headers, stamp])], len(operations))
    groups: dict[int, list[tuple[bytes, Operation]]] = {}
    for op_key, op, owner in zip(keys, operations, owners):
        groups.setdefault(owner, []).append((op_key, op))
    here = groups.pop(partition, [])
    kept = [h for h in headers if h[0] not in (VERSION_HEADER, PLAN_HEADER)]  # a producer's own, e.g. tracing
    elsewhere: list[Message] = []
    for owner, keyed in groups.items():
        op_value, op_headers = encode_operations([op for _, op in keyed])
        elsewhere.append((owner, keyed[0][0], op_value, [*kept, *op_headers, stamp]))
    return Placement(here, elsewhere, len(operations) - len(here))


def handed_on_from(headers: Headers) -> int | None:
    """The partition a handed-on message was read on (None: written there by its producer)."""
    raw = header(headers, HANDED_ON_HEADER)
    return None if raw is None else int(raw)
