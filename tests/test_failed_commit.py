"""After a failed commit the worker commits nothing more: offsets past events whose outputs died
with the aborted transaction never commit without them.

The real commit path (`reach.seam._commit_tps_between_events`, the consumer's `commit` under
exactly-once) and `ExactlyOnce`'s bookkeeping, with recording stand-ins for the transactional
producer and the consumer around it. The cluster fault test (`test_cluster_faults.py`) lost a
record's outcome this way on the real broker, when the node coordinating the worker's
transactions was killed mid-commit: the worker's send failed, its transaction was aborted,
and the commit Faust makes as a crashed worker stops reached the coordinator's successor with
offsets past the record.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaError
from faust.types import TP

from processors.transactions import ExactlyOnce
from reach import seam


class _Batch:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def append(self, *, key: bytes | None, value: bytes, timestamp: Any, headers: Any) -> object:
        self.values.append(value)
        return object()


class _Producer:
    """A transactional producer that records what each transaction carried and how it ended;
    its first `fail_sends` record batches fail, as aiokafka's sender fails them when it cannot
    reach the transaction coordinator (seen in the cluster fault test)."""

    def __init__(self, fail_sends: int) -> None:
        self.fail_sends = fail_sends
        self.open: dict[str, Any] | None = None
        self.ended: list[tuple[str, dict[str, Any]]] = []  # ("commit" or "abort", what it carried)
        self._txn_manager = SimpleNamespace(is_in_transaction=lambda: self.open is not None)

    async def begin_transaction(self) -> None:
        assert self.open is None, "a transaction is already open"
        self.open = {"outputs": [], "offsets": {}}

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        await asyncio.sleep(0)
        if self.fail_sends:
            self.fail_sends -= 1
            raise KafkaError("Unexpected error during batch delivery")
        assert self.open is not None, "sent outside a transaction"
        self.open["outputs"].extend(batch.values)
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(SimpleNamespace(offset=0))
        return delivered

    async def send_offsets_to_transaction(self, offsets: dict[Any, Any], group_id: str) -> None:
        assert self.open is not None, "offsets sent outside a transaction"
        self.open["offsets"].update({(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()})

    async def commit_transaction(self) -> None:
        self._end("commit")

    async def abort_transaction(self) -> None:
        self._end("abort")

    def _end(self, how: str) -> None:
        assert self.open is not None, f"{how} outside a transaction"
        self.ended.append((how, self.open))
        self.open = None


class _Consumer:
    """What the commit path reads of Faust's consumer."""

    def __init__(self, app: Any, assigned: set[TP]) -> None:
        self.app, self._assigned = app, assigned
        self._committed_offset: dict[TP, int] = {}
        self._acked: dict[TP, list[int]] = {tp: [] for tp in assigned}
        self._acked_index: dict[TP, set[int]] = {tp: set() for tp in assigned}
        self._gap: dict[TP, list[int]] = {tp: [] for tp in assigned}

    def assignment(self) -> set[TP]:
        return self._assigned


async def _started(tp: TP, fail_sends: int) -> tuple[_Producer, ExactlyOnce, _Consumer]:
    """A worker with `tp` assigned, its producer's transaction open."""
    producer = _Producer(fail_sends)
    await producer.begin_transaction()
    return producer, *_worker(producer, tp)


def _worker(producer: _Producer, tp: TP) -> tuple[ExactlyOnce, _Consumer]:
    coordinator = SimpleNamespace(generation=3, member_id="member-w")
    app = SimpleNamespace(
        in_transaction=True,
        producer=SimpleNamespace(_transaction_producers={"app-w": producer}),
        conf=SimpleNamespace(id="app", consumer_group_instance_id="w"),
        monitor=SimpleNamespace(on_tp_commit=lambda offsets: None),
    )
    app.consumer = SimpleNamespace(_thread=SimpleNamespace(_consumer=SimpleNamespace(_coordinator=coordinator)))
    eos = ExactlyOnce(app, {"out": 1}, "unused:9092", inputs=[tp.topic])  # type: ignore[arg-type]
    consumer = _Consumer(app, {tp})
    return eos, consumer


async def _process(eos: ExactlyOnce, tp: TP, offset: int, output: bytes) -> None:
    """An event at `offset` of `tp` that sends `output`, processed as the agent does."""
    async with eos.lock:
        await eos.outputs.send_in(tp, "out", b"k", output, 0)
        eos.done(SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset, partition=tp.partition)))  # type: ignore[arg-type]


async def _commit(consumer: _Consumer) -> bool:
    return await seam._commit_tps_between_events(consumer, consumer.assignment(), True)  # type: ignore[arg-type]


def test_after_a_commit_fails_no_later_commit_carries_offsets_of_what_it_aborted() -> None:
    async def scenario() -> tuple[_Producer, list[bool]]:
        tp = TP("in", 2)
        producer, eos, consumer = await _started(tp, fail_sends=1)
        await _process(eos, tp, 992, b"outcome of 992")
        with pytest.raises(KafkaError):
            await _commit(consumer)  # the commit interval's: its send fails, it aborts
        await _process(eos, tp, 993, b"outcome of 993")  # the agent went on until the crash stopped it
        later = [await _commit(consumer), await _commit(consumer)]  # the stop's, then an interval's
        return producer, later

    producer, later = asyncio.run(scenario())
    committed = [carried for how, carried in producer.ended if how == "commit"]
    assert committed == [] and later == [False, False], (
        f"committed after the failed commit: {committed}; the later commits said {later} "
        f"(every transaction: {producer.ended})")
    assert [how for how, _ in producer.ended] == ["abort"], producer.ended


def test_a_commit_that_succeeds_carries_the_events_outputs_with_their_offsets() -> None:
    """The stand-ins above, on the path that works: what the first test sees is the guard."""
    async def scenario() -> _Producer:
        tp = TP("in", 2)
        producer, eos, consumer = await _started(tp, fail_sends=0)
        await _process(eos, tp, 992, b"outcome of 992")
        assert await _commit(consumer)
        await _process(eos, tp, 993, b"outcome of 993")
        assert await _commit(consumer)
        return producer

    producer = asyncio.run(scenario())
    assert producer.ended == [
        ("commit", {"outputs": [b"outcome of 992"], "offsets": {("in", 2): 993}}),
        ("commit", {"outputs": [b"outcome of 993"], "offsets": {("in", 2): 994}}),
    ]


def test_after_an_event_fails_the_commit_as_the_worker_stops_carries_nothing() -> None:
    """The agent's own failure (`processors.app`): half of the event's outputs are in the open
    transaction, with the offsets of the events before it; the stop's commit must not carry them."""
    async def scenario() -> _Producer:
        tp = TP("in", 0)
        producer, eos, consumer = await _started(tp, fail_sends=0)
        await _process(eos, tp, 10, b"outcome of 10")
        async with eos.lock:
            await eos.outputs.send_in(tp, "out", b"k", b"half of 11", 0)
            eos.fail(RuntimeError("event 11 failed"))
        assert not await _commit(consumer)
        return producer

    producer = asyncio.run(scenario())
    assert [how for how, _ in producer.ended] == [], producer.ended
