"""KIP-447 against the real broker: a transactional offset commit carries its group member
(`reach.seam.commit_as`), and the group coordinator refuses one made as a member the group no
longer has — what keeps a worker the group dropped from committing offsets of partitions another
worker took over, now that each worker has one transactional id (`processors.transactions`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient

from processors.handover import UNSTABLE_OFFSET_COMMIT, Handover, fetch_offsets, stable_offsets
from reach import seam
from topics import create_topics
from topics.definitions import TopicSpec


async def _new_topic_and_group(bootstrap: str, prefix: str) -> tuple[str, str, TopicPartition]:
    """A new topic of one partition, a new group's name, and that partition."""
    topic, group = f"{prefix}-{uuid.uuid4().hex[:8]}", f"{prefix}-{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, [TopicSpec(topic, 1, 1)])
    return topic, group, TopicPartition(topic, 0)


async def _joined(bootstrap: str, group: str, topic: str, *members: AIOKafkaConsumer) -> AIOKafkaConsumer:
    """A new member of `group`, once it and `members` (already in the group, polling meanwhile:
    the rebalance its join starts waits for them to join again) are in one generation. Not
    once it has partitions: of one partition, a second member gets none."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                session_timeout_ms=6000, heartbeat_interval_ms=1000)
    await consumer.start()
    deadline = time.monotonic() + JOIN_S
    while time.monotonic() < deadline:
        await asyncio.gather(*(c.getmany(timeout_ms=50) for c in (consumer, *members)))
        generations = {_member(c).generation_id for c in (consumer, *members)}
        if len(generations) == 1 and min(generations) > 0 and _member(consumer).member_id:
            return consumer
    raise AssertionError(f"{group}: not joined after {JOIN_S} s (generations "
                         f"{[_member(c).generation_id for c in (consumer, *members)]})")


JOIN_S = 90.0  # a join under a full test suite's load: a rebalance waits for every member


def _member(consumer: AIOKafkaConsumer, instance: str | None = None) -> seam.GroupMember:
    coordinator = consumer._coordinator  # the test reads what the worker reads (`seam.group_member`)
    return seam.GroupMember(coordinator.generation, coordinator.member_id, instance)


async def _commit(bootstrap: str, group: str, tp: TopicPartition, offset: int, member: seam.GroupMember) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"t-{uuid.uuid4().hex[:8]}")
    await producer.start()
    try:
        await producer.begin_transaction()
        seam.commit_as(group, member)
        try:
            await producer.send_offsets_to_transaction({tp: offset}, group)
        except Exception:
            await producer.abort_transaction()
            raise
        await producer.commit_transaction()
    finally:
        await producer.stop()


def test_a_commit_as_the_current_member_lands_and_one_as_a_former_member_is_refused(kafka_bootstrap: str) -> None:
    seam.install_aiokafka()

    async def scenario() -> None:
        topic, group, tp = await _new_topic_and_group(kafka_bootstrap, "fencing")
        first = await _joined(kafka_bootstrap, group, topic)
        member = _member(first)
        await _commit(kafka_bootstrap, group, tp, 5, member)
        assert (await stable_offsets(kafka_bootstrap, group, [tp]))[tp] == 5

        # A second member joins: the group's generation moves on, and the first member's old
        # identity is no longer one the coordinator takes offsets from.
        second = await _joined(kafka_bootstrap, group, topic, first)  # both in the generation its join made
        assert _member(first).generation_id > member.generation_id, "the first member never saw the rebalance"
        with pytest.raises(seam.GroupMembershipFenced):
            await _commit(kafka_bootstrap, group, tp, 9, member)
        assert (await stable_offsets(kafka_bootstrap, group, [tp]))[tp] == 5, "a refused commit moved the offset"

        await _commit(kafka_bootstrap, group, tp, 7, _member(first))  # as the member it is now
        assert (await stable_offsets(kafka_bootstrap, group, [tp]))[tp] == 7
        await second.stop()
        await first.stop()

    asyncio.run(scenario())


def test_stable_offsets_wait_for_a_transaction_that_holds_offsets(kafka_bootstrap: str) -> None:
    """OffsetFetch with require_stable: a new owner does not read an offset that an open
    transaction is about to move (it would process those records a second time)."""
    seam.install_aiokafka()

    async def scenario() -> None:
        topic, group, tp = await _new_topic_and_group(kafka_bootstrap, "stable")
        consumer = await _joined(kafka_bootstrap, group, topic)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"t-{uuid.uuid4().hex[:8]}")
        await producer.start()
        await producer.begin_transaction()
        seam.commit_as(group, _member(consumer))
        await producer.send_offsets_to_transaction({tp: 11}, group)  # pending until the commit
        client = AIOKafkaClient(bootstrap_servers=kafka_bootstrap)
        await client.bootstrap()
        error, found = await fetch_offsets(client, group, [tp])
        assert found[tp][1] == UNSTABLE_OFFSET_COMMIT, f"while the transaction was open: error {error}, {found}"
        await client.close()
        fetch = asyncio.ensure_future(stable_offsets(kafka_bootstrap, group, [tp]))  # waits for the commit
        await producer.commit_transaction()
        assert (await asyncio.wait_for(fetch, 30))[tp] == 11
        await producer.stop()
        await consumer.stop()

    asyncio.run(scenario())


# A former owner of a partition: it commits the group's offset 5 in a transaction, naming its
# transactional id in the metadata as a worker does (`reach.seam`), then opens another that
# writes a changelog record and holds offset 9 for the group, says so, and waits to be killed.
_FORMER_OWNER = """
import asyncio, sys
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

