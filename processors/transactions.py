"""Exactly-once processing on Faust's transactions, with the gaps we found closed.

Faust 0.15's `exactly_once` keeps one transactional producer per input partition and commits
the consumed offsets through it. Our kill tests showed three ways it loses or duplicates
effects, and this module closes each:

1. Table changelog writes wait in Faust's send buffer, which is not drained before a
   transactional commit (its `flush()` gives up after 100 ms), so they could land in the
   *next* transaction — lost if the worker died in between, while the offset was already
   committed. Our table writes send their changelog record themselves (`put`).
2. `Topic.send` picks the transaction of the *destination* partition (or none at all for a
   topic the worker doesn't consume), not of the event being processed. We send our outputs
   through the producer of the event's own partition (`send`), to any partition.
3. A commit could run while an event was half processed (between two of its sends), putting
   part of its output in a transaction that does not carry its offset. Events are processed
   under a lock that commits take too.
4. Faust commits the offset after the first *consecutive* run of acknowledged offsets. Our
   input topic is written transactionally, so its offsets have holes (commit markers); a
   commit could then carry outputs of events past a hole without their offsets. We commit
   the offset after the last event we processed in each partition: inside the lock, every
   output in a partition's open transaction belongs to an event below that offset.

Local RocksDB writes are outside any transaction; `processors.worker` rebuilds the stores
from the committed changelog after an unclean stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any

import faust
from aiokafka.partitioner import DefaultPartitioner
from faust.transport.consumer import Consumer
from faust.types import TP, EventT

_original_commit_tps = Consumer._commit_tps
_ATTRIBUTE = "reach_exactly_once"
_partitioner = DefaultPartitioner()


async def _commit_tps_between_events(self: Consumer, tps: Iterable[TP], start_new_transaction: bool) -> bool:
    eos: ExactlyOnce | None = getattr(self.app, _ATTRIBUTE, None)
    if eos is None or not self.app.in_transaction:
        return await _original_commit_tps(self, tps, start_new_transaction)
    async with eos.lock:
        assigned = self.assignment()
        offsets = {tp: offset for tp, offset in eos.processed.items()
                   if tp in assigned and offset > (self._committed_offset.get(tp) or 0)}
        for tp in offsets:  # Faust's own bookkeeping of acks is not used for these
            self._acked[tp].clear()
            self._acked_index[tp].clear()
            self._gap[tp].clear()
        if not offsets:
            return False
        await self._commit_offsets(offsets, start_new_transaction=start_new_transaction)
        return True


Consumer._commit_tps = _commit_tps_between_events  # type: ignore[method-assign]


class ExactlyOnce:
    """Per-event atomicity for one Faust app running with `processing_guarantee="exactly_once"`."""

    def __init__(self, app: faust.App, partitions: dict[str, int]) -> None:
        self.app = app
        self.partitions = partitions
        self.lock = asyncio.Lock()
        # Per input partition: the offset after the last event whose outputs are all sent.
        self.processed: dict[TP, int] = {}
        setattr(app, _ATTRIBUTE, self)

        @app.on_partitions_revoked.connect
        async def forget_revoked(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
            for tp in revoked:
                self.processed.pop(tp, None)

    def done(self, event: EventT) -> None:
        """Mark `event` processed: its offset goes into the next commit of its partition."""
        self.processed[event.message.tp] = event.message.offset + 1

    def _transactional_id(self, event: EventT) -> str:
        tp = event.message.tp
        group = self.app.assignor.group_for_topic(tp.topic)
        return f"{self.app.conf.id}-{group}-{tp.partition}"

    async def put(self, event: EventT, table: faust.Table, key: Any, value: Any) -> None:
        """`table[key] = value`, its changelog record sent in `event`'s transaction."""
        store = table.data
        raw_key, raw_value = store._encode_key(key), store._encode_value(value)
        store._set(raw_key, raw_value)
        # A table's partition p holds what events of input partition p wrote (Faust's rule).
        await self.send(event, table.changelog_topic.get_topic_name(), raw_key, raw_value, event.message.partition)

    async def delete(self, event: EventT, table: faust.Table, key: Any) -> None:
        """`del table[key]`, its changelog tombstone sent in `event`'s transaction."""
        store = table.data
        raw_key = store._encode_key(key)
        store._del(raw_key)
        await self.send(event, table.changelog_topic.get_topic_name(), raw_key, None,  # type: ignore[arg-type]
                        event.message.partition)

    @staticmethod
    def partition_items(table: faust.Table, partition: int) -> list[tuple[Any, Any]]:
        """Every (key, value) this worker holds for one partition of `table` (RocksDB store)."""
        store = table.data
        db = store._db_for_partition(partition)
        return [(store._decode_key(k), store._decode_value(v)) for k, v in db.items()
                if not k.startswith(b"__faust")]

    async def send(self, event: EventT, topic: str, key: bytes, value: bytes,
                   partition: int | None = None) -> Awaitable[Any]:
        """Send in the transaction that commits `event`'s offset.

        Without `partition`, the key picks it as every Kafka client does (murmur2), so that
        all messages of one key share a partition across topics of equal partition counts.
        """
        if partition is None:
            partition = self.partition_for(topic, key)
        return await self.app.producer.send(
            topic, key, value, partition, None, None,
            transactional_id=self._transactional_id(event),
        )

    def partition_for(self, topic: str, key: bytes) -> int:
        count = self.partitions[topic]
        return _partitioner(key, list(range(count)), list(range(count)))
