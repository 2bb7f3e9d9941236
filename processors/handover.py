"""What a worker waits for before it restores and processes partitions it takes over.

Each worker commits in one Kafka transaction (`processors.transactions`), under a transactional
id of its own: taking a partition over no longer fences the transaction of the worker that had
it, as a transactional id per partition did. That worker commits before it lets the partition
go (or the group refuses its offsets: KIP-447, `reach.seam.commit_as`), but its last commit may
still be completing — Kafka writes a transaction's markers after the commit returns — when the
new owner starts. So before restoring a partition's tables and reading where it resumes, the
new owner waits until
1. the group's offsets for the partition are stable: OffsetFetch with `require_stable`
   (KIP-447) answers UNSTABLE_OFFSET_COMMIT while a transaction holding offsets for it is open
   (resuming at the offset before it, the new owner would process those records again);
2. the partition's changelogs are settled: no transaction open on them (last stable offset =
   high watermark), so that the restore reads everything committed to them.
A transaction that never ends (its worker killed mid-way) ends when its worker restarts — its
transactional id fences the old one at once — or at the transaction timeout (60 s). A new
owner that has waited `FENCE_AFTER_S` ends it sooner: each commit names its worker's
transactional id in the offsets' metadata (`reach.seam`), so the new owner reads who last
committed the partitions it waits for and fences them (InitProducerId under that id aborts
what it left open). A worker that is alive commits before it lets partitions go, in tens of
milliseconds; one still holding a transaction open seconds into the take-over is dead or cut
off, and the group no longer counts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.errors import KafkaError
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Boolean, CompactArray, CompactString, Int16, Int32, Int64, Schema, TaggedFields

log = logging.getLogger(__name__)

UNSTABLE_OFFSET_COMMIT = 88
ASK_TIMEOUT_S = 10.0  # one ask of the broker given up after this, and asked again
# Answers that mean "ask the group's coordinator again" (load in progress, not available, moved).
_COORDINATOR_BUSY = {14, 15, 16}
BACKOFF_S = (0.005, 0.1)  # first and longest wait between two asks
LOG_EVERY_S = 5.0
# How long a take-over waits for a transaction to end before it fences the transactional ids
# that last committed the partitions it waits for (the module docstring).
FENCE_AFTER_S = 5.0
Fence = Callable[[list[TopicPartition]], Awaitable[None]]  # fences the last committers of input partitions


class _Patience:
    """The wait between two asks of a take-over's loops: growing from `BACKOFF_S[0]` to
    `BACKOFF_S[1]`, and a log line every `LOG_EVERY_S` of waiting saying what for."""

    def __init__(self) -> None:
        self.started, self.next, self.logged = time.monotonic(), BACKOFF_S[0], 0.0
        self.fenced = False

    def fence_due(self) -> bool:
        """True once, when the wait has lasted `FENCE_AFTER_S`."""
        if self.fenced or time.monotonic() - self.started < FENCE_AFTER_S:
            return False
        self.fenced = True
        return True

    async def wait(self, what: str, still: str) -> None:
        waited = time.monotonic() - self.started
        if waited - self.logged >= LOG_EVERY_S:
            self.logged = waited
            log.info("waiting %.0f s %s: %s", waited, what, still)
        await asyncio.sleep(self.next)
        self.next = min(self.next * 2, BACKOFF_S[1])


class _OffsetFetchResponse_v7(Response):
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("topics", CompactArray(("name", CompactString("utf-8")),
                                ("partitions", CompactArray(("partition_index", Int32), ("committed_offset", Int64),
                                                            ("committed_leader_epoch", Int32),
                                                            ("metadata", CompactString("utf-8")),
                                                            ("error_code", Int16), ("tags", TaggedFields))),
                                ("tags", TaggedFields))),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class _OffsetFetchRequest_v7(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = _OffsetFetchResponse_v7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        ("topics", CompactArray(("name", CompactString("utf-8")), ("partition_indexes", CompactArray(Int32)),
                                ("tags", TaggedFields))),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class _OffsetFetch(Request[_OffsetFetchRequest_v7]):
    """OffsetFetch with `require_stable` (aiokafka's stops at version 3, which has no such flag)."""

    API_KEY = 9

    def __init__(self, group_id: str, partitions: list[TopicPartition], require_stable: bool) -> None:
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        topics: list[Any] = [(topic, sorted(ps), {}) for topic, ps in sorted(by_topic.items())]
        self._args: tuple[Any, ...] = (group_id, topics, require_stable, {})

    def build(self, request_struct_class: type[Any]) -> Any:
        return request_struct_class(*self._args)


async def _offset_fetch(client: AIOKafkaClient, group_id: str, partitions: list[TopicPartition],
                        require_stable: bool) -> Any:
    """The group coordinator's answer to one OffsetFetch v7 of `partitions`."""
    coordinator = await asyncio.wait_for(client.coordinator_lookup(CoordinationType.GROUP, group_id), ASK_TIMEOUT_S)
    return await asyncio.wait_for(client.send(coordinator, _OffsetFetch(group_id, partitions, require_stable)),
                                  ASK_TIMEOUT_S)


async def fetch_offsets(client: AIOKafkaClient, group_id: str, partitions: list[TopicPartition]
                        ) -> tuple[int, dict[TopicPartition, tuple[int, int]]]:
    """One OffsetFetch with `require_stable`: the answer's error code, and per partition its
    committed offset (-1: none) and error code."""
    response = await _offset_fetch(client, group_id, partitions, require_stable=True)
    found = {TopicPartition(name, partition): (offset, code)
             for name, ps, _ in response.topics for partition, offset, _, _, code, _ in ps}
    return response.error_code, found


async def committers(client: AIOKafkaClient, group_id: str, partitions: list[TopicPartition]) -> set[str]:
    """The metadata of the group's last stable commit of each of `partitions`: the transactional
    ids of the workers that made them (`reach.seam`; empty ones left out)."""
    response = await _offset_fetch(client, group_id, partitions, require_stable=False)
    return {metadata for _, ps, _ in response.topics for _, _, _, metadata, code, _ in ps if metadata and code == 0}


async def fence(bootstrap_servers: str, transactional_id: str) -> None:
    """End what the producer of `transactional_id` left open: InitProducerId under that id
    bumps its epoch, and the coordinator aborts its open transaction."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, transactional_id=transactional_id)
    await asyncio.wait_for(producer.start(), ASK_TIMEOUT_S * 3)
    await producer.stop()


async def stable_offsets(bootstrap_servers: str, group_id: str, partitions: list[TopicPartition],
                         client: AIOKafkaClient | None = None, fence_holders: Fence | None = None
                         ) -> dict[TopicPartition, int]:
    """The group's committed offset of each partition (-1: none), once no open transaction holds
    offsets for any of them; `fence_holders` is called once, with the partitions still unstable,
    after `FENCE_AFTER_S` of waiting."""
    own = client is None
    if client is None:
        client = AIOKafkaClient(bootstrap_servers=bootstrap_servers)
        await client.bootstrap()
    try:
        patience = _Patience()
        while True:
            try:
                error, found = await fetch_offsets(client, group_id, partitions)
            except (TimeoutError, KafkaError) as exc:  # a coordinator moved or not reachable yet
                log.info("asking for the group's offsets again after %r", exc)
                await asyncio.sleep(BACKOFF_S[1])
                continue
            unstable = sorted(f"{tp.topic}[{tp.partition}]" for tp, (_, code) in found.items()
                              if code == UNSTABLE_OFFSET_COMMIT)
            failed = {tp: code for tp, (_, code) in found.items() if code not in (0, UNSTABLE_OFFSET_COMMIT)}
            if error == 0 and not unstable and not failed:
                return {tp: offset for tp, (offset, _) in found.items()}
            if failed or (error and error not in _COORDINATOR_BUSY and error != UNSTABLE_OFFSET_COMMIT):
                raise RuntimeError(f"OffsetFetch for group {group_id} failed: error {error}, partitions {failed}")
            if fence_holders is not None and unstable and patience.fence_due():
                await fence_holders([tp for tp, (_, code) in found.items() if code == UNSTABLE_OFFSET_COMMIT])
            await patience.wait("for the group's offsets to be stable (a transaction holding them is still open)",
                                ", ".join(unstable) or f"error {error}")
    finally:
        if own:
            await client.close()


class Handover:
    """The worker's waits before it takes partitions over (module docstring); its clients are
    kept for the worker's life, started at the first handover."""

    def __init__(self, bootstrap_servers: str, group_id: str, own_id: str) -> None:
        self.bootstrap_servers, self.group_id = bootstrap_servers, group_id
        self.own_id = own_id  # this worker's transactional id: never fenced by itself
        self._client: AIOKafkaClient | None = None
        self._committed: AIOKafkaConsumer | None = None  # read_committed: its end is the last stable offset
        self._uncommitted: AIOKafkaConsumer | None = None  # its end is the high watermark
        self._waits: set[asyncio.Task[Any]] = set()  # under way: a stop cancels them

    async def _start(self) -> None:
        if self._client is not None:
            return
        client = AIOKafkaClient(bootstrap_servers=self.bootstrap_servers)
        committed = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, isolation_level="read_committed",
                                     enable_auto_commit=False)
        uncommitted = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, isolation_level="read_uncommitted",
                                       enable_auto_commit=False)
        await client.bootstrap()
        await committed.start()
        await uncommitted.start()
        self._client, self._committed, self._uncommitted = client, committed, uncommitted

    async def take_over(self, inputs: Iterable[TopicPartition], changelogs: Iterable[TopicPartition]) -> None:
        """Return once the group's offsets of `inputs` are stable and no transaction is open on
        `changelogs` (the module docstring says why); cancelled by `close`."""
        await self._cancellable(self._take_over(sorted(set(inputs)), sorted(set(changelogs))))

    async def _cancellable(self, wait: Any) -> Any:
        task = asyncio.ensure_future(wait)
        self._waits.add(task)
        try:
            return await task
        finally:
            self._waits.discard(task)

    async def _take_over(self, inputs: list[TopicPartition], changelogs: list[TopicPartition]) -> None:
        if not inputs and not changelogs:
            return
        await self._start()
        started = time.monotonic()
        if inputs:
            await stable_offsets(self.bootstrap_servers, self.group_id, inputs, self._client, self._fence)
        if changelogs:
            await self._settled(changelogs, inputs)
        log.info("took over %d input and %d changelog partitions after %.0f ms", len(inputs), len(changelogs),
                 (time.monotonic() - started) * 1000)

    async def ends(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The end of what is committed on each of `partitions` (its last stable offset)."""
        partitions = sorted(set(partitions))
        if not partitions:
            return {}
        await self._cancellable(self._start())
        assert self._committed is not None
        ends: dict[TopicPartition, int] = await self._cancellable(self._ask(self._committed, partitions))
        return ends

    @staticmethod
    async def _ask(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """`consumer`'s end offsets of `partitions`, asked again until the broker answers."""
        while True:
            try:
                return dict(await asyncio.wait_for(consumer.end_offsets(partitions), ASK_TIMEOUT_S))
            except (TimeoutError, KafkaError) as exc:
                log.info("asking for the ends of %d partitions again after %r", len(partitions), exc)
                await asyncio.sleep(BACKOFF_S[1])

    async def _settled(self, changelogs: list[TopicPartition], inputs: list[TopicPartition]) -> None:
        assert self._committed is not None and self._uncommitted is not None
        patience = _Patience()
        while True:
            stable = await self._ask(self._committed, changelogs)
            high = await self._ask(self._uncommitted, changelogs)
            open_ = [tp for tp in changelogs if stable[tp] < high[tp]]
            if not open_:
                return
            if patience.fence_due():  # a table's partition p is written by whoever processes input partition p
                numbers = {tp.partition for tp in open_}
                await self._fence([tp for tp in inputs if tp.partition in numbers])
            await patience.wait("for transactions still open on changelogs to end",
                                ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in open_)))

    async def _fence(self, partitions: list[TopicPartition]) -> None:
        """Fence the workers other than this one that last committed `partitions` (the module
        docstring); a failure is logged, and the wait goes on to the transaction timeout."""
        assert self._client is not None
        try:
            holders = await committers(self._client, self.group_id, partitions) - {self.own_id}
            for holder in sorted(holders):
                log.warning("fencing %s: a transaction it left open still holds partitions taken over", holder)
                await fence(self.bootstrap_servers, holder)
        except (TimeoutError, KafkaError) as exc:
            log.warning("could not fence the former owners of %d partitions: %r", len(partitions), exc)

    async def close(self) -> None:
        for task in list(self._waits):  # a stop during a rebalance: the wait ends with it
            task.cancel()
        for consumer in (self._committed, self._uncommitted):
            if consumer is not None:
                await consumer.stop()
        if self._client is not None:
            await self._client.close()
