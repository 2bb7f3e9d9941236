"""Record batches handed to a producer in order, and handed over again while a partition's
leader moves (`topics.record_batches.send_batches`).

A stand-in for the producer's two calls (`create_batch`, `send_batch`): aiokafka refuses a
batch with `KafkaTimeoutError`, not taking it, while the partition's previous batch has not
left — which is what the stand-in's refusals play. The cluster fault test
(`test_cluster_faults.py`) is where a node really dies under the worker's commit.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from topics.record_batches import Message, send_batches


class _Batch:
    def __init__(self, limit: int) -> None:
        self.values: list[bytes] = []
        self.limit = limit

    def append(self, *, key: bytes | None, value: bytes, timestamp: Any, headers: Any) -> object | None:
        if self.values and len(self.values) >= self.limit:
            return None  # full
        self.values.append(value)
        return object()


class _RefusingProducer:
    """Its first `refusals` batches are not taken; the rest are recorded in the order taken."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.taken: list[list[bytes]] = []

    def create_batch(self) -> _Batch:
        return _Batch(limit=2)

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        await asyncio.sleep(0)
        if self.refusals:
            self.refusals -= 1
            raise KafkaTimeoutError()
        self.taken.append(batch.values)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


_MESSAGES: list[Message] = [(None, f"m{n}".encode(), []) for n in range(5)]  # three batches of at most two


def test_a_refused_batch_is_handed_over_again_in_order_within_the_patience() -> None:
    producer = _RefusingProducer(refusals=2)
    sent = asyncio.run(send_batches(producer, "t", 0, _MESSAGES, patience_s=30))
    assert producer.taken == [[b"m0", b"m1"], [b"m2", b"m3"], [b"m4"]], f"taken: {producer.taken}"
    assert [count for _, count in sent] == [2, 2, 1], sent


def test_without_patience_a_refused_batch_fails_the_send() -> None:
    producer = _RefusingProducer(refusals=1)
    with pytest.raises(KafkaTimeoutError):
        asyncio.run(send_batches(producer, "t", 0, _MESSAGES))
    assert producer.taken == []
