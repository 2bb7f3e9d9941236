"""Publishing a batch atomically: one Kafka transaction per upload, all of it or nothing.

A pool of transactional producers lets several uploads commit at once (a producer runs one
transaction at a time). A producer whose transaction failed or ran out of time is retired:
a new one with the same transactional id takes its place, which fences the old one and
aborts whatever it left open.

An upload waits at most `produce_timeout_s` in all — for a free producer, its sends and
its commit — whatever Kafka does. The transaction runs in a task of its own and the upload
stops waiting for it at the deadline: aiokafka's abort and commit wait for the broker behind
`asyncio.shield`, so cancelling them does not end them, and awaiting a cancelled
transaction would make the deadline meaningless while the broker is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from reach import seam
from reach.config import Settings
from topics.partitioning import partition_for
from topics.record_batches import send_batches

log = logging.getLogger(__name__)

Message = tuple[str, bytes, bytes, list[tuple[str, bytes]] | None]  # topic, key, value, headers
RETRY_INTERVAL_S = 1.0  # between attempts to replace a retired producer while the broker is away
TRANSACTION_TIMEOUT_S = 15.0  # after which the broker aborts a transaction its producer left open


class PublishError(Exception):
    """Kafka did not durably take the batch in time.

    `committing` is False when nothing of the batch can ever become visible (the commit was
    never requested), True when the broker went silent while confirming the commit, so the
    batch may or may not appear.
    """

    def __init__(self, reason: str, committing: bool = False) -> None:
        super().__init__(reason)
        self.committing = committing


@dataclass
class _Progress:
    committing: bool = False


class BatchPublisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._idle: asyncio.Queue[AIOKafkaProducer] = asyncio.Queue()
        self._all: dict[str, AIOKafkaProducer] = {}
        self._background: set[asyncio.Task[None]] = set()

    def _transactional_ids(self) -> list[str]:
        base = f"{self.settings.topic_prefix}-ingress-{self.settings.ingress_id}"
        return [f"{base}-{i}" for i in range(self.settings.ingress_producers)]

    async def _new_producer(self, transactional_id: str) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            transactional_id=transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
            max_batch_size=512 * 1024,
            max_request_size=4 * 1024 * 1024,
            # An open transaction of a crashed ingress holds back readers until it times out.
            transaction_timeout_ms=int(TRANSACTION_TIMEOUT_S * 1000),
            request_timeout_ms=int(self.settings.produce_timeout_s * 1000),
        )
        try:
            await producer.start()
        except BaseException:
            await _close_quietly(producer)
            raise
        self._all[transactional_id] = producer
        return producer

    async def start(self) -> None:
        seam.install_aiokafka()  # an upload's commit not held up 100 ms by a busy transaction coordinator
        for tid in self._transactional_ids():
            self._idle.put_nowait(await self._new_producer(tid))

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        for producer in self._all.values():
            await _close_quietly(producer)

    async def publish(self, messages: list[Message], deadline: float | None = None) -> None:
        """Write `messages` in one transaction; raise PublishError if not committed in time (by
        `deadline`, an event-loop time, if given; else within `produce_timeout_s`)."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.settings.produce_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                producer = await self._idle.get()
        except TimeoutError:
            raise PublishError("no Kafka producer became free in time: the broker took none of the "
                               "last uploads") from None
        progress = _Progress()
        transaction = asyncio.create_task(self._transaction(producer, messages, progress))
        await asyncio.wait({transaction}, timeout=max(deadline - loop.time(), 0))
        if transaction.done() and not transaction.cancelled() and transaction.exception() is None:
            self._idle.put_nowait(producer)
            return
        reason = "timed out" if not transaction.done() else repr(transaction.exception())
        self._in_background(self._retire(producer, transaction))
        raise PublishError(reason, committing=progress.committing)

    @staticmethod
    async def _transaction(producer: AIOKafkaProducer, messages: list[Message], progress: _Progress) -> None:
        # Record batches per partition (`topics.record_batches`): sending messages one by one
        # costs ~20 µs each in the client, more than everything else the ingress does per record.
        by_partition: dict[tuple[str, int], list[Message]] = {}
        partitions_of: dict[str, int] = {}
        for message in messages:
            topic, key = message[0], message[1]
            if topic not in partitions_of:
                partitions_of[topic] = len(await producer.partitions_for(topic))
            partition = partition_for(key, partitions_of[topic])  # one resource, one partition
            by_partition.setdefault((topic, partition), []).append(message)
        # Not `producer.transaction()`: on an error it awaits the abort, which waits for the
        # broker. A failed transaction is left open here; retiring its producer aborts it.
        await producer.begin_transaction()
        delivered: list[asyncio.Future[Any]] = []
        for (topic, partition), group in by_partition.items():
            sent = await send_batches(producer, topic, partition, ((k, v, h or []) for _, k, v, h in group))
            delivered.extend(future for future, _ in sent)
        await asyncio.gather(*delivered)
        progress.committing = True  # from here on the broker may commit it even if we stop waiting
        await producer.commit_transaction()

    async def _retire(self, broken: AIOKafkaProducer, transaction: asyncio.Task[None]) -> None:
        """Replace `broken` by a new producer of the same transactional id, once Kafka answers.

        The new producer's initialisation fences `broken` and aborts its open transaction. The
        old one is closed on the side: its close may wait for the broker, the pool must not.
        """
        transaction.cancel()
        transactional_id = next(tid for tid, producer in self._all.items() if producer is broken)
        self._in_background(_close_quietly(broken, transaction))
        attempts = 0
        while True:
            try:
                self._idle.put_nowait(await self._new_producer(transactional_id))
                if attempts:
                    log.warning("ingress producer %s ready again after %d failed attempts", transactional_id, attempts)
                return
            except Exception as exc:  # the broker is still away: try again shortly
                if not attempts:  # once per outage and producer, not once a second
                    log.warning("ingress producer %s not ready, trying every %.0fs: %s",
                                transactional_id, RETRY_INTERVAL_S, exc)
                attempts += 1
                await asyncio.sleep(RETRY_INTERVAL_S)

    def _in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def _close_quietly(producer: AIOKafkaProducer, transaction: asyncio.Task[None] | None = None) -> None:
    """Stop `producer`, after `transaction` ends if given; errors are expected and ignored."""
    if transaction is not None:
        with contextlib.suppress(BaseException):
            await transaction
    with contextlib.suppress(Exception):
        await producer.stop()
