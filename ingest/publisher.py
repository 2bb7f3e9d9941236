"""Publishing a batch atomically: one Kafka transaction per upload, all of it or nothing.

A pool of transactional producers lets several uploads commit at once (a producer runs one
transaction at a time). A producer whose transaction failed is replaced: the new one, with
the same transactional id, fences the old one and aborts whatever it left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer

from reach.config import Settings
from topics.partitioning import partition_for

log = logging.getLogger(__name__)

Message = tuple[str, bytes, bytes, list[tuple[str, bytes]] | None]  # topic, key, value, headers


class PublishError(Exception):
    """Kafka did not durably take the batch in time; nothing of it is visible."""


class BatchPublisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._idle: asyncio.Queue[AIOKafkaProducer] = asyncio.Queue()
        self._all: dict[str, AIOKafkaProducer] = {}

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
            transaction_timeout_ms=15_000,
            request_timeout_ms=int(self.settings.produce_timeout_s * 1000),
        )
        await producer.start()
        self._all[transactional_id] = producer
        return producer

    async def start(self) -> None:
        for tid in self._transactional_ids():
            self._idle.put_nowait(await self._new_producer(tid))

    async def stop(self) -> None:
        for producer in self._all.values():
            with contextlib.suppress(Exception):
                await producer.stop()

    async def publish(self, messages: list[Message]) -> None:
        """Write `messages` in one transaction; raise PublishError if not committed in time."""
        producer = await self._idle.get()
        try:
            await asyncio.wait_for(self._transaction(producer, messages), self.settings.produce_timeout_s)
        except Exception as exc:
            tid = producer._txn_manager.transactional_id  # type: ignore[union-attr]
            asyncio.get_running_loop().create_task(self._replace(producer, tid))
            raise PublishError(str(exc) or type(exc).__name__) from exc
        self._idle.put_nowait(producer)

    @staticmethod
    async def _transaction(producer: AIOKafkaProducer, messages: list[Message]) -> None:
        # One record batch per partition, built here: sending messages one by one costs
        # ~20 µs each in the client, more than everything else the ingress does per record.
        by_partition: dict[tuple[str, int], list[Message]] = {}
        partitions_of: dict[str, int] = {}
        for message in messages:
            topic, key = message[0], message[1]
            if topic not in partitions_of:
                partitions_of[topic] = len(await producer.partitions_for(topic))
            partition = partition_for(key, partitions_of[topic])  # one resource, one partition
            by_partition.setdefault((topic, partition), []).append(message)
        async with producer.transaction():
            delivered = []
            for (topic, partition), group in by_partition.items():
                batch = producer.create_batch()
                for _, key, value, headers in group:
                    if batch.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                        delivered.append(await producer.send_batch(batch, topic, partition=partition))
                        batch = producer.create_batch()  # a first message always fits, however big
                        batch.append(key=key, value=value, timestamp=None, headers=headers or [])
                delivered.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*delivered)

    async def _replace(self, broken: AIOKafkaProducer, transactional_id: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broken.stop(), 5)
        while True:
            try:
                self._idle.put_nowait(await self._new_producer(transactional_id))
                return
            except Exception as exc:  # the broker is still away: try again shortly
                log.warning("ingress producer %s not ready yet: %s", transactional_id, exc)
                await asyncio.sleep(1)
