"""Sending messages to one topic partition as whole record batches, in order.

aiokafka's `send` costs ~20 µs per message in the client; building the record batch ourselves
(`create_batch`, `send_batch`) pays that per batch. The ingress publishes uploads this way and
the workers their transactions' outputs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError

Message = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]  # key, value, headers
log = logging.getLogger(__name__)


async def send_batches(producer: AIOKafkaProducer, topic: str, partition: int,
                       messages: Iterable[Message], patience_s: float = 0.0) -> list[tuple[asyncio.Future[Any], int]]:
    """Hand `messages` to `producer` for `topic`/`partition` in as few record batches as its batch
    size allows; each batch's delivery future and how many messages it holds, in order.

    aiokafka takes a batch only once the partition's previous one has left, and gives up after
    its request timeout (`KafkaTimeoutError`, the batch not taken): with `patience_s`, a batch is
    handed over again until that long has passed — the partition's leader may be moving (a node
    died: 9-14 s), which a worker's commit can wait out rather than end its run."""
    deadline = time.monotonic() + patience_s
    sent: list[tuple[asyncio.Future[Any], int]] = []
    batch, count = producer.create_batch(), 0
    for key, value, headers in messages:
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            sent.append((await _send_batch(producer, batch, topic, partition, deadline), count))
            batch, count = producer.create_batch(), 0  # a first message always fits, however big
            batch.append(key=key, value=value, timestamp=None, headers=headers)
        count += 1
    sent.append((await _send_batch(producer, batch, topic, partition, deadline), count))
    return sent


async def _send_batch(producer: AIOKafkaProducer, batch: Any, topic: str, partition: int,
                      deadline: float) -> asyncio.Future[Any]:
    while True:
        try:
            return await producer.send_batch(batch, topic, partition=partition)
        except KafkaTimeoutError:
            if time.monotonic() >= deadline:
                raise
            log.warning("%s[%d] has not taken a record batch in time (its leader may be moving); handing it over "
                        "again for up to %.0f s more", topic, partition, deadline - time.monotonic())
