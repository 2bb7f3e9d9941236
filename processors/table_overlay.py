"""The worker's tables: RocksDB stores with bytes keys and JSON values, read and written with the
changes of transactions not yet committed laid over them.

A table's partition p holds what events of input partition p wrote (Faust's rule), so an event
reads and writes the store of its own partition, directly: Faust's mapping interface looks a key
up two or three times and encodes through its serializer registry, per call. Changes wait with
their transaction (`processors.open_transactions`) and reach RocksDB once it has committed, in
one write batch with the changelog offset a restore resumes from (`processors.transactions`,
point 9). Memory: one commit interval of changes per partition.
"""

from __future__ import annotations

from typing import Any

import orjson
from faust.types import EventT, TableT
from rocksdict import WriteBatch

from processors.open_transactions import OpenTransactions, Transaction
from processors.outputs import FLUSH_BYTES, Outputs
from reach import seam
from state.store import prefix_items

_ABSENT = object()
_NO_CHANGES: dict[bytes, bytes | None] = {}


class TableOverlay:
    """Reads and writes of the worker's tables within an event's transaction."""

    def __init__(self, transactions: OpenTransactions, outputs: Outputs) -> None:
        self.transactions, self.outputs = transactions, outputs
        self._tables: dict[str, TableT] = {}
        self._changelog_of: dict[str, str] = {}  # table name -> its changelog topic

    def get(self, event: EventT, table: TableT, key: bytes) -> Any:
        """`table[key]` in `event`'s partition, or None, including changes not yet committed."""
        raw = self._raw(event, table, key)
        return None if raw is None else orjson.loads(raw)

    def has(self, event: EventT, table: TableT, key: bytes) -> bool:
        """Whether `get` would find `key` (its value is not decoded: a resource's is large)."""
        return self._raw(event, table, key) is not None

    def _raw(self, event: EventT, table: TableT, key: bytes) -> bytes | None:
        # Two or three per record: `writes_of` written out, and no look at a committing
        # transaction while none is under way.
        partition, name, transactions = event.message.partition, table.name, self.transactions
        writes = transactions.open.get(partition)
        if writes is not None and writes.producer is transactions.producer():  # else it died: not read
            raw = writes.changes.get(name, _NO_CHANGES).get(key, _ABSENT)
            if raw is not _ABSENT:
                return raw  # type: ignore[return-value]
        if transactions.committing:
            writes = transactions.committing.get(partition)
            if writes is not None:
                raw = writes.changes.get(name, _NO_CHANGES).get(key, _ABSENT)
                if raw is not _ABSENT:
                    return raw  # type: ignore[return-value]
        found: bytes | None = seam.table_store(table, partition).get(key)
        return found

    def keys_with_prefix(self, event: EventT, table: TableT, prefix: bytes, skip: bytes | None = None,
                         limit: int = 1000) -> list[bytes]:
        """Up to `limit` keys of `table` in `event`'s partition that start with `prefix`, other
        than `skip`, changes not yet committed included (those first, then in key order): a
        seek in RocksDB, and a look at one commit interval of changes."""
        overlay: dict[bytes, bytes | None] = {}
        open_, committing = self.transactions.writes_of(event.message.tp)
        for writes in (committing, open_):  # newest last
            if writes is not None:
                changes = writes.changes.get(table.name, _NO_CHANGES)
                if prefix.find(b"\x00") == len(prefix) - 1:  # a key's part up to its NUL: indexed
                    overlay.update((k, changes[k]) for k in writes.by_prefix.get(table.name, {}).get(prefix, ()))
                else:
                    overlay.update((k, raw) for k, raw in changes.items() if k.startswith(prefix))
        found = [k for k, raw in overlay.items() if raw is not None and k != skip][:limit]
        for key, _ in prefix_items(seam.table_store(table, event.message.partition), prefix):
            if len(found) >= limit:
                break
            if key not in overlay and key != skip:  # changes still uncommitted were counted above
                found.append(key)
        return found

    async def put(self, event: EventT, table: TableT, key: bytes, value: Any) -> None:
        """`table[key] = value`, its changelog record sent in `event`'s transaction."""
        writes = self._change(event, table, key, orjson.dumps(value))
        if writes.size >= FLUSH_BYTES:
            await self.outputs.flush_early(event.message.tp, writes)

    async def delete(self, event: EventT, table: TableT, key: bytes) -> None:
        """`del table[key]`, its changelog tombstone sent in `event`'s transaction."""
        writes = self._change(event, table, key, None)
        if writes.size >= FLUSH_BYTES:
            await self.outputs.flush_early(event.message.tp, writes)

    def _change(self, event: EventT, table: TableT, key: bytes, raw: bytes | None) -> Transaction:
        """Record the change in `event`'s open transaction (which it returns): several per record,
        so its dicts are looked up rather than `setdefault` with a new default each time."""
        tp = event.message.tp
        writes = self.transactions.open_transaction(tp)
        name = table.name
        changes = writes.changes.get(name)
        if changes is None:
            changes = writes.changes[name] = {}
        changes[key] = raw
        nul = key.find(b"\x00")
        if nul >= 0:  # for `keys_with_prefix`: a scan of every change per look was quadratic
            writes.by_prefix.setdefault(name, {}).setdefault(key[:nul + 1], {})[key] = None
        changelog = self._changelog_of.get(name)
        if changelog is None:  # Faust's topic name costs a property chain per call
            changelog = self._changelog_of[name] = table.changelog_topic.get_topic_name()
            self._tables[name] = table
        # Only a key's last change in a transaction goes to the changelog: the transaction
        # commits whole, and a restore or a reader keeps only the last value of a key anyway.
        # A record waiting for three references rewrote its pending entry at each answer.
        destination = (changelog, tp.partition)
        last = writes.changelogs.get(destination)
        if last is None:
            last = writes.changelogs[destination] = {}
        last[key] = raw
        writes.size += len(key) + (len(raw) if raw is not None else 0)
        return writes

    def partition_items(self, table: TableT, partition: int) -> list[tuple[bytes, Any]]:
        """Every (key, value) this worker holds for one partition of `table`, uncommitted changes included."""
        db = seam.table_store(table, partition)
        found: dict[bytes, bytes | None] = {k: v for k, v in db.items() if not k.startswith(b"__faust")}
        producer = self.transactions.producer()
        live = [w for w in self.transactions.open.values() if w.producer is producer]  # not aborted
        for writes in (*self.transactions.committing.values(), *live):  # newest last
            if writes.partition == partition:
                found.update(writes.changes.get(table.name, _NO_CHANGES))
        return [(k, orjson.loads(raw)) for k, raw in found.items() if raw is not None]

    def store_committed(self, producer: Any) -> None:
        """The committing transaction has committed: write its table changes to RocksDB, each
        store's in one write batch with the changelog offset of its last record (where a
        restore resumes)."""
        for writes in self.transactions.committing.values():
            if writes.producer is producer:
                self._store(writes)

    def _store(self, writes: Transaction) -> None:
        for name, changes in writes.changes.items():
            batch = WriteBatch(raw_mode=True)
            for key, raw in changes.items():
                if raw is None:
                    batch.delete(key)
                else:
                    batch.put(key, raw)
            table = self._tables[name]
            last = writes.last_sent.get(table.changelog_topic.get_topic_name())
            sent, index = last if last is not None else (None, 0)
            if sent is not None and sent.done() and not sent.cancelled() and sent.exception() is None:
                # The offset after the last record is the transaction's commit marker: only this
                # producer writes the partition, and its next transaction began after the commit.
                # A restore starts there, and one with nothing after it has nothing to do.
                batch.put(seam.PERSISTED_OFFSET_KEY, str(sent.result().offset + index + 1).encode())
            # With RocksDB's write-ahead log: a SIGKILL right after loses nothing written here.
            seam.table_store(table, writes.partition).write(batch)
