"""Where a worker resumes a partition: at its committed offset, or at the log's start without one.

`ExactlyOnce.in_order` reads back, from the real broker, the records between that point and the
first record the stream delivers. In a two-worker run, Faust delivered a never-committed
partition from offset 8 after a rebalance; taking that first delivery as the start lost the
dependency requests at offsets 0-7 (their orders waited for ever).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from processors.transactions import ExactlyOnce, _answered
from tests.support import unique
from topics import create_topics
from topics.definitions import TopicSpec


def _event(tp: TP, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))


async def _offsets_processed(bootstrap: str, topic: str, group: str, faust_copy: dict[TP, int | None],
                             delivered: int) -> list[int]:
    """The offsets `in_order` hands over when the stream delivers `delivered` first."""
    app = SimpleNamespace(consumer=SimpleNamespace(_committed_offset=faust_copy), conf=SimpleNamespace(id=group))
    eos = ExactlyOnce(app, {topic: 1}, bootstrap)  # type: ignore[arg-type]
    try:
        return [e.message.offset for e in await eos.in_order(_event(TP(topic, 0), delivered))]
    finally:
        await eos.close()


def _commit(bootstrap: str, group: str, topic: str, offset: int) -> None:
    async def commit() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.commit({TopicPartition(topic, 0): offset})
        finally:
            await consumer.stop()

    asyncio.run(commit())


def _topic_with_records(bootstrap: str, count: int) -> str:
    topic = unique("stream-start")

    async def write() -> None:
        await create_topics(bootstrap, [TopicSpec(topic, 1, 1)])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for i in range(count):
                await producer.send_and_wait(topic, f"r{i}".encode(), key=b"k", partition=0)
        finally:
            await producer.stop()

    asyncio.run(write())
    return topic


def test_a_partition_never_committed_starts_at_the_log_start_not_at_the_first_record_delivered(
        kafka_bootstrap: str) -> None:
    topic = _topic_with_records(kafka_bootstrap, 10)
    processed = asyncio.run(_offsets_processed(kafka_bootstrap, topic, unique("group"), {}, delivered=8))
    assert processed == list(range(9)), processed


def test_a_partition_resumes_at_the_committed_offset_faust_holds_or_else_the_group_coordinator_holds(
        kafka_bootstrap: str) -> None:
    topic, group = _topic_with_records(kafka_bootstrap, 10), unique("group")
    _commit(kafka_bootstrap, group, topic, 5)
    tp = TP(topic, 0)
    # Faust's copy lags behind a rebalance (or holds None for 0): the coordinator's commit counts.
    assert asyncio.run(_offsets_processed(kafka_bootstrap, topic, group, {}, delivered=8)) == [5, 6, 7, 8]
    assert asyncio.run(_offsets_processed(kafka_bootstrap, topic, group, {tp: 6}, delivered=8)) == [6, 7, 8]
    # A record below the resume point was processed before: nothing to do.
    assert asyncio.run(_offsets_processed(kafka_bootstrap, topic, group, {tp: 6}, delivered=4)) == []


def test_a_resume_point_kafka_does_not_tell_in_time_fails_even_if_the_call_ignores_cancellation() -> None:
    async def deaf() -> None:  # as a client call that swallows its first cancellation
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(1)  # and goes on a while

    async def scenario() -> str:
        try:
            await _answered(deaf(), "the committed offset of t-0", timeout_s=0.2)
        except TimeoutError as exc:
            return str(exc)
        return "no error"

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) == "Kafka did not tell the committed offset of t-0 within 0.2s"
