"""`reach.seam`'s aiokafka replacements against the installed aiokafka's real request handlers and responses.

No broker: each handler is given the response a Kafka 4.1 broker sends (the versions aiokafka
0.14 speaks to it), and the test checks the wait before the next attempt. If an aiokafka
upgrade renames a handler, changes what `handle_response` returns or where `do` takes its
backoff from, these fail rather than the commits quietly slowing down again.
"""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import (
    ConcurrentTransactions,
    CoordinatorNotAvailableError,
    NotEnoughReplicasError,
    RequestTimedOutError,
)
from aiokafka.producer import sender
from aiokafka.producer.message_accumulator import MessageBatch
from aiokafka.producer.transaction_manager import TransactionManager
from aiokafka.protocol.produce import ProduceResponse_v7
from aiokafka.protocol.transaction import (
    AddOffsetsToTxnResponse_v0,
    AddPartitionsToTxnResponse_v0,
    TxnOffsetCommitResponse_v0,
)
from aiokafka.structs import TopicPartition

from reach import seam

DEFAULT_S = 0.1  # aiokafka's retry_backoff_ms default


@pytest.fixture(autouse=True)
def installed() -> None:
    seam.install_aiokafka()
    seam.install_aiokafka()  # twice: still one wrapper


def _sender(transactional_id: str | None = "tid") -> Any:  # within a running loop: aiokafka makes futures
    return SimpleNamespace(_retry_backoff=DEFAULT_S, _txn_manager=TransactionManager(transactional_id, 60_000),
                           client=None, _coordinator_dead=lambda kind: None)


def test_installed_once_over_the_real_handlers() -> None:
    for handler in (sender.AddPartitionsToTxnHandler, sender.AddOffsetsToTxnHandler,
                    sender.TxnOffsetCommitHandler, sender.SendProduceReqHandler):
        wrapper = handler.handle_response
        if handler is sender.TxnOffsetCommitHandler:  # inside the one refusing former group members
            assert getattr(wrapper, "_reach_fences_former_members", False)
            [wrapper] = [c.cell_contents for c in wrapper.__closure__ or () if callable(c.cell_contents)]
        assert getattr(wrapper, "_reach_asks_again_sooner", False), handler
        closure = [cell.cell_contents for cell in wrapper.__closure__ or ()]
        assert not any(getattr(c, "_reach_asks_again_sooner", False) for c in closure), f"{handler} wrapped twice"
    # Every handler waits its `_default_backoff`, set from the sender's retry_backoff, when
    # `handle_response` returns it; the produce handler sleeps it after filling `_to_reenqueue`.
    assert "self._default_backoff = sender._retry_backoff" in inspect.getsource(sender.BaseHandler.__init__)
    do = inspect.getsource(sender.SendProduceReqHandler.do)
    assert "self.handle_response(response)" in do and "asyncio.sleep(self._default_backoff)" in do


def test_add_offsets_and_partitions_ask_again_soon_after_concurrent_transactions_only() -> None:
    asyncio.run(_add_offsets_and_partitions_ask_again_soon_after_concurrent_transactions_only())


async def _add_offsets_and_partitions_ask_again_soon_after_concurrent_transactions_only() -> None:
    offsets = sender.AddOffsetsToTxnHandler(_sender(), "group")
    soon = seam.SOON_S
    assert offsets.handle_response(AddOffsetsToTxnResponse_v0(0, ConcurrentTransactions.errno)) == soon
    assert offsets.handle_response(AddOffsetsToTxnResponse_v0(0, CoordinatorNotAvailableError.errno)) == DEFAULT_S

    tp = TopicPartition("t", 0)
    partitions = sender.AddPartitionsToTxnHandler(_sender(), [tp])
    partitions._sender._txn_manager.txn_partitions.add(TopicPartition("t", 1))  # not the first add: 100 ms in aiokafka
    concurrent = AddPartitionsToTxnResponse_v0(0, [("t", [(0, ConcurrentTransactions.errno)])])
    assert partitions.handle_response(concurrent) == seam.SOON_S
    other = AddPartitionsToTxnResponse_v0(0, [("t", [(0, CoordinatorNotAvailableError.errno)])])
    assert partitions.handle_response(other) == DEFAULT_S


def _produce(handler_sender: Any, batches: dict[TopicPartition, MessageBatch], code: int) -> Any:
    handler = sender.SendProduceReqHandler(handler_sender, batches)
    handler.handle_response(ProduceResponse_v7([(tp.topic, [(tp.partition, code, -1, -1, -1)]) for tp in batches], 0))
    return handler


def test_an_unverified_transactional_produce_is_retried_soon_once_per_batch() -> None:
    asyncio.run(_an_unverified_transactional_produce_is_retried_soon_once_per_batch())


async def _an_unverified_transactional_produce_is_retried_soon_once_per_batch() -> None:
    tp = TopicPartition("t", 0)
    batch = MessageBatch(tp, None, 40, 0)
    first = _produce(_sender(), {tp: batch}, NotEnoughReplicasError.errno)
    assert first._to_reenqueue == [batch] and first._default_backoff == seam.SOON_S
    second = _produce(_sender(), {tp: batch}, NotEnoughReplicasError.errno)  # maybe a real shortage of replicas
    assert second._to_reenqueue == [batch] and second._default_backoff == DEFAULT_S

    other = MessageBatch(tp, None, 40, 0)
    timed_out = _produce(_sender(), {tp: other}, RequestTimedOutError.errno)
    assert timed_out._to_reenqueue == [other] and timed_out._default_backoff == DEFAULT_S
    idempotent_only = _produce(_sender(transactional_id=None), {tp: MessageBatch(tp, None, 40, 0)},
                               NotEnoughReplicasError.errno)
    assert idempotent_only._default_backoff == DEFAULT_S  # no verification without a transaction


def test_an_offset_commit_is_retried_soon_once_until_one_succeeds() -> None:
    asyncio.run(_an_offset_commit_is_retried_soon_once_until_one_succeeds())


async def _an_offset_commit_is_retried_soon_once_until_one_succeeds() -> None:
    producer = _sender()
    tp = TopicPartition("t", 0)
    producer._txn_manager.offset_committed = lambda *args: None
    offsets = {tp: SimpleNamespace(offset=5, metadata="")}
    busy = TxnOffsetCommitResponse_v0(0, [("t", [(0, CoordinatorNotAvailableError.errno)])])
    assert sender.TxnOffsetCommitHandler(producer, offsets, "g").handle_response(busy) == seam.SOON_S
    assert sender.TxnOffsetCommitHandler(producer, offsets, "g").handle_response(busy) == DEFAULT_S
    ok = TxnOffsetCommitResponse_v0(0, [("t", [(0, 0)])])
    assert sender.TxnOffsetCommitHandler(producer, offsets, "g").handle_response(ok) is None
    assert sender.TxnOffsetCommitHandler(producer, offsets, "g").handle_response(busy) == seam.SOON_S
