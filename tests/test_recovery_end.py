"""Where a changelog's restore ends: after its last committed record, not at its end.

A changelog written under exactly-once ends in a commit marker, and after a worker died in the
middle of a transaction, in a whole aborted transaction; Faust's recovery receives neither,
and waited two idle 5-second polls to notice, pausing every partition of a rebalance 10 s
longer (`reach.seam._after_last_records`). Against the real broker.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from faust.types import TP

from reach import seam
from tests.support import unique
from topics import create_topics
from topics.definitions import TopicSpec


async def _write(bootstrap: str, topic: str, committed: int, aborted: int, partition: int = 0) -> None:
    """`committed` records in one committed transaction, then `aborted` in an aborted one."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique("tx"))
    await producer.start()
    try:
        if committed:
            async with producer.transaction():
                for i in range(committed):
                    await producer.send_and_wait(topic, f"c{i}".encode(), key=b"k", partition=partition)
        if aborted:
            await producer.begin_transaction()
            for i in range(aborted):
                await producer.send_and_wait(topic, f"a{i}".encode(), key=b"k", partition=partition)
            await producer.abort_transaction()
    finally:
        await producer.stop()


async def _spans(bootstrap: str, topic: str, partitions: int) -> dict[TP, tuple[int, int]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        atps = [TopicPartition(topic, p) for p in range(partitions)]
        starts, ends = await consumer.beginning_offsets(atps), await consumer.end_offsets(atps)
        return {TP(topic, a.partition): (starts[a], ends[a]) for a in atps}
    finally:
        await consumer.stop()


def test_the_end_is_the_marker_after_the_last_committed_record(kafka_bootstrap: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A window of 3 records, so that a tail of 10 aborted ones needs it to grow.
    monkeypatch.setattr(seam, "TAIL_RECORDS", 3)
    topic = unique("changelog")

    async def run() -> dict[TP, int]:
        await create_topics(kafka_bootstrap, [TopicSpec(topic, 4, 1)])
        await _write(kafka_bootstrap, topic, committed=5, aborted=0, partition=0)   # 0-4, marker 5
        await _write(kafka_bootstrap, topic, committed=5, aborted=10, partition=1)  # marker 5, 6-15, marker 16
        await _write(kafka_bootstrap, topic, committed=0, aborted=4, partition=2)   # 0-3 aborted, marker 4
        spans = await _spans(kafka_bootstrap, topic, 4)                            # partition 3: empty
        assert spans[TP(topic, 1)] == (0, 17), spans
        return await seam._after_last_records([kafka_bootstrap], spans)

    found = asyncio.run(run())
    assert found == {TP(topic, 0): 5, TP(topic, 1): 5, TP(topic, 2): 0, TP(topic, 3): 0}, found