async def main(bootstrap, group, topic, changelog, tid):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=tid, transaction_timeout_ms=60000)
    await producer.start()
    tp = TopicPartition(topic, 0)
    await producer.begin_transaction()
    await producer.send_offsets_to_transaction({tp: OffsetAndMetadata(5, tid)}, group)
    await producer.commit_transaction()
    await producer.begin_transaction()
    await (await producer.send(changelog, b"state", key=b"k", partition=0))
    await producer.send_offsets_to_transaction({tp: OffsetAndMetadata(9, tid)}, group)
    print("open", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""


def test_a_take_over_fences_the_transaction_a_killed_former_owner_left_open(kafka_bootstrap: str) -> None:
    """A worker SIGKILLed in the middle of a commit leaves its transaction open: the new owner
    fences it after `FENCE_AFTER_S` instead of waiting for the transaction timeout (60 s), and
    the offsets it held never land."""
    seam.install_aiokafka()

    async def scenario() -> None:
        topic, group, tp = await _new_topic_and_group(kafka_bootstrap, "dead")
        changelog, _, changelog_tp = await _new_topic_and_group(kafka_bootstrap, "dead-changelog")
        tid = f"former-{uuid.uuid4().hex[:8]}"
        former = subprocess.Popen([sys.executable, "-c", _FORMER_OWNER, kafka_bootstrap, group, topic, changelog, tid],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert former.stdout is not None and former.stderr is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(former.stdout.readline), 60)
        finally:
            former.kill()  # SIGKILL: nothing of it ends the transaction
            former.wait()
        assert line.strip() == "open", f"the former owner said {line!r}, then: {former.stderr.read()[-2000:]}"
        handover = Handover(kafka_bootstrap, group, own_id="the-new-owner")
        started = time.monotonic()
        try:
            # Unfenced, the wait ends only at the transaction timeout, 60 s after the transaction began.
            await asyncio.wait_for(handover.take_over([tp], [changelog_tp]), 50)
        except TimeoutError:
            raise AssertionError("the take-over still waited after 50 s: the open transaction was not fenced") from None
        finally:
            await handover.close()
        print(f"took over after {time.monotonic() - started:.1f} s")
        assert (await stable_offsets(kafka_bootstrap, group, [tp]))[tp] == 5, "the open transaction's offsets landed"

    asyncio.run(scenario())
