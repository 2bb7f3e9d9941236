"""Where a worker resumes a partition after a rebalance, whatever the stream delivers first.

`ExactlyOnce.in_order` processes nothing of a partition until the seek after the rebalance
has told it the partition's resume point (`resume_from`), and then reads back from the real
broker the committed records between that point and the first record delivered. In a
two-worker run, records fetched while the stream was suspended were dropped with the fetch
position past them; taking the first record delivered as the start lost two committed
dependency requests (offsets 0 and 2, with commit markers at 1 and 3) and their orders waited
for ever. The two-worker test in `test_dependencies.py` runs the whole path.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaProducer
from faust.types import TP

from processors.transactions import ExactlyOnce
from reach import seam
from tests.support import unique
from topics import create_topics
from topics.definitions import TopicSpec

TID = "app-w"  # the worker's one transactional id (`seam.worker_transactional_id`)


def _event(tp: TP, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))


def _eos(bootstrap: str, topic: str) -> tuple[ExactlyOnce, Any]:
    """An ExactlyOnce over `topic` (one partition) with a stand-in for Faust's producers."""
    producer = SimpleNamespace()
    app = SimpleNamespace(producer=SimpleNamespace(_transaction_producers={TID: producer}),
                          conf=SimpleNamespace(id="app", consumer_group_instance_id="w"),
                          assignor=SimpleNamespace(group_for_topic=lambda t: "g"))
    return ExactlyOnce(app, {topic: 1}, bootstrap, inputs=[topic]), producer  # type: ignore[arg-type]


def _topic_with_transactions(bootstrap: str, count: int) -> str:
    """`count` records, each in its own committed transaction: at offsets 0, 2, 4, ..."""
    topic = unique("resume")

    async def write() -> None:
        await create_topics(bootstrap, [TopicSpec(topic, 1, 1)])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique("tx"))
        await producer.start()
        try:
            for i in range(count):
                async with producer.transaction():
                    await producer.send_and_wait(topic, f"r{i}".encode(), key=b"k", partition=0)
        finally:
            await producer.stop()

    asyncio.run(write())
    return topic


def _offsets(records: list[Any]) -> list[int]:
    return [r.message.offset for r in records]


def test_nothing_is_processed_before_the_resume_point_is_known_then_skipped_records_come_first(
        kafka_bootstrap: str) -> None:
    topic = _topic_with_transactions(kafka_bootstrap, 4)  # records at 0, 2, 4, 6
    tp = TP(topic, 0)

    async def scenario() -> list[list[int]]:
        eos, _ = _eos(kafka_bootstrap, topic)
        try:
            eos.forget([tp])  # a rebalance began
            early = _offsets(await eos.in_order(_event(tp, 4)))  # fetched from a stale position
            eos.resume_from(eos.epoch, {tp: 0})  # never committed: the start of the log
            first = await eos.in_order(_event(tp, 4))
            for record in first:
                eos.done(record)
            again = _offsets(await eos.in_order(_event(tp, 2)))  # the seek delivers it again
            return [early, _offsets(first), again, _offsets(await eos.in_order(_event(tp, 6)))]
        finally:
            await eos.close()

    early, first, again, then = asyncio.run(scenario())
    assert early == [], "an event delivered before the seek was processed"
    assert first == [0, 2, 4], "the committed records before the first one delivered were not processed first"
    assert again == [] and then == [6]


def test_resume_points_of_an_earlier_rebalance_are_ignored(kafka_bootstrap: str) -> None:
    topic = unique("resume")
    tp = TP(topic, 0)

    async def scenario() -> list[int]:
        eos, _ = _eos(kafka_bootstrap, topic)
        eos.forget([tp])
        stale = eos.epoch
        eos.forget([tp])  # the next rebalance began before the first one's seek ended
        eos.resume_from(stale, {tp: 0})
        return _offsets(await eos.in_order(_event(tp, 0)))

    assert asyncio.run(scenario()) == []


def test_a_partition_whose_producer_still_holds_processed_events_resumes_after_them(kafka_bootstrap: str) -> None:
    """Events processed into a transaction that is still open commit with it: not twice."""
    topic = unique("resume")
    tp = TP(topic, 0)

    async def scenario() -> tuple[list[int], list[int]]:
        eos, producer = _eos(kafka_bootstrap, topic)
        eos.forget([tp])
        eos.resume_from(eos.epoch, {tp: 0})
        for offset in range(3):
            eos.done(_event(tp, offset))
        eos.forget([tp])  # the partition stays with this worker and its producer
        eos.resume_from(eos.epoch, {tp: 0})  # nothing committed yet
        kept = _offsets(await eos.in_order(_event(tp, 2)))
        seam.transaction_producers(eos.app)[TID] = SimpleNamespace()  # a new producer: the old one aborted
        eos.forget([tp])
        eos.resume_from(eos.epoch, {tp: 0})
        return kept, _offsets(await eos.in_order(_event(tp, 0)))

    kept, replaced = asyncio.run(scenario())
    assert kept == [], "an event already in the open transaction would be processed twice"
    assert replaced == [0], "events whose transaction was aborted must be processed again"
