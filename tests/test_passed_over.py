"""`reach.seam.passed_over`: the offsets a read_committed fetch passed over without a record
(transaction markers, aborted batches), against the real broker and aiokafka's own unpacking.
`ExactlyOnce.in_order` reads a hole in a stream's offsets back from Kafka only when the
consumer did not pass over all of it."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from reach import seam
from tests.support import unique
from topics import create_topics
from topics.definitions import TopicSpec


def test_markers_and_aborted_batches_are_passed_over_and_records_are_not(kafka_bootstrap: str) -> None:
    seam.install_faust()  # as the worker does: its patches include aiokafka's unpacking
    topic = unique("passed-over")

    async def main() -> list[int]:
        await create_topics(kafka_bootstrap, [TopicSpec(topic, 1, 1)])
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique("tx"))
        await producer.start()
        try:
            for commit, values in ((True, [b"a", b"b"]), (False, [b"aborted"]), (True, [b"c"])):
                await producer.begin_transaction()
                for value in values:
                    await producer.send_and_wait(topic, value, partition=0)
                await (producer.commit_transaction() if commit else producer.abort_transaction())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, isolation_level="read_committed",
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        tp = TopicPartition(topic, 0)
        try:
            consumer.assign([tp])
            offsets: list[int] = []
            while await consumer.position(tp) < 7:  # a, b, marker, aborted, marker, c, marker
                batch = await consumer.getmany(tp, timeout_ms=1000)
                offsets.extend(r.offset for r in batch.get(tp, []))
            return offsets
        finally:
            await consumer.stop()

    assert asyncio.run(main()) == [0, 1, 5], "the committed records are not a, b and c"
    assert seam.passed_over(topic, 0, 2, 5), "the marker, the aborted record and its marker were not passed over"
    assert seam.passed_over(topic, 0, 6, 7), "the last marker was not passed over"
    assert seam.passed_over(topic, 0, 3, 4)
    # A hole that holds a record handed on (a stream that dropped it) is not passed over.
    assert not seam.passed_over(topic, 0, 1, 3) and not seam.passed_over(topic, 0, 2, 6)
    assert not seam.passed_over(topic, 0, 0, 2) and not seam.passed_over(topic, 0, 7, 8)
    assert not seam.passed_over(unique("never-read"), 0, 0, 1)
