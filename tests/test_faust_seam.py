"""Faust's, mode's and aiokafka's private parts we replace or read, checked against the installed
classes (no broker): if an upgrade renames one, changes a signature or the transactional-id
format, this fails instead of a worker quietly committing the wrong thing.

The replacements themselves are `processors.transactions._PATCHES` and
`topics.aiokafka_compat`; the kill tests check what they do, end to end.
"""

from __future__ import annotations

import asyncio
import inspect
import tomllib
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer.group_coordinator import GroupCoordinator
from faust.stores.rocksdb import Store
from faust.transport.consumer import Consumer, ThreadDelegateConsumer, TransactionManager
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Producer
from faust.types import TP
from mode.threads import QueueServiceThread

from processors import transactions
from reach.config import PROJECT_ROOT
from topics import aiokafka_compat


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def _sets(cls: type, attribute: str) -> bool:
    """Whether `cls.__init__` assigns `self.<attribute>` (an instance attribute we read)."""
    return f"self.{attribute} =" in inspect.getsource(cls.__init__) or \
        f"self.{attribute}:" in inspect.getsource(cls.__init__)


def test_the_installed_versions_are_the_checked_and_pinned_ones() -> None:
    aiokafka_compat.require_checked(transactions.CHECKED_VERSIONS)
    pins = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, checked in {**aiokafka_compat.CHECKED_VERSIONS, **transactions.CHECKED_VERSIONS}.items():
        assert f"{name}=={checked}" in pins, f"pyproject.toml does not pin {name}=={checked}: {pins}"


def test_another_version_is_refused_with_what_was_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiokafka_compat, "_installed", lambda name: "9.9.9" if name == "faust-streaming" else
                        {**aiokafka_compat.CHECKED_VERSIONS, **transactions.CHECKED_VERSIONS}[name])
    with pytest.raises(RuntimeError, match=r"faust-streaming 9\.9\.9 \(checked: 0\.15\.3\)"):
        transactions.install()


@pytest.mark.parametrize("owner, attribute, ours", transactions._PATCHES,
                         ids=[f"{o.__name__}.{a}" for o, a, _ in transactions._PATCHES])
def test_each_replaced_attribute_exists_and_takes_what_ours_takes(owner: type, attribute: str, ours: Any) -> None:
    original = transactions._ORIGINALS[(owner, attribute)]
    assert original is not ours, f"{owner.__name__}.{attribute} was already ours when the module was imported"
    assert callable(original), f"{owner.__name__}.{attribute} is no longer a method"
    assert _parameters(original) == _parameters(ours), (owner, attribute, _parameters(original))


def test_install_puts_every_replacement_in_place() -> None:
    transactions.install()
    for owner, attribute, ours in transactions._PATCHES:
        assert getattr(owner, attribute) is ours, f"{owner.__name__}.{attribute}"


def test_the_private_names_we_read_are_there() -> None:
    # Faust's consumer: its commit bookkeeping, emptied by our commit, and its offsets.
    for attribute in ("_committed_offset", "_acked", "_acked_index", "_gap", "_read_offset"):
        assert _sets(Consumer, attribute), f"faust Consumer no longer sets {attribute}"
    assert _parameters(Consumer._commit_offsets) == ["self", "offsets", "start_new_transaction"]
    assert _sets(ThreadDelegateConsumer, "_thread")  # the consumer thread a worker's consumer delegates to
    # Faust's producer: one transactional producer per input partition, and its locks.
    assert isinstance(Producer._transaction_producers, dict) and isinstance(Producer._trn_locks, dict)
    for method in ("_ensure_consumer", "_verify_aiokafka_event_path"):
        assert callable(getattr(AIOKafkaConsumerThread, method)), method
    assert issubclass(AIOKafkaConsumerThread, QueueServiceThread) and callable(QueueServiceThread.call_thread)
    assert _parameters(Store._db_for_partition) == ["self", "partition"]
    # aiokafka: the transaction manager, the long poll read when the fetcher starts, a rejoin.
    assert _sets(AIOKafkaProducer, "_txn_manager")
    assert _sets(AIOKafkaConsumer, "_fetch_max_wait_ms") and _sets(AIOKafkaConsumer, "_coordinator")
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)
    assert callable(GroupCoordinator.request_rejoin)
    # The on-disk key under which Faust keeps how far a store reflects its changelog.
    assert transactions._PERSISTED_OFFSET == Store.offset_key


def test_our_transactional_ids_are_the_ones_faust_commits_with() -> None:
    app = SimpleNamespace(conf=SimpleNamespace(id="reach-worker"),
                          assignor=SimpleNamespace(group_for_topic=lambda topic: 0 if topic == "ingest" else 1))
    committed: dict[str, Any] = {}

    async def commit_transactions(by_tid: dict[str, Any], group_id: str, start_new_transaction: bool) -> None:
        committed.update(by_tid)

    manager = SimpleNamespace(app=app, producer=SimpleNamespace(commit_transactions=commit_transactions))
    offsets = {TP("ingest", 3): 10, TP("other", 1): 5}
    asyncio.run(TransactionManager.commit(manager, offsets))  # type: ignore[arg-type]
    eos = transactions.ExactlyOnce.__new__(transactions.ExactlyOnce)
    eos.app, eos._tids = app, {}  # type: ignore[assignment]
    assert {eos._tid(tp): {tp: offset} for tp, offset in offsets.items()} == committed
