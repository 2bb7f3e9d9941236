"""When the record waiting at the head of each resource's queue times out, per partition.

Per input partition, built from the `pending` table on the partition's first tick after it was
assigned and kept in memory after that: each waiting resource's deadline (`_live`: the one its
pending entry holds) and a heap of (deadline ms, resource key) to find the earliest. A record
whose pins are answered is released within a round trip, long before its deadline (60 s when it
may not wait for missing references): its resource is then dropped from `_live` at once, and
its heap entry, now stale, is skipped without a look into the table when it comes up, or sooner,
when stale entries outnumber live ones and the heap is rebuilt from `_live`. So memory and
work follow the records waiting now, not every record that waited in the last minute (at 8,000
records a second with a reference, that was 480,000 heap entries per minute of load, each read
back from RocksDB at its old deadline).

A partition is ticked (`needs_tick`) only when its deadlines are still to be read or a live one
has passed: each tick is an event, and so a transaction of its partition. Ticking every notices
partition twice a second kept an idle worker committing eight transactions a second (four
partitions), a fifth of an idle broker's CPU.

`_live` also answers which resources surely have no pending entry (`may_be_pending`): it holds
every entry the table holds (the worker writes an entry with a new deadline only where it
calls `add`, deletes one only where it calls `remove`, and a partition's deadlines are read
with its uncommitted changes), so a key absent from it has none — and every record of a
resource that waits for nothing is spared a look into the `pending` table, a RocksDB read that
misses. A transaction whose changes die (its producer fenced) comes with a rebalance, which
forgets the partition's deadlines: they are then read from the table again.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator

# Stale heap entries tolerated beyond as many as there are live ones, before the heap is rebuilt.
STALE_SLACK = 1024


class Deadlines:
    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, bytes]]] = {}  # absent until read from the table
        self._live: dict[int, dict[bytes, int]] = {}  # per read partition: each waiting key's deadline

    def forget(self, partitions: set[int]) -> None:
        """The partitions moved (or may have): their deadlines are read again on their next tick."""
        for partition in partitions:
            self._heaps.pop(partition, None)
            self._live.pop(partition, None)

    def add(self, partition: int, deadline_ms: int, key: bytes) -> None:
        """`key`'s pending entry was written with a new deadline."""
        heap = self._heaps.get(partition)
        if heap is None:
            return  # read from the table, where this entry is, at the next tick
        live = self._live[partition]
        live[key] = deadline_ms
        heapq.heappush(heap, (deadline_ms, key))
        if len(heap) > 2 * len(live) + STALE_SLACK:
            heap[:] = _heap_of(live)  # in place: a `due` under way goes on with it

    def remove(self, partition: int, key: bytes) -> None:
        """`key`'s pending entry was deleted: nothing of it waits any more."""
        live = self._live.get(partition)
        if live is not None:
            live.pop(key, None)

    def may_be_pending(self, partition: int, key: bytes) -> bool:
        """False if `key` surely has no pending entry in `partition`: its deadlines are read and
        `key` has none."""
        live = self._live.get(partition)
        return live is None or key in live

    def needs_tick(self, partition: int, now_ms: int) -> bool:
        """Whether `partition` has a live deadline due by `now_ms`, or its deadlines are still to be read."""
        heap = self._heaps.get(partition)
        if heap is None:
            return True
        self._drop_stale(partition, heap)
        return bool(heap) and heap[0][0] <= now_ms

    def due(self, partition: int, now_ms: int, stored: Callable[[], Iterable[tuple[int, bytes]]]
            ) -> Iterator[tuple[int, bytes]]:
        """Each live (deadline, key) of `partition` due by `now_ms`, earliest first, taken out of
        the heap (the caller then removes the key or gives it a new deadline); `stored`: every
        (deadline, key) of the partition's pending entries, for the first look."""
        heap = self._heaps.get(partition)
        if heap is None:
            live = self._live[partition] = {key: deadline for deadline, key in stored()}
            heap = self._heaps[partition] = _heap_of(live)
        while True:
            self._drop_stale(partition, heap)
            if not heap or heap[0][0] > now_ms:
                return
            yield heapq.heappop(heap)

    def _drop_stale(self, partition: int, heap: list[tuple[int, bytes]]) -> None:
        """Pop the entries at the top of `heap` that are no key's live deadline any more."""
        live = self._live[partition]
        while heap and live.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)


def _heap_of(live: dict[bytes, int]) -> list[tuple[int, bytes]]:
    """A heap of the live deadlines (key -> deadline) alone."""
    heap = [(deadline, key) for key, deadline in live.items()]
    heapq.heapify(heap)
    return heap
