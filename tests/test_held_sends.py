"""An event's outputs go out with its transaction, as record batches, in the order they were sent.

A unit test of `ExactlyOnce`'s bookkeeping, with a recording stand-in for the transactional
producers: the kill tests (`test_exactly_once.py`) check the same guarantees end to end on the
broker (an output missing from its transaction, or in the wrong one, fails them).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
from faust.types import TP

from processors.grouped import items_of
from processors.outputs import FLUSH_BYTES
from processors.transactions import ExactlyOnce


class _Batch:
    def __init__(self, limit: int) -> None:
        self.values: list[bytes] = []
        self.size, self.limit = 0, limit

    def append(self, *, key: bytes | None, value: bytes, timestamp: Any, headers: Any) -> object | None:
        if self.values and self.size + len(value or b"") > self.limit:
            return None  # full, as aiokafka's BatchBuilder says
        self.values.append(value)
        self.size += len(value or b"")
        return object()


class _TransactionalProducer:
    """Records each record batch it is handed, numbered by the transaction it went into."""

    def __init__(self, tid: str, log: list[tuple[str, int, str, int, list[bytes]]]) -> None:
        self.tid, self.log, self.transaction = tid, log, 0
        self._txn_manager = SimpleNamespace(is_in_transaction=lambda: True)

    def create_batch(self) -> _Batch:
        return _Batch(limit=FLUSH_BYTES // 2)

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        await asyncio.sleep(0)  # a real send may yield to other tasks here
        self.log.append((self.tid, self.transaction, topic, partition, batch.values))
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(SimpleNamespace(offset=0))
        return delivered

    async def commit(self) -> None:
        self.transaction += 1


def _eos() -> tuple[ExactlyOnce, dict[str, _TransactionalProducer], list[Any]]:
    log: list[Any] = []
    producers = {"app-w": _TransactionalProducer("app-w", log)}  # the worker's one
    app = SimpleNamespace(producer=SimpleNamespace(_transaction_producers=producers),
                          conf=SimpleNamespace(id="app", consumer_group_instance_id="w"))
    return ExactlyOnce(app, {"out": 2}, "unused:9092", inputs=["in"]), producers, log  # type: ignore[arg-type]


async def _commit(eos: ExactlyOnce, producers: dict[str, _TransactionalProducer], tps: list[TP]) -> None:
    """What a commit does around the worker's transaction (`_commit_tps_between_events`)."""
    eos.transactions.hold()
    producer = producers["app-w"]
    await eos.outputs.send_committing(producer)
    await producer.commit()
    eos.transactions.release()


def test_outputs_go_out_at_their_transactions_commit_in_order_one_batch_per_destination() -> None:
    async def scenario() -> list[Any]:
        eos, producers, log = _eos()
        p0, p1 = TP("in", 0), TP("in", 1)
        for n in range(3):
            await eos.outputs.send_in(p0, "out", b"k", f"first-{n}".encode(), n % 2)
        assert log == []  # nothing leaves before the commit
        eos.transactions.hold()
        await eos.outputs.send_in(p0, "out", b"k", b"during-commit", 0)  # belongs to the next transaction
        await eos.outputs.send_in(p1, "out", b"k", b"other-partition", 1)
        producer = producers["app-w"]
        await eos.outputs.send_committing(producer)
        await producer.commit()
        eos.transactions.release()
        await eos.outputs.send_in(p0, "out", b"k", b"after", 0)
        await _commit(eos, producers, [p0, p1])
        return log

    assert asyncio.run(scenario()) == [
        ("app-w", 0, "out", 0, [b"first-0", b"first-2"]),
        ("app-w", 0, "out", 1, [b"first-1"]),
        ("app-w", 1, "out", 0, [b"during-commit", b"after"]),
        ("app-w", 1, "out", 1, [b"other-partition"]),
    ]


