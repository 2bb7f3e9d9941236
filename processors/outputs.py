"""What the worker's events send to Kafka: kept with the transaction of the event's input
partition and sent as whole record batches, one per topic partition, when it commits (or earlier
once `FLUSH_BYTES` have gathered) — one client call per partition instead of one per message."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.types import TP, EventT

from processors.grouped import Group, encode_item
from processors.in_place import InPlace
from processors.open_transactions import OpenTransactions, Transaction, begin_unless_open
from topics import partitioning
from topics.record_batches import send_batches

# A transaction's outputs gathered beyond this are sent at once, before its commit.
FLUSH_BYTES = 1024 * 1024
# How long a send waits for a partition whose leader is moving (`send_batches`) before the
# worker's run ends: a node that dies is replaced as leader after 9-14 s, and a commit that
# gave up after the client's 10 s request timeout ended the run in 2 of 3 runs of the short
# cluster fault matrix. Well within the transaction timeout (60 s).
SEND_PATIENCE_S = 30.0


class Outputs:
    """Sends in the transaction that commits an event's offset."""

    def __init__(self, transactions: OpenTransactions, partitions: dict[str, int], in_place: InPlace) -> None:
        self.transactions = transactions
        self.partitions = partitions  # topic -> its partition count
        self.in_place = in_place

    async def send(self, event: EventT, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None = None, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Send in the transaction that commits `event`'s offset.

        Without `partition`, the key picks it as every Kafka client does (murmur2), so that
        all messages of one key share a partition across topics of equal partition counts.
        """
        await self.send_in(event.message.tp, topic, key, value, partition, headers)

    async def send_in(self, tp: TP, topic: str, key: bytes | None, value: bytes | None,
                      partition: int | None = None, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Send in the open transaction of input partition `tp` (see `send`): kept with it, and
        sent in record batches at its commit or once `FLUSH_BYTES` have gathered."""
        if partition is None:
            partition = self.partition_for(topic, key or b"")
        writes = self.transactions.open_transaction(tp)
        queue = writes.outputs.get((topic, partition))
        if queue is None:
            queue = writes.outputs[(topic, partition)] = []
        queue.append((key, value, headers or []))
        writes.size += len(value or b"") + len(key or b"")
        if writes.size >= FLUSH_BYTES:
            await self.flush_early(tp, writes)

    async def send_item(self, event: EventT, topic: str, key: bytes, item: dict[str, Any],
                        ordered: bool = False) -> None:
        """Send `item`, about the resource `key`, in `event`'s transaction to `key`'s partition of
        `topic`, grouped with the items sent there just before it (`processors.grouped`).
        `ordered`: a pin or unpin, which the ones made in place must not overtake (`processors.in_place`)."""
        encoded = encode_item(key, item)
        destination = (topic, self.partition_for(topic, key))
        tp = event.message.tp
        writes = self.transactions.open_transaction(tp)
        if ordered:
            writes.ordered.add(destination[1])
            self.in_place.sending.add(destination[1])
        queue = writes.outputs.get(destination)
        if queue is None:
            queue = writes.outputs[destination] = []
        last = queue[-1] if queue else None
        if isinstance(last, Group) and last.fits(encoded):
            last.add(encoded)
        else:
            queue.append(Group(key, encoded))
        writes.size += len(encoded)
        if writes.size >= FLUSH_BYTES:
            await self.flush_early(tp, writes)

    async def flush_early(self, tp: TP, writes: Transaction) -> None:
        """`tp`'s open transaction `writes` has gathered `FLUSH_BYTES` (`writes.size`, kept by
        whoever adds to it, who checks the bound: this runs several times per record, so the
        call is made only past it): they go to its producer now — unless its previous
        transaction is committing, then they wait for it."""
        if not self.transactions.held:
            await self._send_outputs(writes)

    async def _send_outputs(self, writes: Transaction) -> None:
        """Hand `writes`' outputs to its producer, one record batch per topic partition (or
        more when one would exceed the producer's batch size), in the order they were sent."""
        outputs, writes.outputs, writes.size = writes.outputs, {}, 0
        changelogs, writes.changelogs = writes.changelogs, {}
        producer = writes.producer
        await begin_unless_open(producer)
        for (topic, partition), queued in outputs.items():
            messages = [(m.key, m.value(), []) if isinstance(m, Group) else m for m in queued]
            sent = await send_batches(producer, topic, partition, messages, SEND_PATIENCE_S)
            writes.delivered.extend(delivered for delivered, _ in sent)
            if topic == self.in_place.requests and partition in writes.ordered:
                writes.ordered_sent[partition] = sent[-1]
        for (topic, partition), changes in changelogs.items():
            sent = await send_batches(producer, topic, partition, [(k, raw, []) for k, raw in changes.items()],
                                      SEND_PATIENCE_S)
            writes.delivered.extend(delivered for delivered, _ in sent)
            delivered, count = sent[-1]
            writes.last_sent[topic] = (delivered, count - 1)

    async def send_committing(self, producer: Any) -> None:
        """Send what the committing transaction still holds and wait until the broker has all
        of it (called just before it commits)."""
        committing = [w for w in self.transactions.committing.values() if w.producer is producer]
        for writes in committing:
            await self._send_outputs(writes)
        await asyncio.gather(*(d for writes in committing for d in writes.delivered))

    def partition_for(self, topic: str, key: bytes) -> int:
        return partitioning.partition_for(key, self.partitions[topic])
