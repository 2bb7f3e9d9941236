"""When the record waiting at the head of each resource's queue times out, per partition.

A heap of (deadline ms, resource key) per input partition, built from the `pending` table on the
partition's first tick after it was assigned and kept in memory after that: one entry per
waiting resource of the partitions this worker owns (a released or re-queued entry stays in the
heap until its old deadline passes, and is then skipped: its stored deadline differs).

A partition is ticked (`needs_tick`) only when its heap is still to be built or its earliest
deadline has passed: each tick is an event, and so a transaction of its partition. Ticking every
notices partition twice a second kept an idle worker committing eight transactions a second
(four partitions), a fifth of an idle broker's CPU.

The heap also answers which resources surely have no pending entry (`may_be_pending`): every
entry stored has its deadline in the heap until that deadline passes (the worker writes an entry
with a new deadline only where it adds one here, and a built heap holds the table's entries,
uncommitted ones included), so a key with no heap entry has none — and every record of a
resource that waits for nothing is spared a look into the `pending` table, a RocksDB read that
misses. A transaction whose changes die (its producer fenced) comes with a rebalance, which
forgets the partition's heap: it is then built from the table again.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator


class Deadlines:
    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, bytes]]] = {}  # absent until built from the table
        self._keys: dict[int, Counter[bytes]] = {}  # per built heap: how many of its entries each key has

    def forget(self, partitions: set[int]) -> None:
        """The partitions moved (or may have): their heaps are built again on their next tick."""
        for partition in partitions:
            self._heaps.pop(partition, None)
            self._keys.pop(partition, None)

    def add(self, partition: int, deadline_ms: int, key: bytes) -> None:
        heap = self._heaps.get(partition)
        if heap is not None:  # else built from the table, where this entry is, at the next tick
            heapq.heappush(heap, (deadline_ms, key))
            self._keys[partition][key] += 1

    def may_be_pending(self, partition: int, key: bytes) -> bool:
        """False if `key` surely has no pending entry in `partition`: its heap is built and holds
        no deadline of that key."""
        keys = self._keys.get(partition)
        return keys is None or key in keys

    def needs_tick(self, partition: int, now_ms: int) -> bool:
        """Whether `partition` has a deadline due by `now_ms`, or its heap is still to be built."""
        heap = self._heaps.get(partition)
        return heap is None or (bool(heap) and heap[0][0] <= now_ms)

    def due(self, partition: int, now_ms: int, stored: Callable[[], Iterable[tuple[int, bytes]]]
            ) -> Iterator[tuple[int, bytes]]:
        """Each (deadline, key) of `partition` due by `now_ms`, earliest first, taken out;
        `stored`: every (deadline, key) of the partition's pending entries, for the first look."""
        heap = self._heaps.get(partition)
        if heap is None:
            heap = self._heaps[partition] = list(stored())
            heapq.heapify(heap)
            self._keys[partition] = Counter(key for _, key in heap)
        keys = self._keys[partition]
        while heap and heap[0][0] <= now_ms:
            deadline, key = heapq.heappop(heap)
            keys[key] -= 1
            if not keys[key]:
                del keys[key]
            yield deadline, key