def test_a_large_transaction_sends_early_but_never_into_a_committing_one() -> None:
    async def scenario() -> list[Any]:
        eos, producers, log = _eos()
        tp = TP("in", 0)
        chunk = b"x" * (FLUSH_BYTES // 4)
        eos.transactions.hold()  # committing: however much gathers, it waits
        for _ in range(6):
            await eos.outputs.send_in(tp, "out", b"k", chunk, 0)
        assert log == []
        producer = producers["app-w"]
        await producer.commit()  # the transaction that was committing (nothing of it was held back)
        eos.transactions.release()
        await eos.outputs.send_in(tp, "out", b"k", chunk, 0)  # past FLUSH_BYTES, not committing: sent now
        sent_early = [len(values) for *_, values in log]
        await _commit(eos, producers, [tp])
        return [sent_early, [(transaction, len(values)) for _, transaction, _, _, values in log]]

    sent_early, batches = asyncio.run(scenario())
    assert sum(sent_early) == 7, sent_early  # all seven, in batches the producer's size allows
    assert all(transaction == 1 for transaction, _ in batches), batches


def test_outputs_of_a_transaction_whose_producer_was_replaced_are_dropped() -> None:
    async def scenario() -> list[Any]:
        eos, producers, log = _eos()
        tp = TP("in", 0)
        await eos.outputs.send_in(tp, "out", b"k", b"of-an-aborted-transaction", 0)
        producers["app-w"] = _TransactionalProducer("app-w", log)  # a rebalance replaced the old one
        await eos.outputs.send_in(tp, "out", b"k", b"processed-again", 0)
        await _commit(eos, producers, [tp])
        return log

    assert asyncio.run(scenario()) == [("app-w", 0, "out", 0, [b"processed-again"])]


def _event(tp: TP) -> Any:
    return SimpleNamespace(message=SimpleNamespace(tp=tp, partition=tp.partition))


def test_only_a_keys_last_change_in_a_transaction_reaches_the_changelog() -> None:
    async def scenario() -> list[Any]:
        eos, producers, log = _eos()
        p0 = TP("in", 0)
        changelog = SimpleNamespace(get_topic_name=lambda: "pending-log")
        table: Any = SimpleNamespace(name="pending", changelog_topic=changelog)
        await eos.tables.put(_event(p0), table, b"r1", {"n": 1})
        await eos.tables.put(_event(p0), table, b"r2", {"n": 1})
        await eos.tables.put(_event(p0), table, b"r1", {"n": 2})
        await eos.tables.delete(_event(p0), table, b"r2")
        assert eos.tables.get(_event(p0), table, b"r1") == {"n": 2}  # the transaction reads its own last change
        await _commit(eos, producers, [p0])
        await eos.tables.put(_event(p0), table, b"r1", {"n": 3})  # the next transaction: sent again
        await _commit(eos, producers, [p0])
        return log

    log = asyncio.run(scenario())
    assert [(t, n, topic, p, values) for t, n, topic, p, values in log] == [
        ("app-w", 0, "pending-log", 0, [orjson.dumps({"n": 2}), None]),
        ("app-w", 1, "pending-log", 0, [orjson.dumps({"n": 3})]),
    ]


def test_items_for_one_partition_travel_grouped_in_order_around_other_messages() -> None:
    async def scenario() -> tuple[ExactlyOnce, list[Any]]:
        eos, producers, log = _eos()
        p0 = TP("in", 0)
        keys = [f"k{n}".encode() for n in range(40)]
        ka, kb, kc = [k for k in keys if eos.outputs.partition_for("out", k) == 1][:3]
        await eos.outputs.send_item(_event(p0), "out", ka, {"n": 1})
        await eos.outputs.send_item(_event(p0), "out", kb, {"n": 2})
        await eos.outputs.send_in(p0, "out", b"plain", b"between", 1)
        await eos.outputs.send_item(_event(p0), "out", kc, {"n": 3})
        await eos.outputs.send_item(_event(p0), "out", ka, {"n": 4})
        await _commit(eos, producers, [p0])
        return eos, log

    eos, log = asyncio.run(scenario())
    [(_, _, topic, partition, values)] = log
    assert (topic, partition) == ("out", 1)
    decoded = [values[1], *(items_of(None, orjson.loads(v)) for v in (values[0], values[2]))]
    assert decoded[0] == b"between"
    assert [item["n"] for _, item in decoded[1]] == [1, 2] and [item["n"] for _, item in decoded[2]] == [3, 4]
