"""Faust's, mode's and aiokafka's private parts we replace or read, checked against the installed
classes (no broker): if an upgrade renames one or changes a signature, this fails instead of a
worker quietly committing the wrong thing.

The replacements and reads themselves are all in `reach.seam` (`faust_patches()`, the
aiokafka handlers, the accessors); the kill tests check what they do, end to end. The last test
here checks that no other module of the service names a private part of these libraries.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.producer import sender
from aiokafka.producer.transaction_manager import TransactionManager as AioTransactionManager
from faust.stores.rocksdb import Store
from faust.transport.consumer import Consumer, ThreadDelegateConsumer, TransactionManager
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Producer
from faust.types import TP
from mode.threads import QueueServiceThread, ServiceThread

from reach import seam
from reach.config import PROJECT_ROOT


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def _sets(cls: type, attribute: str) -> bool:
    """Whether `cls.__init__` assigns `self.<attribute>` (an instance attribute we read)."""
    source = inspect.getsource(vars(cls)["__init__"])
    return f"self.{attribute} =" in source or f"self.{attribute}:" in source


def test_the_installed_versions_are_the_checked_and_pinned_ones() -> None:
    seam.require_checked()
    pins = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, checked in seam.CHECKED_VERSIONS.items():
        assert f"{name}=={checked}" in pins, f"pyproject.toml does not pin {name}=={checked}: {pins}"


def test_another_version_is_refused_with_what_was_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seam, "_installed", lambda name: "9.9.9" if name == "faust-streaming" else
                        seam.CHECKED_VERSIONS[name])
    with pytest.raises(RuntimeError, match=r"faust-streaming 9\.9\.9 \(checked: 0\.15\.3\)"):
        seam.install_faust()
    seam.install_aiokafka()  # the ingress's: it does not depend on Faust's version


@pytest.mark.parametrize("owner, attribute, ours", seam.faust_patches(),
                         ids=[f"{o.__name__}.{a}" for o, a, _ in seam.faust_patches()])
def test_each_replaced_attribute_exists_and_takes_what_ours_takes(owner: type, attribute: str, ours: Any) -> None:
    original = seam.original_of(owner, attribute)
    assert original is not ours, f"{owner.__name__}.{attribute}: no original kept"
    assert callable(original), f"{owner.__name__}.{attribute} is no longer a method"
    assert _parameters(original) == _parameters(ours), (owner, attribute, _parameters(original))


def test_install_puts_every_replacement_in_place() -> None:
    seam.install_faust()
    seam.install_faust()  # twice: the originals kept are still Faust's own
    for owner, attribute, ours in seam.faust_patches():
        assert seam.original_of(owner, attribute) is not ours, f"{owner.__name__}.{attribute}"
        assert getattr(owner, attribute) is ours, f"{owner.__name__}.{attribute}"


def test_the_private_names_we_read_are_there() -> None:
    # Faust's consumer: its commit bookkeeping, emptied by our commit, and its offsets.
    for attribute in ("_committed_offset", "_acked", "_acked_index", "_gap", "_read_offset"):
        assert _sets(Consumer, attribute), f"faust Consumer no longer sets {attribute}"
    assert _parameters(Consumer._commit_offsets) == ["self", "offsets", "start_new_transaction"]
    assert _sets(ThreadDelegateConsumer, "_thread")  # the consumer thread a worker's consumer delegates to
    # Faust's producer: one transactional producer per input partition, and its locks.
    assert isinstance(Producer._transaction_producers, dict) and isinstance(Producer._trn_locks, dict)
    # ... a class attribute only ever changed in place: a reference to it stays current.
    assert "self._transaction_producers =" not in inspect.getsource(Producer)
    for method in ("_ensure_consumer", "_verify_aiokafka_event_path"):
        assert callable(getattr(AIOKafkaConsumerThread, method)), method
    assert issubclass(AIOKafkaConsumerThread, QueueServiceThread) and callable(QueueServiceThread.call_thread)
    # ... the aiokafka consumer it runs (None until started) and its loop, where aiokafka is paused.
    assert AIOKafkaConsumerThread._consumer is None and _sets(ServiceThread, "thread_loop")
    assert "self._consumer = self._create_consumer(" in inspect.getsource(AIOKafkaConsumerThread.on_start)
    assert _parameters(Consumer._is_changelog_tp) == ["self", "tp"]
    assert _parameters(Store._db_for_partition) == ["self", "partition"]
    # aiokafka: the transaction manager, the long poll read when the fetcher starts, a rejoin.
    assert _sets(AIOKafkaProducer, "_txn_manager")
    assert _sets(AIOKafkaConsumer, "_fetch_max_wait_ms") and _sets(AIOKafkaConsumer, "_coordinator")
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)
    assert callable(GroupCoordinator.request_rejoin)
    # The on-disk key under which Faust keeps how far a store reflects its changelog.
    assert seam.PERSISTED_OFFSET_KEY == Store.offset_key


def test_the_worker_commits_with_one_transactional_id_of_its_own_and_its_group_member() -> None:
    app = SimpleNamespace(conf=SimpleNamespace(id="reach-worker", consumer_group_instance_id="host-6066"))
    assert seam.worker_transactional_id(app) == "reach-worker-host-6066"  # type: ignore[arg-type]
    # What `group_member` reads of aiokafka's coordinator, set when it joins and reset when it must rejoin.
    assert _sets(GroupCoordinator, "generation") and _sets(GroupCoordinator, "member_id")
    assert "self.generation = OffsetCommitRequest.DEFAULT_GENERATION_ID" in inspect.getsource(
        GroupCoordinator.reset_generation)
    # What the TxnOffsetCommit handler is built with and reads, and how it ends a transaction in error.
    assert _parameters(sender.TxnOffsetCommitHandler.__init__) == ["self", "sender", "offsets", "group_id"]
    for attribute in ("_offsets", "_group_id"):
        assert _sets(sender.TxnOffsetCommitHandler, attribute), attribute
    assert _parameters(AioTransactionManager.error_transaction) == ["self", "exc"]
    assert _sets(AioTransactionManager, "transactional_id")
    for name in ("producer_id", "producer_epoch"):
        assert isinstance(getattr(AioTransactionManager, name), property), name
    # Faust's split of a rebalance's partitions into active ones (standbys aside), which ours uses.
    assert _parameters(TransactionManager._tps_to_active_tpgs) == ["self", "tps"]


def _private_attributes(tree: ast.AST, but_of: tuple[str, ...] = ("self", "cls")) -> set[tuple[str, int]]:
    """(name, line) of every `x._name` in `tree` (dunders and `self._name`/`cls._name` aside)."""
    return {(node.attr, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in but_of)}


def test_no_other_module_of_the_service_names_a_private_part_the_seam_uses() -> None:
    seam_file = Path(seam.__file__)
    private = {name for name, _ in _private_attributes(ast.parse(seam_file.read_text()), but_of=())}
    assert {"_db_for_partition", "_transaction_producers", "_committed_offset", "_txn_manager"} <= private, private
    found = []
    for package in ("ingest", "processors", "topics", "schemas", "state", "reach", "harness", "bench"):
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            if path == seam_file:
                continue
            names = _private_attributes(ast.parse(path.read_text()))
            found += [f"{path.relative_to(PROJECT_ROOT)}:{line} {name}"
                      for name, line in sorted(names) if name in private]
    assert not found, f"private names of Faust, mode or aiokafka outside reach/seam.py: {found}"


def test_changelog_partitions_are_paused_and_resumed_in_aiokafka_in_the_consumer_thread() -> None:
    class Client:  # aiokafka's consumer, as the consumer's thread runs it
        def __init__(self) -> None:
            self.calls: list[tuple[str, set[TopicPartition]]] = []

        def assignment(self) -> set[TopicPartition]:
            return {TopicPartition("resources", 0), TopicPartition("ingest", 0)}

        def pause(self, *tps: TopicPartition) -> None:
            self.calls.append(("pause", set(tps)))

        def resume(self, *tps: TopicPartition) -> None:
            self.calls.append(("resume", set(tps)))

    loop = asyncio.new_event_loop()
    client = Client()
    consumer = SimpleNamespace(_is_changelog_tp=lambda tp: tp.topic == "resources",
                               _thread=SimpleNamespace(_consumer=client, thread_loop=loop))
    tps = {TP("resources", 0), TP("resources", 1), TP("ingest", 0)}  # resources[1]: no longer assigned
    seam._fetch_changelogs(consumer, tps, fetch=False)  # type: ignore[arg-type]
    seam._fetch_changelogs(consumer, tps, fetch=True)  # type: ignore[arg-type]
    assert client.calls == [], "applied outside the consumer's thread"
    loop.run_until_complete(asyncio.sleep(0))
    assert client.calls == [("pause", {TopicPartition("resources", 0)}), ("resume", {TopicPartition("resources", 0)})]
    loop.close()
    seam._fetch_changelogs(consumer, tps, fetch=False)  # type: ignore[arg-type]  # a stopped consumer: nothing to do
