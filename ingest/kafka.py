"""The ingress's Kafka producer: idempotent, acks from all in-sync replicas."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer

from reach.broker import broker_answers
from reach.config import Settings


class KafkaGateway:
    """Owns the producer and answers whether the broker is reachable."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._ready_at = 0.0
        self._ready = False
        self._ready_lock = asyncio.Lock()

    @property
    def producer(self) -> AIOKafkaProducer:
        assert self._producer is not None, "KafkaGateway.start() was not awaited"
        return self._producer

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=256 * 1024,
            request_timeout_ms=int(self.settings.produce_timeout_s * 1000),
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def ready(self) -> bool:
        """True when a metadata request to the broker succeeds (cached for one second)."""
        async with self._ready_lock:
            if time.monotonic() - self._ready_at > 1.0:
                self._ready = await broker_answers(self.settings.bootstrap_servers, timeout_s=2.0)
                self._ready_at = time.monotonic()
            return self._ready
