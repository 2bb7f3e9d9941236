"""The worker's open Kafka transaction, and while a commit runs the one committing: what the
events of each input partition changed in the tables and sent, not yet committed
(`Transaction`), kept per partition with the producer that carries it.

`processors.table_overlay` reads and writes the tables through them and
`processors.outputs` sends through them; `processors.transactions.ExactlyOnce` commits them.
A transaction whose producer was replaced (stopped at a rebalance, or fenced) died with it: it
is dropped the next time it is looked at, and the events that made it are processed again.
"""

from __future__ import annotations

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
    """What one partition's events put in the open or committing transaction: their table
    changes, not yet in RocksDB (point 9), and their outputs, not yet handed to the producer."""

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
    ordered: set[int] = field(default_factory=set)  # requests partitions sent a pin or unpin (`processors.in_place`)
    # requests partition -> (future of the record batch holding its last such, its record count)
    ordered_sent: dict[int, tuple[Any, int]] = field(default_factory=dict)


class OpenTransactions:
    """The worker's one Kafka transaction, open and (while a commit runs) committing, as what
    each input partition's events put in it."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._producers: dict[str, Any] | None = None  # Faust's, by transactional id (`producer`)
        self._tid: str | None = None
        # Per input partition: what its events put in the open transaction, and in the committing one.
        self.open: dict[int, Transaction] = {}
        self.committing: dict[int, Transaction] = {}
        self.held = False  # a commit is under way: new outputs wait for the next transaction

    def producer(self) -> Any:
        """The worker's transactional producer now (None while it has no partition; a new one
        after each start: the transactions of the one before died with it)."""
        producers = self._producers
        if producers is None:  # one dict for the app's life, changed in place (`seam.transaction_producers`)
            producers = self._producers = seam.transaction_producers(self.app)
            self._tid = seam.worker_transactional_id(self.app)
        return producers.get(self._tid)  # type: ignore[arg-type]

    def producer_of(self, tp: TP) -> Any:
        """The producer whose transaction carries input partition `tp`'s events: the worker's one."""
        return self.producer()

    def _open_writes(self, partition: int) -> Transaction | None:
        """Partition `partition`'s part of the open transaction; dropped if it died with its producer."""
        writes = self.open.get(partition)
        if writes is not None and writes.producer is not self.producer():
            del self.open[partition]  # aborted: the events that made it are processed again
            return None
        return writes

    def writes_of(self, tp: TP) -> tuple[Transaction | None, Transaction | None]:
        """`tp`'s part of the open transaction (None if it died with its producer: it is dropped)
        and of the committing one, each or None."""
        return self._open_writes(tp.partition), self.committing.get(tp.partition)

    def open_transaction(self, tp: TP) -> Transaction:
        """`tp`'s part of the open transaction, begun if it has none (or its own died with its producer)."""
        writes = self._open_writes(tp.partition)
        if writes is None:
            writes = self.open[tp.partition] = Transaction(self.producer(), tp.partition)
        return writes

    def hold(self) -> None:
        """The transaction is committing: what every partition's events put in it so far is its;
        what events send from now on waits for the next one."""
        self.held = True
        producer = self.producer()
        for partition, writes in self.open.items():
            if writes.producer is producer:
                self.committing[partition] = writes
        self.open.clear()

    def release(self) -> None:
        """The commit is over: outputs may go into the new transaction again."""
        self.held = False
        self.committing.clear()

    def drop_committing(self) -> None:
        """A commit failed: what it carried is not committed (the worker stops)."""
        self.committing.clear()
        self.held = False
