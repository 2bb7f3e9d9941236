"""A local view of a whole topic: read from the beginning, then followed, with read-your-writes.

A subclass folds every committed message, in order per partition, into state of its own
(`apply`). `sync()` waits until everything committed before the call has been applied, which
is how a process answers for writes made through any other process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from topics.admin import partitions_of
from topics.partitioning import EVERY_PARTITION, Share

log = logging.getLogger(__name__)

# A request to a node that stopped answering (paused, cut off: its connection stays open) is
# given up after this, and asked of the partition's new leader. aiokafka's default, 40 s, held
# every read of a paused node's partitions for 40 s after Kafka had moved their leaders.
REQUEST_TIMEOUT_MS = 5000
# How long the broker holds a follower's fetch when nothing new is there. A fetch returns as soon
# as something is committed, whatever this is; it only sets how often an idle view asks again,
# and each ask costs the broker about a millisecond of CPU: at 50 ms, the views of one ingress,
# one reader and one worker (seven) cost an idle broker a fifth of a core.
FOLLOW_WAIT_MS = 500
NEW_TOPIC_S = 10.0  # how long a view waits for the partitions of a topic the cluster does not describe yet

class TopicView:
    """Follows the partitions of `topic` in `share` (default: all) and hands each message to `apply`."""

    def __init__(self, bootstrap_servers: str, topic: str, wait_s: float = 5.0,
                 share: Share = EVERY_PARTITION) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.share = share
        self.wait_s = wait_s  # how long `sync` waits for Kafka by default
        self._positions: dict[TopicPartition, int] = {}
        self._changed = asyncio.Condition()
        self._consumer: AIOKafkaConsumer | None = None
        self._offsets: AIOKafkaConsumer | None = None  # read_uncommitted: asks for high watermarks
        # Asks for the last stable offsets. Not the following consumer: the broker answers a
        # connection's requests in order, so on its connection the question would wait behind
        # the long-poll fetch in flight (up to FOLLOW_WAIT_MS on an idle topic, every read).
        self._ends: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.started_at: dict[int, int] = {}

    async def start(self, timeout_s: float = 60.0) -> None:
        """Read the topic up to its current end, then keep following it in the background."""
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False,
            isolation_level="read_committed", fetch_max_wait_ms=FOLLOW_WAIT_MS, max_poll_records=5000,
            request_timeout_ms=REQUEST_TIMEOUT_MS,
        )
        await self._consumer.start()
        self._offsets = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False,
                                         isolation_level="read_uncommitted", request_timeout_ms=REQUEST_TIMEOUT_MS)
        await self._offsets.start()
        self._ends = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False,
                                      isolation_level="read_committed", request_timeout_ms=REQUEST_TIMEOUT_MS)
        await self._ends.start()
        # A topic created moments ago (on a cluster) is not at once in the consumer's metadata, nor
        # known to every node: a reader of a three-node cluster exited at its start so.
        partitions = self._consumer.partitions_for_topic(self.topic) or await partitions_of(
            self.bootstrap_servers, self.topic, NEW_TOPIC_S, REQUEST_TIMEOUT_MS)
        if not partitions:
            raise RuntimeError(f"topic {self.topic} does not exist")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions) if self.share.owns(p)]
        self._consumer.assign(tps)
        resume = self.initial_positions()
        self.started_at = dict(resume)  # where reading began, per partition (empty: the beginning)
        if resume:
            log.info("view of %s reads on from its checkpoint: %s", self.topic, resume)
        await self._consumer.seek_to_beginning(*(tp for tp in tps if tp.partition not in resume))
        for tp in tps:
            if tp.partition in resume:
                self._consumer.seek(tp, resume[tp.partition])
        # Where each partition is now, before the first fetch: an empty or caught-up partition is
        # known to be at its end at once, not only when a first long poll finds nothing (500 ms
        # per view on every start).
        self._positions = {tp: await self._consumer.position(tp) for tp in tps}
        # Where to read again if folding a fetch fails (None: the beginning).
        self._applied: dict[TopicPartition, int | None] = {tp: resume.get(tp.partition) for tp in tps}
        self._task = asyncio.create_task(self._follow(), name=f"view:{self.topic}")
        await self.sync(timeout_s)

    def initial_positions(self) -> dict[int, int]:
        """Where to start reading, per partition: a view kept on disk resumes where it was;
        a partition not named here is read from its beginning."""
        return {}

    def apply(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        """Fold one message into the view's state (subclasses)."""
        raise NotImplementedError

    def apply_all(self, batches: dict[TopicPartition, list[ConsumerRecord]],
                  positions: dict[TopicPartition, int]) -> None:
        """Fold what one fetch returned; `positions` are the next offsets to read after it
        (a view kept on disk writes them with the state, see `state.store`)."""
        for messages in batches.values():
            for message in messages:
                self.apply(message.offset, message.key, message.value)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for consumer in (self._consumer, self._offsets, self._ends):
            if consumer is not None:
                await consumer.stop()

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500)
                positions = {tp: await self._consumer.position(tp) for tp in self._positions}
                if batches or positions != self._positions:
                    self.apply_all(batches, positions)
                    self._applied.update(positions)
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker hiccup or a bad message handler: read it again
                log.exception("view of %s: reading failed; retrying", self.topic)
                await self._rewind()
                await asyncio.sleep(1)
                continue
            async with self._changed:
                self._positions = positions
                self._changed.notify_all()

    async def _rewind(self) -> None:
        assert self._consumer is not None
        with contextlib.suppress(Exception):  # still failing: the next round rewinds again
            for tp, offset in self._applied.items():
                if offset is None:
                    await self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, offset)

    async def sync(self, timeout_s: float | None = None) -> None:
        """Wait until every message committed before this call has been applied.

        Raises TimeoutError after `timeout_s` (default `wait_s`), also when the broker does not answer.
        """
        assert self._ends is not None
        await self._reach_end_of(self._ends, self.wait_s if timeout_s is None else timeout_s)

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

    async def changed(self, timeout_s: float) -> None:
        """Wait until the view has applied another fetch (which may have brought nothing new),
        or `timeout_s` has passed."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_s)

    def followed(self) -> list[TopicPartition]:
        """The partitions this view follows."""
        return list(self._positions)

    def partition(self, number: int) -> TopicPartition:
        return TopicPartition(self.topic, number)

    async def append(self, producer: AIOKafkaProducer, key: bytes, value: bytes | None) -> int:
        """Write one message to the topic; its offset, once this view has applied it."""
        sent = await producer.send_and_wait(self.topic, value, key=key)
        await self.wait_for({self.partition(sent.partition): sent.offset + 1}, timeout_s=self.wait_s)
        return sent.offset
