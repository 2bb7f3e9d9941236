"""Each input partition's open Kafka transaction in the worker, and while a commit runs the
one committing: what the events of that partition changed in the tables and sent, not yet
committed (`Transaction`), kept per transactional id with the producer that carries it.

`processors.table_overlay` reads and writes the tables through them and
`processors.outputs` sends through them; `processors.transactions.ExactlyOnce` commits them.
A transaction whose producer was replaced (a rebalance fenced it) died with it: it is dropped
the next time it is looked at, and the events that made it are processed again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP

from processors.grouped import Group
from reach import seam

_Output = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]] | Group  # key, value, headers; or a group


async def begin_unless_open(producer: Any) -> None:
    if not seam.in_transaction(producer):
        await producer.begin_transaction()


@dataclass
class Transaction:
    """One open or committing transaction of one partition: its table changes, not yet in
    RocksDB (point 9), and its outputs, not yet handed to the producer."""

    producer: Any  # the transactional producer whose transaction carries them
    partition: int  # the tables' partition they belong to
    changes: dict[str, dict[bytes, bytes | None]] = field(default_factory=dict)  # table -> key -> value
    # table -> a key's part up to its first NUL -> the keys of `changes` that begin with it, in order
    by_prefix: dict[str, dict[bytes, dict[bytes, None]]] = field(default_factory=dict)
    outputs: dict[tuple[str, int], list[_Output]] = field(default_factory=dict)  # (topic, partition) -> in order
    # (changelog topic, partition) -> key -> its last value (None: a tombstone), not yet sent
    changelogs: dict[tuple[str, int], dict[bytes, bytes | None]] = field(default_factory=dict)
    size: int = 0  # bytes of keys and values in `outputs` and `changelogs`
    delivered: list[Any] = field(default_factory=list)  # futures of the record batches sent so far
    # changelog -> (future of the record batch holding its last record, that record's index in it)
    last_sent: dict[str, tuple[Any, int]] = field(default_factory=dict)

    def absorb(self, later: Transaction) -> None:
        """Take in `later`'s changes and outputs, which came after this transaction's own."""
        for name, changes in later.changes.items():
            self.changes.setdefault(name, {}).update(changes)
        for name, groups in later.by_prefix.items():
            mine = self.by_prefix.setdefault(name, {})
            for prefix, keys in groups.items():
                mine.setdefault(prefix, {}).update(keys)
        for destination, outputs in later.outputs.items():
            self.outputs.setdefault(destination, []).extend(outputs)
        for destination, changes in later.changelogs.items():
            self.changelogs.setdefault(destination, {}).update(changes)
        self.size += later.size
        self.delivered.extend(later.delivered)
        self.last_sent.update(later.last_sent)


class OpenTransactions:
    """The open and committing transactions of the input partitions this worker processes."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._tids: dict[TP, str] = {}
        self._producers: dict[str, Any] | None = None  # Faust's, by transactional id (`producer_of`)
        # Per transactional id: its open transaction's changes and outputs, and the committing one's.
        self.open: dict[str, Transaction] = {}
        self.committing: dict[str, Transaction] = {}
        # Transactional ids whose transaction is committing: their new outputs wait for the next one.
        self.held: set[str] = set()

    def producer_of(self, tp: TP) -> Any:
        """The transactional producer of input partition `tp` now (its identity ends with it)."""
        return self._producer(self.tid(tp))

    def _producer(self, tid: str) -> Any:
        producers = self._producers
        if producers is None:  # one dict for the app's life, changed in place (`seam.transaction_producers`)
            producers = self._producers = seam.transaction_producers(self.app)
        return producers.get(tid)

    def tid(self, tp: TP) -> str:
        tid = self._tids.get(tp)
        if tid is None:  # fixed for the app's life: agents and their topics don't change
            tid = self._tids[tp] = seam.transactional_id(self.app, tp)
        return tid

    def _open_writes(self, tid: str) -> Transaction | None:
        """`tid`'s open transaction; dropped if it died with its producer."""
        writes = self.open.get(tid)
        if writes is not None and writes.producer is not self._producer(tid):
            del self.open[tid]  # aborted: the events that made it are processed again
            return None
        return writes

    def writes_of(self, tp: TP) -> tuple[Transaction | None, Transaction | None]:
        """`tp`'s open transaction (None if it died with its producer: it is dropped) and its
        committing one, each or None."""
        tid = self.tid(tp)
        return self._open_writes(tid), self.committing.get(tid)

    def open_transaction(self, tp: TP) -> Transaction:
        """`tp`'s open transaction, begun if it has none (or its own died with its producer)."""
        tid = self.tid(tp)
        writes = self._open_writes(tid)
        if writes is None:
            writes = self.open[tid] = Transaction(self._producer(tid), tp.partition)
        return writes

    def hold(self, offsets: Iterable[TP]) -> None:
        """The transactions of the producers that commit `offsets` are committing: their changes
        and outputs so far are theirs; what events send from now on waits for the next ones."""
        for tp in offsets:
            tid = self.tid(tp)
            self.held.add(tid)
            writes = self.open.pop(tid, None)
            if writes is not None:
                self.committing[tid] = writes

    def release(self) -> None:
        """The commit is over: outputs may go into the producers' new transactions again."""
        self.held.clear()

    def forget_committing(self, tid: str) -> None:
        """`tid`'s transaction was aborted by its partition's new owner: its changes are not kept."""
        self.committing.pop(tid, None)

    def drop_committing(self) -> None:
        """A commit failed: what it carried is not committed (the worker stops)."""
        self.committing.clear()

    def reopen_uncommitted(self) -> None:
        """After a commit: the changes of a transaction it did not end (Faust skips partitions it
        no longer counts as assigned) stay with that transaction, ahead of the newer ones."""
        for tid, writes in self.committing.items():
            later = self.open.get(tid)
            if later is not None and later.producer is not writes.producer:
                continue  # `writes` died with their producer; `later` belong to its successor
            if later is not None:
                writes.absorb(later)
            self.open[tid] = writes
        self.committing.clear()
