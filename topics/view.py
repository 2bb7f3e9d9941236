"""A local view of a whole topic: read from the beginning, then followed, with read-your-writes.

A subclass folds every committed message, in order per partition, into state of its own
(`apply`). `sync()` waits until everything committed before the call has been applied, which
is how a process answers for writes made through any other process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

class TopicView:
    """Follows every partition of `topic` and hands each message to `apply`."""

    def __init__(self, bootstrap_servers: str, topic: str, wait_s: float = 5.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.wait_s = wait_s  # how long `sync` waits for Kafka by default
        self._positions: dict[TopicPartition, int] = {}
        self._changed = asyncio.Condition()
        self._consumer: AIOKafkaConsumer | None = None
        self._offsets: AIOKafkaConsumer | None = None  # read_uncommitted: asks for high watermarks
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 60.0) -> None:
        """Read the topic up to its current end, then keep following it in the background."""
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False,
            isolation_level="read_committed", fetch_max_wait_ms=50, max_poll_records=5000,
        )
        await self._consumer.start()
        self._offsets = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False,
                                         isolation_level="read_uncommitted")
        await self._offsets.start()
        partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            await self._consumer._client.force_metadata_update()  # a topic created moments ago
            partitions = self._consumer.partitions_for_topic(self.topic) or set()
        if not partitions:
            raise RuntimeError(f"topic {self.topic} does not exist")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._positions = {tp: -1 for tp in tps}
        self._task = asyncio.create_task(self._follow(), name=f"view:{self.topic}")
        await self.sync(timeout_s)

    def apply(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        """Fold one message into the view's state (subclasses)."""
        raise NotImplementedError

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for consumer in (self._consumer, self._offsets):
            if consumer is not None:
                await consumer.stop()

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500)
                for tp, messages in batches.items():
                    for message in messages:
                        self.apply(message.offset, message.key, message.value)
                positions = {tp: await self._consumer.position(tp) for tp in self._positions}
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker hiccup or a bad message handler: keep following
                log.exception("view of %s: reading failed; retrying", self.topic)
                await asyncio.sleep(1)
                continue
            async with self._changed:
                self._positions = positions
                self._changed.notify_all()

    async def sync(self, timeout_s: float | None = None) -> None:
        """Wait until every message committed before this call has been applied.

        Raises TimeoutError after `timeout_s` (default `wait_s`), also when the broker does not answer.
        """
        assert self._consumer is not None
        await self._reach_end_of(self._consumer, self.wait_s if timeout_s is None else timeout_s)

    async def settle(self, timeout_s: float) -> bool:
        """Wait until every message written before this call, committed or in a transaction still
        open, has been applied or aborted; False if that took longer than `timeout_s`.

        Unlike `sync`, this also waits out transactions still open (a worker's, for up to one
        commit interval), so a missing key is known to be missing: at once when none is open.
        """
        assert self._offsets is not None
        try:
            await self._reach_end_of(self._offsets, timeout_s)
        except (TimeoutError, KafkaError):
            return False
        return True

    async def _reach_end_of(self, consumer: AIOKafkaConsumer, timeout_s: float) -> None:
        """Wait until the view has applied everything before the topic's end as `consumer` sees it."""
        async with asyncio.timeout(timeout_s):
            ends = await consumer.end_offsets(list(self._positions))
            await self.wait_for(ends, timeout_s)

    async def wait_for(self, offsets: dict[TopicPartition, int], timeout_s: float) -> None:
        """Wait until each partition's position has reached the given offset."""
        def reached() -> bool:
            return all(self._positions.get(tp, -1) >= offset for tp, offset in offsets.items())

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(reached), timeout_s)

    def partition(self, number: int) -> TopicPartition:
        return TopicPartition(self.topic, number)
