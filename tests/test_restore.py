"""A table partition restored in bulk from its changelog (`processors.restore`) holds what
Faust's own recovery would leave: the last committed value of each key, deleted keys gone,
aborted transactions ignored, and the checkpoint at the last record applied. Against the real
broker, into a real Faust table on RocksDB.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TableT

from processors.restore import Restorer
from tests.support import unique
from topics import create_topics
from topics.definitions import TopicSpec


async def _transaction(bootstrap: str, topic: str, writes: list[tuple[bytes, bytes | None]], commit: bool) -> None:
    """Write `writes` to partition 0 in one transaction, commit or abort it, and wait until its
    marker is there: the coordinator answers the commit before it has written the markers, and
    a restore reads only up to the last stable offset (a run of the whole suite saw the next
    `restore` find nothing to read)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique("tx"))
    await producer.start()
    try:
        await producer.begin_transaction()
        last = -1
        for key, value in writes:
            last = (await producer.send_and_wait(topic, value, key=key, partition=0)).offset
        if commit:
            await producer.commit_transaction()
        else:
            await producer.abort_transaction()
    finally:
        await producer.stop()
    await _stable_past(bootstrap, TopicPartition(topic, 0), last + 1)


async def _stable_past(bootstrap: str, tp: TopicPartition, marker: int) -> None:
    """Until the partition's last stable offset is past `marker` (a transaction's marker)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        deadline, stable = time.monotonic() + 30, -1
        while time.monotonic() < deadline:
            stable = (await consumer.end_offsets([tp]))[tp]
            if stable > marker:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{tp}: last stable offset {stable} after 30 s, not past the marker at {marker}")
    finally:
        await consumer.stop()


def _table(tmp_path: Path) -> TableT:
    app = faust.App(unique("restore"), broker="kafka://localhost:1", store="rocksdb://", datadir=str(tmp_path))
    return app.Table("resources", default=None, partitions=1, key_type=bytes, value_type=bytes)


def test_a_bulk_restore_leaves_the_committed_state_and_resumes_at_its_checkpoint(kafka_bootstrap: str,
                                                                                tmp_path: Path) -> None:
    topic = unique("changelog")
    tp = TopicPartition(topic, 0)
    table = _table(tmp_path)

    async def run() -> None:
        restorer = Restorer(kafka_bootstrap)
        try:
            await check(restorer)
        finally:
            await restorer.close()

    async def check(restorer: Restorer) -> None:
        restore = restorer.restore
        await create_topics(kafka_bootstrap, [TopicSpec(topic, 1, 1)])
        await _transaction(kafka_bootstrap, topic, [(b"a", b"1"), (b"b", b"1"), (b"c", b"1")], commit=True)
        await _transaction(kafka_bootstrap, topic, [(b"a", b"aborted"), (b"d", b"aborted")], commit=False)
        await _transaction(kafka_bootstrap, topic, [(b"b", None), (b"c", b"2")], commit=True)

        read = await restore({tp: (table, -1)})
        assert read == {tp: 5}, read
        stored = {key: table.data.get(key) for key in (b"a", b"b", b"c", b"d")}
        assert stored == {b"a": b"1", b"b": None, b"c": b"2", b"d": None}, stored
        checkpoint = table.persisted_offset(tp)
        # 3 records, a marker, 2 aborted records, a marker, then b's deletion and c: offset 8.
        assert checkpoint == 8, checkpoint

        # From the checkpoint there is nothing but the marker: nothing is read again.
        assert await restore({tp: (table, checkpoint)}) == {}

        await _transaction(kafka_bootstrap, topic, [(b"a", b"3")], commit=True)
        assert await restore({tp: (table, checkpoint)}) == {tp: 1}
        assert table.data.get(b"a") == b"3" and table.data.get(b"c") == b"2"
        assert table.persisted_offset(tp) == 10, table.persisted_offset(tp)

    asyncio.run(run())
