"""Sends made while a partition's transaction commits wait for its next one, in order.

A unit test of `ExactlyOnce`'s bookkeeping, with a recording stand-in for Faust's producer:
the kill tests (`test_exactly_once.py`) check the same guarantee end to end on the broker.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from processors.transactions import ExactlyOnce


class _RecordingProducer:
    def __init__(self, tids: list[str]) -> None:
        in_transaction = SimpleNamespace(is_in_transaction=lambda: True)
        self._transaction_producers = {tid: SimpleNamespace(_txn_manager=in_transaction) for tid in tids}
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int, timestamp: Any,
                   headers: Any, *, transactional_id: str) -> None:
        await asyncio.sleep(0)  # a real send may yield to other tasks here
        self.sent.append((transactional_id, value))


def _eos() -> tuple[ExactlyOnce, _RecordingProducer]:
    producer = _RecordingProducer(["app-g-0", "app-g-1"])
    app = SimpleNamespace(producer=producer, conf=SimpleNamespace(id="app"),
                          assignor=SimpleNamespace(group_for_topic=lambda topic: "g"))
    return ExactlyOnce(app, {"out": 2}, "unused:9092", inputs=["in"]), producer  # type: ignore[arg-type]


def test_sends_during_a_commit_go_out_after_it_in_the_order_they_were_made() -> None:
    async def scenario() -> list[tuple[str, bytes]]:
        eos, producer = _eos()
        p0, p1 = TP("in", 0), TP("in", 1)
        await eos.send_in(p0, "out", b"k", b"before", 0)
        eos.hold_sends([p0])
        await eos.send_in(p0, "out", b"k", b"held-1", 0)
        await eos.send_in(p1, "out", b"k", b"other-partition", 1)  # not committing: goes at once
        await eos.send_in(p0, "out", b"k", b"held-2", 0)
        release = asyncio.create_task(eos.release_sends())
        await asyncio.sleep(0)  # the release is under way, one send at a time
        await eos.send_in(p0, "out", b"k", b"during-release", 0)
        await release
        await eos.send_in(p0, "out", b"k", b"after", 0)
        return producer.sent

    sent = asyncio.run(scenario())
    assert [v for tid, v in sent if tid == "app-g-0"] == [b"before", b"held-1", b"held-2", b"during-release", b"after"]
    assert sent.index(("app-g-1", b"other-partition")) < sent.index(("app-g-0", b"held-1"))


def test_dropped_holds_send_nothing_and_stop_holding() -> None:
    async def scenario() -> list[tuple[str, bytes]]:
        eos, producer = _eos()
        tp = TP("in", 0)
        eos.hold_sends([tp])
        await eos.send_in(tp, "out", b"k", b"of-a-failed-commit", 0)
        eos.drop_held_sends()
        await eos.release_sends()
        await eos.send_in(tp, "out", b"k", b"next", 0)
        return producer.sent

    assert asyncio.run(scenario()) == [("app-g-0", b"next")]
