"""The broker we run on is real Kafka with the guarantees the service relies on."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.support import unique


async def _new_topic(bootstrap: str, partitions: int = 1) -> str:
    name = unique("probe")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def _consume_all(bootstrap: str, topic: str, isolation_level: str, expect_at_least: int = 0,
                       idle_s: float = 2.0) -> list[tuple[bytes | None, bytes]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=unique("g"),
                                auto_offset_reset="earliest", isolation_level=isolation_level)
    await consumer.start()
    seen: list[tuple[bytes | None, bytes]] = []
    try:
        deadline = asyncio.get_running_loop().time() + 20
        idle_until = None
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            records = [r for rs in batch.values() for r in rs]
            seen.extend((r.key, r.value) for r in records)
            if len(seen) >= expect_at_least:
                now = asyncio.get_running_loop().time()
                if records or idle_until is None:
                    idle_until = now + idle_s
                elif now >= idle_until:
                    break
    finally:
        await consumer.stop()
    return seen


def test_produce_consume_round_trip(kafka_bootstrap: str) -> None:
    async def scenario() -> list[tuple[bytes | None, bytes]]:
        topic = await _new_topic(kafka_bootstrap)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait(topic, f"v{i}".encode(), key=b"k")
        finally:
            await producer.stop()
        return await _consume_all(kafka_bootstrap, topic, "read_uncommitted", expect_at_least=10, idle_s=0.5)

    assert asyncio.run(scenario()) == [(b"k", f"v{i}".encode()) for i in range(10)]


def test_idempotent_producer_gets_a_producer_id_and_keeps_order(kafka_bootstrap: str) -> None:
    async def scenario() -> tuple[int, list[tuple[bytes | None, bytes]]]:
        topic = await _new_topic(kafka_bootstrap)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            futures = [await producer.send(topic, f"{i}".encode(), key=b"same") for i in range(500)]
            await asyncio.gather(*futures)
            producer_id = producer._txn_manager.producer_id  # assigned by the broker's InitProducerId
        finally:
            await producer.stop()
        return producer_id, await _consume_all(kafka_bootstrap, topic, "read_uncommitted", 500, idle_s=0.5)

    producer_id, seen = asyncio.run(scenario())
    assert producer_id >= 0
    assert [v for _, v in seen] == [f"{i}".encode() for i in range(500)]


def test_read_committed_consumer_sees_only_committed_transactions(kafka_bootstrap: str) -> None:
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        topic = await _new_topic(kafka_bootstrap, partitions=2)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique("txn"))
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send_and_wait(topic, b"committed-1", partition=0)
                await producer.send_and_wait(topic, b"committed-2", partition=1)
            await producer.begin_transaction()
            await producer.send_and_wait(topic, b"aborted-1", partition=0)
            await producer.send_and_wait(topic, b"aborted-2", partition=1)
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send_and_wait(topic, b"committed-3", partition=0)
        finally:
            await producer.stop()
        committed = await _consume_all(kafka_bootstrap, topic, "read_committed", 3)
        everything = await _consume_all(kafka_bootstrap, topic, "read_uncommitted", 5)
        return sorted(v for _, v in committed), sorted(v for _, v in everything)

    committed, everything = asyncio.run(scenario())
    assert committed == [b"committed-1", b"committed-2", b"committed-3"]
    # The aborted records really reached the log: only the isolation level hides them.
    assert everything == [b"aborted-1", b"aborted-2", b"committed-1", b"committed-2", b"committed-3"]
